"""Swin: the relative position bias and shifted windows against hand-built references, padding and odd sizes as
transformers' Swin computes them, errors on bad input, attention maps stitched from windows, pipelines, and a Swin
image tower inside a dual encoder and the detection head."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SwinConfig, SwinForImageClassification, pipeline

from tests.conftest import tiny_clip_config, tiny_config
from vitlm import (
    VitlmDualEncoderForImageClassification,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderModel,
    VitlmImageProcessor,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
)
from vitlm.attention_maps import attention_heatmaps, attention_map, stitch_windows
from vitlm.convert.from_transformers import convert_swin
from vitlm.models.layers import VitlmRelativePositionBias, shifted_window_mask

SWIN_TOWER = {
    "model_type": "vitlm_swin",
    "image_size": 32,
    "patch_size": 2,
    "embed_dim": 16,
    "depths": [2, 2],
    "num_heads": [2, 4],
    "window_size": 4,
}


def reference_index(window, table_window):
    """Swin's relative_position_index written out token pair by token pair."""
    tokens = list(itertools.product(range(window[0]), range(window[1])))
    return torch.tensor(
        [
            [
                (qy - ky + table_window[0] - 1) * (2 * table_window[1] - 1) + (qx - kx + table_window[1] - 1)
                for ky, kx in tokens
            ]
            for qy, qx in tokens
        ]
    )


@pytest.mark.parametrize("window,table_window", [((2, 3), (2, 3)), ((3, 3), (3, 3)), ((2, 2), (3, 4))])
def test_relative_position_bias_reads_the_table_at_each_offset(window, table_window):
    bias = VitlmRelativePositionBias(table_window, num_heads=2)
    torch.nn.init.normal_(bias.relative_position_bias_table)
    expected = bias.relative_position_bias_table[reference_index(window, table_window)].permute(2, 0, 1)
    assert torch.equal(bias(window), expected)
    assert bias(window).shape == (2, window[0] * window[1], window[0] * window[1])


def test_relative_position_bias_with_a_prefix_token_is_beits_layout():
    bias = VitlmRelativePositionBias((2, 2), num_heads=1, num_prefix_tokens=1)
    offsets = 3 * 3
    assert bias.relative_position_bias_table.shape == (offsets + 3, 1)
    index = bias.index((2, 2), "cpu")
    assert index.shape == (5, 5)
    assert (index[0, 1:] == offsets).all() and (index[1:, 0] == offsets + 1).all() and index[0, 0] == offsets + 2
    assert torch.equal(index[1:, 1:], reference_index((2, 2), (2, 2)))


def test_a_window_larger_than_the_table_is_refused():
    with pytest.raises(ValueError, match="larger than the bias table"):
        VitlmRelativePositionBias(3, num_heads=1)((4, 3))


def test_shifted_window_mask_separates_the_regions_the_shift_brought_together():
    """On a 4x4 map with 2x2 windows shifted by 1, the last window holds the four corners of the map."""
    mask = shifted_window_mask(4, 4, (2, 2), (1, 1), torch.float32, "cpu")
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()  # the first window lies inside one region
    blocked = mask[3] < 0
    assert not blocked.diagonal().any() and blocked.sum() == 12  # four tokens of four regions: each sees itself only
    assert (mask[1] < 0).sum() == 8  # two regions of two tokens


@pytest.mark.parametrize("size", [(36, 44), (20, 28), (16, 40)])
def test_any_multiple_of_the_patch_size_runs_as_transformers_swin_does(size):
    """Maps the windows do not divide (padded, then shifted), odd maps before patch merging, a map whose shorter
    side is the window: logits equal transformers' Swin (a fresh one per size: it clamps windows for good)."""
    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    reference = SwinForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model = convert_swin(reference).eval()
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reference(pixel_values).logits, rtol=0, atol=1e-5)


