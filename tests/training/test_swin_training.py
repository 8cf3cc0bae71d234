"""Swin through `vitlm train`: classification on the shapes world from the tiny preset, the saved folder reloading
bit-identically through the Auto classes, and layer-wise learning-rate decay by stage."""

import json

import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

from tests.conftest import tiny_config
from vitlm import VitlmSwinForImageClassification
from vitlm.cli import main
from vitlm.data.shapes import CATEGORIES, generate
from vitlm.training.trainer import layerwise_lr_decay_groups


def test_train_classify_swin_tiny_test_on_shapes(tmp_path):
    out = tmp_path / "swin"
    argv = ["train", "classify", "--model", "swin-tiny-test", "--dataset", "shapes", "--shapes-train", "64"]
    argv += ["--shapes-test", "16", "--shapes-size", "32", "--output-dir", str(out), "--epochs", "2"]
    argv += ["--batch-size", "16", "--logging-steps", "1", "--lr", "2e-3", "--seed", "0"]
    assert main(argv) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 8 and all(loss == loss for loss in losses)
    assert "eval_accuracy" in history[-1]
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model) is VitlmSwinForImageClassification and model.config.id2label[3] == CATEGORIES[3]
    trained = load_file(out / "checkpoint-8" / "model.safetensors")
    assert trained.keys() == model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[name], value) for name, value in trained.items())
    processor = AutoImageProcessor.from_pretrained(out)
    inputs = processor(images=[generate(1, seed=5, image_size=32)[0]["image"]], return_tensors="pt")
    assert model(**inputs).logits.shape == (1, len(CATEGORIES))


def test_layer_decay_slows_each_block_by_its_depth():
    """Blocks count in order across stages; a patch merging sits at the depth of the blocks before it."""
    model = VitlmSwinForImageClassification(tiny_config("swin"))
    groups = layerwise_lr_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.05)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    depths = model.config.depths
    blocks = sum(depths)
    assert rate[id(model.swin.patch_embeddings.projection.weight)] == 0.5 ** (blocks + 1)
    assert rate[id(model.swin.stages[0].blocks[1].mlp.fc1.weight)] == 0.5 ** (blocks - 1)
    assert rate[id(model.swin.stages[1].downsample.reduction.weight)] == 0.5 ** (blocks + 1 - depths[0])
    assert rate[id(model.swin.stages[1].blocks[0].mlp.fc1.weight)] == 0.5 ** (blocks - depths[0])
    assert rate[id(model.swin.layernorm.weight)] == 1.0
    assert rate[id(model.classifier.weight)] == 1.0
