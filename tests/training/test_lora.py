"""`vitlm train ... --lora R`: PEFT adapters on the towers' fused qkv and MLP layers train on the shapes world from
the shipped zero-shot model, save on their own (a few percent of the weights), reload, merge to the same outputs, and
push to the Hub (tests/hub/test_lora_push.py); `--merge-lora` saves the merged model."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification

import vitlm
from tests.conftest import pixel_batch, text_batch
from tests.models.test_contracts import build
from vitlm import VitlmViTForMaskedImageModeling, VitlmViTModel
from vitlm.cli import main
from vitlm.presets import preset_path
from vitlm.training.lora import apply_lora, load_lora, towers_and_heads

ZERO_SHOT = Path(vitlm.__file__).parent / "demo" / "default_models" / "zero-shot"
SHAPES = ["--dataset", "shapes", "--shapes-train", "48", "--shapes-test", "16", "--shapes-max-objects", "1"]
CONTRASTIVE = ["train", "zero-shot-image-classification", *SHAPES, "--no-augment", "--max-steps", "3"]
RUN = [*CONTRASTIVE, "--batch-size", "16", "--lr", "1e-3", "--no-checkpoints", "--seed", "0"]


def dual_inputs(model):
    config = model.config
    input_ids, attention_mask = text_batch(config, 3, seed=1)
    input_ids[input_ids >= config.text_config.vocab_size] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_batch(config, 3, seed=1)}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "adapters"
    assert main([*RUN, "--model", str(ZERO_SHOT), "--lora", "4", "--output-dir", str(out)]) == 0
    return out


def test_only_the_adapters_and_heads_are_saved(adapters):
    assert not (adapters / "model.safetensors").exists()
    weights = load_file(adapters / "adapter_model.safetensors")
    total = sum(tensor.numel() for tensor in load_file(ZERO_SHOT / "model.safetensors").values())
    assert sum(tensor.numel() for tensor in weights.values()) < 0.1 * total
    adapted = {name.split(".lora_A")[0].rpartition(".")[2] for name in weights if ".lora_A" in name}
    assert adapted == {"qkv", "fc1", "fc2"}  # the fused attention input and the MLP, not `proj`
    for tower in ("vision_model", "text_model"):
        assert any(f"{tower}.encoder.layers.0.attention.qkv.lora_B" in name for name in weights)
    assert any("visual_projection" in name for name in weights)  # the heads outside the towers train whole


@torch.no_grad()
def test_reloaded_adapters_merge_to_the_same_outputs_and_changed_the_model(adapters):
    adapted = load_lora(adapters).eval()
    merged = load_lora(adapters, merge=True).eval()
    base = AutoModel.from_pretrained(ZERO_SHOT).float().eval()
    assert type(merged) is type(base)  # a plain vitlm model, saved like any
    inputs = dual_inputs(base)
    unmerged_logits = adapted(**inputs).logits_per_image
    torch.testing.assert_close(merged(**inputs).logits_per_image, unmerged_logits, rtol=0, atol=1e-5)
    assert (unmerged_logits - base(**inputs).logits_per_image).abs().max() > 1e-3  # training moved it


def test_merge_lora_saves_the_merged_model(adapters, tmp_path):
    out = tmp_path / "merged"
    assert main([*RUN, "--model", str(ZERO_SHOT), "--lora", "4", "--merge-lora", "--output-dir", str(out)]) == 0
    assert not (out / "adapter_model.safetensors").exists()
    saved = AutoModel.from_pretrained(out).eval()
    inputs = dual_inputs(saved)
    # the same seeded run as the adapters', merged at the end: the same model
    with torch.no_grad():
        expected = load_lora(adapters, merge=True).eval()(**inputs).logits_per_image
        torch.testing.assert_close(saved(**inputs).logits_per_image, expected, rtol=0, atol=1e-5)


def test_a_classifier_trains_its_new_head_whole_and_reloads(tmp_path):
    base = tmp_path / "vit"
    build(VitlmViTModel).save_pretrained(base)  # a "pretrained" tiny ViT with no head
    shutil.copy(preset_path("vit-tiny-test") / "preprocessor_config.json", base)
    out = tmp_path / "classifier"
    argv = ["train", "image-classification", "--model", str(base), *SHAPES, "--shapes-size", "32", "--max-steps", "2"]
    assert (
        main([*argv, "--batch-size", "8", "--lora", "2", "--lora-targets", "qkv,proj", "--output-dir", str(out)]) == 0
    )
    model = load_lora(out, merge=True).eval()
    assert model.config.num_labels == 48 and isinstance(
        model, AutoModelForImageClassification._model_mapping[type(model.config)]
    )
    head = load_file(out / "adapter_model.safetensors")
    assert any("classifier" in name for name in head)
    assert {n.split(".lora_A")[0].rpartition(".")[2] for n in head if ".lora_A" in n} == {"qkv", "proj"}


def test_towers_and_heads_follow_the_models_structure():
    assert towers_and_heads(build(VitlmViTModel)) == ([""], [])
    mae = build(VitlmViTForMaskedImageModeling)
    towers, heads = towers_and_heads(mae)
    assert towers == ["vit"] and "decoder" in heads
    model = apply_lora(mae, 2)
    decoder_lora = [name for name, _ in model.named_parameters() if "decoder" in name and "lora_" in name]
    assert not decoder_lora  # the decoder trains whole, its same-named layers get no adapters


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora", "0"], "must be an integer >= 1"),
        (["--merge-lora"], "add --lora"),
        (["--lora-targets", "qkv"], "must be layer names with --lora"),
        (["--lora", "2", "--lora-targets", "query"], "names no linear layer"),
    ],
)
def test_bad_lora_settings_are_refused_in_one_line(extra, message, tmp_path, capsys):
    argv = [*RUN, "--model", str(ZERO_SHOT), *extra, "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_lora_on_a_preset_is_refused(tmp_path, capsys):
    assert main([*RUN, "--model", "clip-tiny-test", "--lora", "2", "--output-dir", str(tmp_path / "out")]) == 2
    assert "is a preset (random weights)" in capsys.readouterr().err


@torch.no_grad()
def test_adapters_find_a_base_named_relative_to_their_folder(adapters, tmp_path, monkeypatch):
    """Adapters shipped beside their base name it as "../<base>": it resolves against the adapter folder, from any
    working directory."""
    shutil.copytree(ZERO_SHOT, tmp_path / "models" / "zero-shot")
    moved = shutil.copytree(adapters, tmp_path / "models" / "adapters")
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "../zero-shot"}))
    monkeypatch.chdir(tmp_path)
    merged = load_lora(moved, merge=True).eval()
    expected = load_lora(adapters, merge=True).eval()
    inputs = dual_inputs(expected)
    torch.testing.assert_close(merged(**inputs).logits_per_image, expected(**inputs).logits_per_image, rtol=0, atol=0)