def test_a_map_smaller_than_the_window_is_one_window():
    """A 1x3 map (transformers' Swin fails there): the window shrinks to 1x1, every token attends to itself alone."""
    model = VitlmSwinModel._from_config(tiny_config("swin"), attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 2, 6), output_attentions=True)
    assert outputs.last_hidden_state.shape == (2, 2, 32)  # merged to 1x2
    assert [tuple(a.shape) for a in outputs.attentions] == [(6, 2, 1, 1)] * 2 + [(4, 4, 1, 1)] * 2
    assert all((a == 1).all() for a in outputs.attentions)


@pytest.mark.parametrize(
    "pixel_values,message",
    [
        (torch.zeros(1, 3, 33, 32), "not divisible by the model's stride of 2"),
        (torch.zeros(1, 1, 32, 32), "has 1 channels, the model expects 3"),
        (torch.zeros(3, 32, 32), r"\(batch, channels, height, width\) tensor"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(pixel_values, message):
    model = VitlmSwinModel(tiny_config("swin"))
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


def test_hidden_states_are_each_stages_map_and_attentions_stay_within_windows():
    torch.manual_seed(0)
    model = VitlmSwinModel._from_config(tiny_config("swin"), attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [(2, 256, 16), (2, 256, 16), (2, 64, 32)]
    assert torch.equal(outputs.hidden_states[-1], model.stages[-1](outputs.hidden_states[1], (16, 16)))
    # the shifted block of the first stage: its last window (the corners) attends only within each region
    shifted = outputs.attentions[1].view(2, 16, 2, 16, 16)[:, -1]
    regions = torch.tensor([0, 0, 1, 1] * 2 + [2, 2, 3, 3] * 2)
    assert (shifted[..., regions[:, None] != regions[None, :]] == 0).all()


def brute_force_stitch(attention, grid, window, shift):
    """Each token of the map placed by hand in its window after the roll, on the padded map."""
    height, width = grid
    padded = [-(-grid[0] // window[0]) * window[0], -(-grid[1] // window[1]) * window[1]]
    windows_per_row = padded[1] // window[1]
    windows = padded[0] // window[0] * windows_per_row
    batch = attention.shape[0] // windows
    place = {}
    for row, col in itertools.product(range(height), range(width)):
        rolled = ((row - shift[0]) % padded[0], (col - shift[1]) % padded[1])
        number = rolled[0] // window[0] * windows_per_row + rolled[1] // window[1]
        place[row * width + col] = (number, rolled[0] % window[0] * window[1] + rolled[1] % window[1])
    full = torch.zeros(batch, height * width, height * width)
    for b, (q, (wq, tq)), (k, (wk, tk)) in itertools.product(range(batch), place.items(), place.items()):
        if wq == wk:
            full[b, q, k] = attention[b * windows + wq, tq, tk]
    return full


@pytest.mark.parametrize(
    "grid,window,shift", [((4, 4), (2, 2), (1, 1)), ((5, 3), (2, 2), (1, 1)), ((4, 6), (2, 3), (0, 0))]
)
def test_window_attention_is_stitched_back_onto_the_map(grid, window, shift):
    windows = -(-grid[0] // window[0]) * -(-grid[1] // window[1])
    attention = torch.rand(2 * windows, window[0] * window[1], window[0] * window[1])
    expected = brute_force_stitch(attention, grid, window, shift)
    assert torch.equal(stitch_windows(attention, grid, window, shift), expected)


@pytest.mark.parametrize("method", ["rollout", "cls"])
@pytest.mark.parametrize("model_class", [VitlmSwinForImageClassification, VitlmDualEncoderModel])
def test_attention_maps_of_a_swin_tower(model_class, method):
    torch.manual_seed(0)
    config = (
        tiny_config("dual", vision_config=SWIN_TOWER) if model_class is VitlmDualEncoderModel else tiny_config("swin")
    )
    model = model_class(config).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    maps = attention_map(model, image, VitlmImageProcessor(size=32, crop_size=32), method=method)
    assert maps.heatmap.shape == (37, 53) and maps.heatmap.min() >= 0 and maps.heatmap.max() == pytest.approx(1.0)
    heat = attention_heatmaps(model, torch.randn(2, 3, 32, 32), method)
    assert heat.shape == (2, 32, 32) and torch.isfinite(heat).all()


def test_pipeline_classifies_with_a_saved_swin(tmp_path):
    torch.manual_seed(0)
    model = VitlmSwinForImageClassification(tiny_config("swin")).eval()
    model.save_pretrained(tmp_path)
    VitlmImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), top_k=3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    results = classifier(image)
    assert [r["label"] for r in results][0] in model.config.id2label.values()
    inputs = VitlmImageProcessor(size=32, crop_size=32)(image, return_tensors="pt")
    with torch.no_grad():
        best = model(**inputs).logits.softmax(-1)[0].max().item()
    assert results[0]["score"] == pytest.approx(best, abs=1e-5)


def test_a_dual_encoder_with_a_swin_tower_pools_by_mean_and_detects_on_its_last_stage():
    torch.manual_seed(0)
    config = tiny_config("dual", vision_config=SWIN_TOWER)
    model = VitlmDualEncoderModel(config).eval()
    assert type(model.vision_model) is VitlmSwinModel and model.visual_projection.in_features == 32
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tower = model.vision_model(pixel_values)
        torch.testing.assert_close(tower.pooler_output, tower.last_hidden_state.mean(1))
        embeds = model.get_image_features(pixel_values).pooler_output
        torch.testing.assert_close(embeds, model.visual_projection(tower.pooler_output))
    detector = VitlmDualEncoderForObjectDetection(config).eval()
    detector.dual_encoder.load_state_dict(model.state_dict())
    input_ids = torch.tensor([[config.text_config.bos_token_id, 5, config.text_config.eos_token_id]] * 4)
    with torch.no_grad():
        outputs = detector(pixel_values=pixel_values, input_ids=input_ids)
        tokens = model.vision_model(pixel_values).last_hidden_state  # the last stage: 8x8 tokens
    assert outputs.logits.shape == (2, 64, 2) and outputs.pred_boxes.shape == (2, 64, 4)
    expected = detector.layer_norm(tokens * tokens.mean(1, keepdim=True)).reshape(2, 8, 8, -1)
    torch.testing.assert_close(outputs.image_embeds, expected)


def test_a_dual_encoder_with_a_swin_tower_trains_contrastively_and_classifies_zero_shot(tmp_path):
    from vitlm.cli import main
    from vitlm.clip_bpe import clip_tokenizer
    from vitlm.data.shapes import CATEGORIES, generate
    from vitlm.models import VitlmDualEncoderProcessor

    torch.manual_seed(0)
    VitlmDualEncoderModel(tiny_clip_config(vision_config=SWIN_TOWER)).save_pretrained(tmp_path / "start")
    tokenizer = clip_tokenizer()
    VitlmDualEncoderProcessor(VitlmImageProcessor(size=32, crop_size=32), tokenizer).save_pretrained(
        tmp_path / "start"
    )
    out = tmp_path / "trained"
    argv = ["train", "contrastive", "--model", str(tmp_path / "start"), "--dataset", "shapes", "--shapes-train", "32"]
    argv += ["--shapes-test", "16", "--shapes-size", "32", "--output-dir", str(out), "--max-steps", "4"]
    argv += ["--batch-size", "8", "--logging-steps", "1", "--lr", "1e-3", "--seed", "0"]
    assert main(argv) == 0
    model = VitlmDualEncoderModel.from_pretrained(out).eval()
    start = VitlmDualEncoderModel.from_pretrained(tmp_path / "start")
    assert not torch.equal(
        model.vision_model.stages[0].blocks[0].attention.qkv.weight,
        start.vision_model.stages[0].blocks[0].attention.qkv.weight,
    )
    classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(model, tokenizer, CATEGORIES[:4])
    images = [sample["image"] for sample in generate(3, seed=1, image_size=32)]
    pixel_values = VitlmImageProcessor(size=32, crop_size=32)(images, return_tensors="pt")["pixel_values"]
    prompts = tokenizer([f"a photo of a {name}." for name in CATEGORIES[:4]], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = classifier(pixel_values).logits
        expected = model(pixel_values=pixel_values, **prompts).logits_per_image
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
