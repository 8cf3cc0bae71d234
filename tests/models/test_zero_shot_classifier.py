"""Zero-shot classification with cached class embeddings: the dual encoder's classification head."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

from tests.conftest import pixel_batch, tiny_clip_config
from vitlm import (
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmImageProcessor,
)
from vitlm.clip_bpe import clip_tokenizer

CLASSES = ["red circle", "blue square", "green triangle", "dog"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "{}"]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def dual_encoder(**overrides):
    torch.manual_seed(0)
    return VitlmDualEncoderModel(tiny_clip_config(**overrides)).eval()


def test_cached_and_uncached_probabilities_are_identical(tokenizer):
    model = dual_encoder()
    pixel_values = pixel_batch(model.config, batch_size=3)
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CLASSES, TEMPLATES)
    assert [classifier.config.id2label[i] for i in range(4)] == CLASSES
    with torch.no_grad():
        cached = classifier(pixel_values).logits.softmax(-1)
        # uncached: the full dual encoder on every prompt, then CLIP's ensemble by hand
        prompts = [template.format(name) for name in CLASSES for template in TEMPLATES]
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        outputs = model(pixel_values=pixel_values, **tokens)
        per_class = outputs.text_embeds.view(len(CLASSES), len(TEMPLATES), -1).mean(1)
        per_class = per_class / per_class.norm(dim=-1, keepdim=True)
        uncached = (model.logit_scale.exp() * outputs.image_embeds @ per_class.t()).softmax(-1)
    torch.testing.assert_close(cached, uncached, atol=1e-6, rtol=0)


def test_one_template_reproduces_the_dual_encoder_logits(tokenizer):
    model = dual_encoder()
    pixel_values = pixel_batch(model.config, batch_size=2)
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CLASSES, ["{}"])
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, **tokenizer(CLASSES, padding=True, return_tensors="pt"))
        torch.testing.assert_close(classifier(pixel_values).logits, expected.logits_per_image, atol=1e-5, rtol=0)


def test_the_zero_shot_pipeline_and_the_classifier_agree(tmp_path, tokenizer):
    model = dual_encoder()
    image_processor = VitlmImageProcessor(size=32, crop_size=32)
    VitlmDualEncoderProcessor(image_processor, tokenizer).save_pretrained(tmp_path / "dual")
    model.save_pretrained(tmp_path / "dual")
    template = "a photo of a {}."
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CLASSES, [template])
    classifier.save_pretrained(tmp_path / "classifier")
    image_processor.save_pretrained(tmp_path / "classifier")

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    zero_shot = pipeline("zero-shot-image-classification", model=str(tmp_path / "dual"))
    expected = zero_shot(image, candidate_labels=CLASSES, hypothesis_template=template)
    cached = pipeline("image-classification", model=str(tmp_path / "classifier"))(image, top_k=len(CLASSES))
    assert [r["label"] for r in cached] == [r["label"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in cached], [r["score"] for r in expected], atol=1e-5)


def test_saved_classifier_keeps_its_class_embeddings(tmp_path, tokenizer):
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(
        dual_encoder(), tokenizer, CLASSES, TEMPLATES
    )
    classifier.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is VitlmDualEncoderForImageClassification
    assert reloaded.config.prompt_templates == TEMPLATES
    assert torch.equal(reloaded.class_embeddings, classifier.class_embeddings)
    assert not any(key.startswith("text_model.") for key in reloaded.state_dict())
    pixel_values = pixel_batch(classifier.config)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).logits, classifier(pixel_values).logits)


def test_sigmoid_models_give_independent_probabilities(tokenizer):
    model = dual_encoder(loss_type="sigmoid")
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CLASSES)
    assert classifier.config.problem_type == "multi_label_classification"
    pixel_values = pixel_batch(model.config)
    with torch.no_grad():
        expected = model(
            pixel_values=pixel_values,
            **tokenizer(["a photo of a " + c + "." for c in CLASSES], padding=True, return_tensors="pt"),
        )
        torch.testing.assert_close(classifier(pixel_values).logits, expected.logits_per_image, atol=1e-5, rtol=0)


def test_the_classifier_fine_tunes(tokenizer):
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder(), tokenizer, CLASSES).train()
    pixel_values, labels = pixel_batch(classifier.config, batch_size=8), torch.arange(8) % 4
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = classifier(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "class_names,templates,message",
    [
        ([], ["{}"], "non-empty"),
        (["cat", " "], ["{}"], "non-empty"),
        (["cat", "dog", "cat"], ["{}"], "duplicates"),
        (["cat"], ["a photo"], "'{}'"),
        (["cat"], [], "'{}'"),
        (["cat"], ["{} {}"], "the prompt template '{} {}' must contain one"),
        (["cat"], ["a {} {name}"], "the prompt template 'a {} {name}' must contain one"),
        (["cat"], ["a {0}"], r"the prompt template 'a \{0\}'"),
        (["cat"], ["a {:>999}"], "the prompt template 'a {:>999}'"),
        (["cat"], ["a {!r}"], "the prompt template 'a {!r}'"),
        (["cat"], ["a {{}}"], "the prompt template 'a {{}}'"),
        (["cat"], ["a {} }"], "the prompt template 'a {} }'"),
        (["cat"], [3], "the prompt template 3"),
    ],
)
def test_bad_label_lists_are_refused(tokenizer, class_names, templates, message):
    with pytest.raises(ValueError, match=message):
        VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder(), tokenizer, class_names, templates)


def test_a_classifier_built_from_a_config_runs_until_from_dual_encoder_sets_its_classes(tokenizer):
    torch.manual_seed(0)
    classifier = VitlmDualEncoderForImageClassification(tiny_clip_config(num_labels=len(CLASSES))).eval()
    pixel_values = pixel_batch(classifier.config)
    with torch.no_grad():
        logits = classifier(pixel_values).logits
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all() and logits.std() > 0
    norms = classifier.class_embeddings.norm(dim=-1)  # random directions, of about unit norm
    assert ((norms > 0.3) & (norms < 3)).all(), norms
    built = VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder(), tokenizer, CLASSES)
    assert not torch.equal(built.class_embeddings, classifier.class_embeddings)
    torch.testing.assert_close(built.class_embeddings.norm(dim=-1), torch.ones(len(CLASSES)))


def test_a_dual_encoder_repo_loaded_as_a_classifier_refuses_to_guess(tmp_path):
    dual_encoder().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no class embeddings.*from_dual_encoder"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


def test_the_classifier_owns_copies_of_the_dual_encoders_weights(tokenizer):
    model = dual_encoder()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CLASSES)
    assert not any(tensor.is_meta for tensor in classifier.state_dict().values())
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_literal_braces_in_templates_are_kept(tokenizer):
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(
        dual_encoder(), tokenizer, ["cat"], ["{{a drawing}} of a {}."]
    )
    assert classifier.config.prompt_templates == ["{{a drawing}} of a {}."]


def test_templates_default_to_the_models_own(tokenizer):
    model = dual_encoder(prompt_templates=["a drawing of a {}."])
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CLASSES)
    explicit = VitlmDualEncoderForImageClassification.from_dual_encoder(
        model, tokenizer, CLASSES, ["a drawing of a {}."]
    )
    assert classifier.config.prompt_templates == ["a drawing of a {}."]
    torch.testing.assert_close(classifier.class_embeddings, explicit.class_embeddings, rtol=0, atol=0)
    assert VitlmDualEncoderForImageClassification.from_dual_encoder(
        dual_encoder(), tokenizer, CLASSES
    ).config.prompt_templates == ["a photo of a {}."]
