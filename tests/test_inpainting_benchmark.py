"""benchmarks/inpainting.py's measures: its masks hide 30-70% of an object across its edge, the completion IoU
extracts the object the same way from any fill, and a small run reports every figure."""

import importlib.util
import pathlib

import numpy as np
import pytest

from vitlm.data.shapes import generate

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "inpainting.py"
spec = importlib.util.spec_from_file_location("inpainting_benchmark", SCRIPT)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_masks_hide_part_of_the_object_and_cross_its_edge():
    data = generate(40, seed=7, split="test")
    rng = np.random.default_rng(0)
    for example in data:
        object_mask = np.asarray(example["masks"][-1].convert("L")) > 0
        mask = None
        while mask is None:
            mask = benchmark.occluding_mask(rng, object_mask)
        hidden = (mask & object_mask).sum() / object_mask.sum()
        assert 0.3 <= hidden <= 0.7 and (mask & ~object_mask).any() and (~mask & object_mask).any()
        rows, cols = benchmark.region(object_mask)
        assert not mask[: rows.start].any() and not mask[:, cols.stop :].any()  # local to the object


def test_completion_iou_is_one_for_the_true_image_and_drops_for_a_fill_without_the_object():
    example = generate(1, seed=3, split="test")[0]
    pixels = np.asarray(example["image"])
    object_mask = np.asarray(example["masks"][-1].convert("L")) > 0
    rng, mask = np.random.default_rng(1), None
    while mask is None:
        mask = benchmark.occluding_mask(rng, object_mask)
    assert benchmark.completion_iou(pixels, pixels, object_mask, mask) == 1.0
    grey = pixels.copy()
    grey[mask] = 128  # the hidden part of the object is gone
    expected = (object_mask & ~mask).sum() / object_mask.sum()
    assert benchmark.completion_iou(grey, pixels, object_mask, mask) == pytest.approx(expected)


def test_interval_holds_the_mean():
    low, high = benchmark.interval(np.array([1.0, 2.0, 3.0, 4.0]))
    assert low < 2.5 < high and high - low == pytest.approx(2 * 1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)


def test_a_small_run_reports_every_measure(tmp_path):
    results = benchmark.evaluate(benchmark.MODELS / "inpainting-synthesis", benchmark.MODELS / "inpainting", 3, 2)
    for name in ("synthesis", "mae", "harmonic"):
        assert 5 < results[name]["psnr"] < 60 and 0 <= results[name]["iou"] <= 1
        low, high = results[name]["psnr_interval"]
        assert low <= results[name]["psnr"] <= high
    gain = results["synthesis"]["psnr"] - results["harmonic"]["psnr"]
    assert results["synthesis"]["psnr_gain_over_harmonic"] == pytest.approx(gain)
    assert results["diversity"]["pixels_changed_outside_mask"] == 0
    assert results["diversity"]["mean_pairwise_difference_in_mask"] > 0
    rows = benchmark.table_rows(results)
    (tmp_path / "README.md").write_text("# card\n")
    benchmark.update_card(tmp_path, rows, 3)
    benchmark.update_card(tmp_path, rows, 3)
    text = (tmp_path / "README.md").read_text()
    assert text.count(benchmark.CARD_SECTION) == 1 and "completion IoU, synthesis head" in text
