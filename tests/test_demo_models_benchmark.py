"""The default models' quality benchmark: its measures on hand-made cases, and one small run on the shipped models."""

import importlib.util
import pathlib

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "demo_models.py"
spec = importlib.util.spec_from_file_location("demo_models", SCRIPT)
demo_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_models)


def test_psnr_counts_only_the_masked_pixels():
    target = np.zeros((4, 4, 3), dtype=np.uint8)
    predicted = target.copy()
    predicted[0, 0] = 255  # a full-scale error on one pixel
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True  # two pixels, one wrong: MSE 1/2
    assert demo_models.psnr(predicted, target, mask) == pytest.approx(10 * np.log10(2))
    predicted[3, 3] = 255  # outside the mask: no effect
    assert demo_models.psnr(predicted, target, mask) == pytest.approx(10 * np.log10(2))


def test_random_rectangles_stay_inside_and_cover_a_fifth_to_half_of_each_side():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = demo_models.random_rectangle(rng, 64, 48)
        rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert 64 // 5 <= len(rows) <= 32 and 48 // 5 <= len(columns) <= 24
        assert mask.sum() == len(rows) * len(columns)  # one solid rectangle


def test_wilson_intervals_match_hand_computed_values():
    low, high = demo_models.wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = demo_models.wilson_interval(1.0, 10)  # all correct: the interval still admits misses
    assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0
    narrow, wide = demo_models.wilson_interval(0.9, 1024), demo_models.wilson_interval(0.9, 256)
    assert wide[0] < narrow[0] < 0.9 < narrow[1] < wide[1]


def test_cards_get_one_quality_section_replaced_on_every_run(tmp_path):
    (tmp_path / "README.md").write_text("---\nlibrary_name: vitlm\n---\n\n# model\n\n## License\n\nApache-2.0\n")
    demo_models.update_card(tmp_path, [("top-1", "0.500")])
    demo_models.update_card(tmp_path, [("top-1", "0.900")])
    text = (tmp_path / "README.md").read_text()
    assert text.count(demo_models.CARD_SECTION) == 1 and "| top-1 | 0.900 |" in text and "0.500" not in text
    assert "## License\n\nApache-2.0" in text


def test_the_shipped_models_are_measured_end_to_end():
    zero_shot = demo_models.zero_shot_accuracy(demo_models.MODELS / "zero-shot", "test", 8, 8)
    assert set(zero_shot) == {"top1", "shape_top1", "colour_top1"}
    assert all(0 <= value <= 1 for value in zero_shot.values())
    detection = demo_models.detection_ap50(demo_models.MODELS / "detection", 4, 4)
    assert set(detection) == {"ap50", "ap50_held_out", "ap50_seen"}
    assert all(0 <= value <= 1 for value in detection.values())
    inpainting = demo_models.inpainting_psnr(demo_models.MODELS / "inpainting", 4)
    assert inpainting["gain_db"] == pytest.approx(inpainting["psnr"] - inpainting["mean_fill_psnr"], abs=1e-9)
    gain_over_harmonic = inpainting["psnr"] - inpainting["harmonic_fill_psnr"]
    assert inpainting["gain_over_harmonic_db"] == pytest.approx(gain_over_harmonic, abs=1e-9)
    assert 5 < inpainting["mean_fill_psnr"] < 60 and 0 <= inpainting["images_improved"] <= 1
