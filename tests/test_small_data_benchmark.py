"""The small-data benchmark's core on a tiny budget: result structure, parameter pairing, data split, augmentation."""

import importlib.util
import pathlib

import torch
from torch.nn import functional as F

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "small_data.py"
spec = importlib.util.spec_from_file_location("small_data", SCRIPT)
small_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(small_data)


def test_run_experiment_structure():
    results = small_data.run_experiment(fractions=(0.1,), seeds=(0,), max_steps=2, progress=False)
    rows = results["rows"]
    assert sorted((r["model"], r["fraction"]) for r in rows) == [("hybrid", 0.1), ("vit", 0.1)]
    assert results["setup"]["test_size"] == 540  # 30% of 1797, rounded up by scikit-learn
    for row in rows:
        assert len(row["accuracies"]) == 1
        assert 0.0 <= row["accuracies"][0] <= 1.0
        assert row["mean"] == row["accuracies"][0] and row["std"] == 0.0
        assert row["wall_s"] > 0
        assert row["train_size"] == 125  # a stratified 10% of the 1257 training images
    params = {r["model"]: r["params"] for r in rows}
    assert abs(params["hybrid"] / params["vit"] - 1) < 0.1  # the docstring's promise of a fair pairing
    table = small_data.markdown(results).splitlines()
    assert len(table) == 2 + len(rows) and all(line.count("|") == 7 for line in table)


def test_subset_is_stratified():
    train = small_data.digits_splits()["train"]
    part = small_data.subset(train, 0.25, seed=0)
    counts = torch.bincount(part[:]["label"], minlength=10).float()
    expected = torch.bincount(train[:]["label"], minlength=10).float() * 0.25
    assert (counts - expected).abs().max() <= 1
    assert not torch.equal(small_data.subset(train, 0.25, seed=1)[:]["pixel_values"], part[:]["pixel_values"])


def test_collate_shifts_without_distorting():
    examples = [{"pixel_values": torch.rand(1, 32, 32) * 2 - 1, "label": i} for i in range(4)]
    plain = small_data.collate(examples, augment=False)
    assert plain["pixel_values"].shape == (4, 3, 32, 32)
    assert torch.equal(plain["pixel_values"][:, 2], torch.stack([e["pixel_values"][0] for e in examples]))
    assert plain["labels"].tolist() == [0, 1, 2, 3]
    torch.manual_seed(0)
    shifted = small_data.collate(examples, augment=True)["pixel_values"]
    shift, size = small_data.SHIFT, small_data.IMAGE_SIZE
    moved = 0
    for example, image in zip(examples, shifted):
        padded = F.pad(example["pixel_values"], (shift,) * 4, value=-1.0)
        windows = [padded[:, i : i + size, j : j + size] for i in range(2 * shift + 1) for j in range(2 * shift + 1)]
        matches = [k for k, window in enumerate(windows) if torch.equal(window[0], image[0])]
        assert len(matches) == 1  # exactly one translation, filled with background
        moved += matches[0] != shift * (2 * shift + 1) + shift
    assert moved > 0
