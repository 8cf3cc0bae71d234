"""`vitlm convert --push-to-hub` and `vitlm train --push-to-hub` publish repos that load back from the Hub, with the
model card the Hub reads its metadata from."""

import torch
from huggingface_hub import HfApi, ModelCard
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoProcessor,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
)

from tests.conftest import main_output, model_inputs
from tests.convert.test_from_transformers import randomized, small_clip_config, source_tokenizer
from tests.hub.conftest import DUAL_FILES, IMAGE_PROCESSOR_FILES, PROCESSOR_FILES, USER, VIT_FILES, assert_published
from vitlm.cli import main
from vitlm.convert import public_source, source_repo_id
from vitlm.training.card import base_model


def card_and_info(repo):
    """The model card as users read it, and the metadata the Hub derives from it."""
    return ModelCard.load(repo).data, HfApi().model_info(repo)


def test_convert_publishes_a_loadable_repo_with_a_model_card(hub, tmp_path, capsys):
    source = f"{USER}/tiny-clip"  # a transformers CLIPModel on the Hub, where `hf:` sources usually live
    clip = randomized(CLIPModel(small_clip_config()))
    clip.push_to_hub(source)
    CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), source_tokenizer()).push_to_hub(source)

    repo = f"{USER}/tiny-clip-vitlm"
    assert main(["convert", f"hf:{source}", str(tmp_path / "converted"), "--push-to-hub", repo]) == 0
    assert f"pushed it to {repo}" in capsys.readouterr().out

    assert_published(repo, DUAL_FILES | PROCESSOR_FILES)  # transformers' CLIPTokenizer: no tokenizer code
    card, info = card_and_info(repo)
    assert (card.library_name, card.pipeline_tag, card.base_model) == (
        "vitlm",
        "zero-shot-image-classification",
        source,
    )
    assert {"vitlm", "vitlm_dual_encoder", "converted", "hf"} <= set(card.tags)
    assert card.license is None  # the weights keep the source's license, which the card does not restate
    assert (info.library_name, info.pipeline_tag) == ("vitlm", "zero-shot-image-classification")

    model = AutoModel.from_pretrained(repo).eval()
    local = AutoModel.from_pretrained(tmp_path / "converted").eval()
    inputs = AutoProcessor.from_pretrained(repo)(text=["a cat", "two dogs"], padding=True, return_tensors="pt")
    inputs["pixel_values"] = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = clip(**inputs).logits_per_image
        assert torch.equal(model(**inputs).logits_per_image, local(**inputs).logits_per_image)
        torch.testing.assert_close(model(**inputs).logits_per_image, expected, rtol=0, atol=1e-5)


def test_train_publishes_a_loadable_repo_with_a_model_card(hub, tmp_path):
    repo, out = f"{USER}/vit-shapes", tmp_path / "trained"
    shapes = ["--dataset", "shapes", "--shapes-train", "16", "--shapes-test", "8", "--shapes-size", "32"]
    argv = ["train", "classify", "--model", "vit-tiny-test", *shapes, "--max-steps", "2", "--batch-size", "8"]
    assert main([*argv, "--output-dir", str(out), "--push-to-hub", repo]) == 0

    assert_published(repo, VIT_FILES | IMAGE_PROCESSOR_FILES | {"trainer_state.json", "training_curves.png"})
    card, info = card_and_info(repo)
    assert (card.library_name, card.pipeline_tag, card.license) == ("vitlm", "image-classification", "apache-2.0")
    assert card.datasets == ["vitlm-shapes"] and {"accuracy", "loss"} <= set(card.metrics)
    assert card.base_model is None  # trained from a preset's random weights
    assert {"vitlm", "vitlm_vit", "image-classification"} <= set(card.tags)  # the task name, not the alias
    assert (info.library_name, info.pipeline_tag, info.card_data.license) == (
        "vitlm",
        "image-classification",
        "apache-2.0",
    )

    model = AutoModelForImageClassification.from_pretrained(repo).eval()
    local = AutoModelForImageClassification.from_pretrained(out).eval()
    inputs = model_inputs(model)
    with torch.no_grad():
        assert torch.equal(main_output(model(**inputs)), main_output(local(**inputs)))


def test_cards_name_hub_sources_and_hide_local_paths(tmp_path):
    assert source_repo_id("hf:openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert source_repo_id("open_clip:hf-hub:laion/CLIP-ViT-B-32") == "laion/CLIP-ViT-B-32"
    for local_or_tag in (f"hf:{tmp_path}", "open_clip:ViT-B-32/laion2b_s34b_b79k", "timm:vit_base_patch16_224"):
        assert source_repo_id(local_or_tag) is None
    assert base_model(f"hf:{USER}/tiny-clip") == base_model(f"{USER}/tiny-clip") == f"{USER}/tiny-clip"
    assert base_model("vit-tiny-test") is None and base_model(str(tmp_path)) is None
    assert public_source("hf:openai/clip-vit-base-patch32") == "hf:openai/clip-vit-base-patch32"
    assert public_source(f"hf:{tmp_path}") == f"hf:{tmp_path.name}"  # a card never shows this machine's paths
