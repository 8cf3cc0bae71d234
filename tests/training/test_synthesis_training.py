"""`vitlm train masked-image-modeling --head synthesis`: the head choice in the task table, its masks (MaskGIT's
cosine schedule, blobs and scattered patches), its codebook fit, and a tiny run end to end."""

import json
import re

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForMaskedImageModeling

from tests.conftest import tiny_config
from vitlm import VitlmViTForInpaintingSynthesis
from vitlm.cli import main
from vitlm.data.shapes import generate
from vitlm.presets import preset_path
from vitlm.training.collators import SynthesisMaskingCollator
from vitlm.training.self_supervised import synthesis_model
from vitlm.training.tasks import TASKS, get_task
from vitlm.training.transforms import INDEX_COLUMN, pixel_values

SHAPES = ["--dataset", "shapes", "--shapes-train", "64", "--shapes-test", "16", "--shapes-size", "32"]


def test_the_head_is_data_in_the_task_table():
    mae, synthesis = get_task("inpaint"), get_task("inpaint", "synthesis")
    assert mae is TASKS["masked-image-modeling"] and get_task("inpaint", "mae") is mae
    assert synthesis.name == mae.name and synthesis.auto_class == mae.auto_class == "AutoModelForMaskedImageModeling"
    assert (
        synthesis.description.startswith("a synthesis inpainting model") and "block_masking" not in synthesis.options
    )
    config = synthesis.model_config(tiny_config("vit"))
    assert config.model_type == "vitlm_vit_synthesis" and config.use_mask_token
    with pytest.raises(ValueError, match="the head \\(--head\\) of 'masked-image-modeling' must be one of"):
        get_task("inpaint", "diffusion")


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["classify", "--head", "synthesis"], "the head choice \\(--head\\) applies to inpainting, not 'classify'"),
        (["inpaint", "--head", "diffusion"], "must be one of \\['mae', 'synthesis'\\], got 'diffusion'"),
        (
            ["inpaint", "--head", "synthesis", "--block-masking"],
            "block masking \\(--block-masking\\) applies to the mae head of 'masked-image-modeling', not to --head "
            "synthesis",
        ),
        (
            ["inpaint", "--head", "synthesis", "--recipe-settings", "max_squares=0"],
            "recipe setting max_squares must be an integer > 0, got 0",
        ),
        (["inpaint", "--recipe-settings", "max_squares=10"], "recipe settings \\(--recipe-settings\\) apply"),
    ],
)
def test_head_choices_that_do_not_apply_are_refused_before_any_work(tmp_path, capsys, arguments, message):
    task, *options = arguments
    argv = ["train", task, "--model", "vit-tiny-test", *SHAPES, "--output-dir", str(tmp_path / "out"), *options]
    assert main(argv) == 2
    assert len(re.findall(message, capsys.readouterr().err)) == 1
    assert not (tmp_path / "out").exists()


def test_masks_follow_the_cosine_schedule_and_replay():
    collator = SynthesisMaskingCollator((4, 4))
    examples = [{"pixel_values": torch.zeros(3, 32, 32), INDEX_COLUMN: index} for index in range(400)]
    masks = collator(examples)["bool_masked_pos"]
    counts = masks.sum(1).float()
    assert masks.shape == (400, 16) and counts.min() >= 1 and counts.max() == 16
    # cos(pi/2 * u) of a uniform u has mean 2/pi: 64% of the patches
    assert counts.mean().item() / 16 == pytest.approx(2 / np.pi, abs=0.05)
    assert torch.equal(collator(examples[:7])["bool_masked_pos"], masks[:7])  # keyed by index, not batch
    collator.set_epoch(1)
    assert not torch.equal(collator(examples)["bool_masked_pos"], masks)


def test_the_codebook_is_fitted_by_k_means_on_the_training_squares_once():
    data = generate(24, seed=3, image_size=32)
    processor = AutoImageProcessor.from_pretrained(preset_path("synthesis-tiny-test"))
    model = VitlmViTForInpaintingSynthesis(tiny_config("vit_synthesis"))
    squares = model.pixel_squares(torch.stack(pixel_values(data["image"], processor))).flatten(0, 2)
    random_codewords = squares[torch.randperm(len(squares), generator=torch.Generator().manual_seed(0))[:16]]

    def error(codebook):
        return torch.cdist(squares, codebook).min(-1).values.square().mean()

    fitted = synthesis_model(model, data, processor).codebook.clone()
    assert fitted.any() and error(fitted) < 0.8 * error(random_codewords)
    model.codebook.mul_(2)
    assert torch.equal(synthesis_model(model, data, processor).codebook, 2 * fitted)  # a held codebook stays


def test_train_the_synthesis_head_end_to_end(tmp_path):
    out = tmp_path / "synthesis"
    argv = ["train", "inpaint", "--head", "synthesis", "--model", "vit-tiny-test", *SHAPES, "--epochs", "3"]
    argv += ["--output-dir", str(out), "--batch-size", "16", "--logging-steps", "1", "--seed", "0", "--lr", "2e-3"]
    argv += ["--config-overrides", "codebook_size=16"]
    assert main(argv) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert all(entry["eval_loss"] == entry["eval_loss"] for entry in history if "eval_loss" in entry)

    model = AutoModelForMaskedImageModeling.from_pretrained(out).eval()
    assert type(model) is VitlmViTForInpaintingSynthesis and model.config.codebook_size == 16
    trained = load_file(out / "checkpoint-12" / "model.safetensors")
    assert model.codebook.any() and torch.equal(model.codebook, trained["codebook"])
    card = ModelCard.load(out / "README.md")
    assert "A synthesis inpainting model" in card.text and "--head synthesis" in card.text
    image = generate(1, seed=5, image_size=32)[0]["image"]
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 4:24] = True
    completions = model.inpaint(image, mask, AutoImageProcessor.from_pretrained(out), num_samples=2, seed=0)
    for completion in completions:
        assert np.array_equal(np.asarray(completion)[~mask], np.asarray(image)[~mask])
