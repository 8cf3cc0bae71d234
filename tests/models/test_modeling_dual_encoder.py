import math

import pytest
import torch

from tests.conftest import model_inputs, pixel_batch, text_batch, tiny_config
from vitlm import VitlmDualEncoderModel


def build(**overrides):
    torch.manual_seed(0)
    return VitlmDualEncoderModel(tiny_config("dual", **overrides)).eval()


def test_logits_are_scaled_cosine_similarities():
    model = build()
    inputs = model_inputs(model, batch_size=3)
    outputs = model(**inputs)
    image = model.get_image_features(inputs["pixel_values"]).pooler_output
    text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(outputs.image_embeds, image)
    torch.testing.assert_close(outputs.text_embeds, text)
    torch.testing.assert_close(outputs.logits_per_image, model.logit_scale.exp() * image @ text.t())
    torch.testing.assert_close(outputs.logits_per_text, outputs.logits_per_image.t())
    assert model.logit_bias is None


def test_softmax_loss_is_symmetric_cross_entropy():
    model = build()
    outputs = model(**model_inputs(model, batch_size=4), return_loss=True)
    targets = torch.arange(4)
    expected = (
        torch.nn.functional.cross_entropy(outputs.logits_per_image, targets)
        + torch.nn.functional.cross_entropy(outputs.logits_per_text, targets)
    ) / 2
    torch.testing.assert_close(outputs.loss, expected)


def test_sigmoid_loss_uses_a_learnable_bias():
    model = build(loss_type="sigmoid", logit_scale_init_value=2.3, logit_bias_init_value=-10.0)
    assert model.logit_bias.item() == -10.0 and abs(model.logit_scale.item() - 2.3) < 1e-6
    outputs = model(**model_inputs(model, batch_size=3), return_loss=True)
    scaled = outputs.text_embeds @ outputs.image_embeds.t() * model.logit_scale.exp() + model.logit_bias
    torch.testing.assert_close(outputs.logits_per_text, scaled)
    signs = 2 * torch.eye(3) - 1
    expected = -torch.nn.functional.logsigmoid(signs * scaled).sum() / 3
    torch.testing.assert_close(outputs.loss, expected)


def test_text_is_pooled_at_the_first_end_of_text_token():
    model = build()
    input_ids, attention_mask = text_batch(model.config, batch_size=2, length=8)
    eos = model.config.text_config.eos_token_id
    end = (input_ids == eos).int().argmax(1)
    baseline = model.text_model(input_ids).pooler_output
    after = input_ids.clone()
    after[0, end[0] + 1 :] = eos  # anything after the first end-of-text token is invisible to a causal tower
    torch.testing.assert_close(model.text_model(after).pooler_output, baseline)
    before = input_ids.clone()
    before[0, 0] = (before[0, 0] + 1) % (eos - 1)
    assert not torch.allclose(model.text_model(before).pooler_output[0], baseline[0])
    torch.testing.assert_close(model.text_model(before).pooler_output[1], baseline[1])


@pytest.mark.parametrize(
    "change,message",
    [
        ("no_eos", "end-of-text token"),
        ("left_padding", "right-padded"),
        ("too_long", "context"),
        ("out_of_vocabulary", "vocabulary"),
        ("one_dimensional", "batch, length"),
    ],
)
def test_bad_text_inputs_raise_a_clear_error(change, message):
    model = build()
    text = model.config.text_config
    input_ids, attention_mask = text_batch(model.config)
    if change == "no_eos":
        input_ids[input_ids == text.eos_token_id] = 1
    elif change == "left_padding":
        attention_mask = attention_mask.flip(1)
    elif change == "too_long":
        input_ids = input_ids.repeat(1, text.max_position_embeddings)
    elif change == "out_of_vocabulary":
        input_ids[0, 0] = text.vocab_size
    else:
        input_ids = input_ids[0]
    with pytest.raises(ValueError, match=message):
        model.text_model(input_ids, attention_mask=attention_mask)


def test_forward_needs_both_modalities():
    model = build()
    with pytest.raises(ValueError, match="pixel_values"):
        model(input_ids=text_batch(model.config)[0])


def test_contrastive_training_lowers_the_loss():
    model = build().train()
    inputs = model_inputs(model, batch_size=6)
    inputs["pixel_values"] = pixel_batch(model.config, batch_size=6, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # below chance (every pairing equally likely) by a margin: images and texts have been aligned
    assert losses[-1] < 0.75 * math.log(6) < losses[0], losses


def test_the_loss_needs_matching_pairs():
    model = build()
    input_ids, attention_mask = text_batch(model.config, batch_size=3)
    with pytest.raises(ValueError, match="one text per image"):
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_batch(model.config),
            return_loss=True,
        )


def test_linear_layers_start_width_scaled_and_loading_keeps_the_weights(tmp_path):
    model = VitlmDualEncoderModel(tiny_config("dual"))
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert len({module.in_features for module in linears}) > 1
    for module in linears:  # as CLIP's towers, not the flat 0.02 a lone tower gets
        assert module.weight.std().item() == pytest.approx(module.in_features**-0.5, rel=0.25)
    assert model.text_model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    model.save_pretrained(tmp_path)
    loaded = VitlmDualEncoderModel.from_pretrained(tmp_path)  # the init must not touch loaded weights
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
