"""Small-data experiment: does a hybrid's convolutional stem beat a plain ViT when training data is scarce?

Both models are trained from scratch on scikit-learn's digits (1797 8x8 grayscale images, 10 classes; shipped with
scikit-learn, no download), upsampled bilinearly to 32x32 and repeated to 3 channels. One stratified split keeps 30%
of the images as the test set for every run; each run trains on a stratified fraction of the remaining 70% (drawn
afresh for every seed, the same draw for both models), so the spread over seeds includes which images were kept.

The pairing. Both models see the same 8x8 grid of 64 tokens and share the transformer's shape (width 64, 4 heads,
MLP 256, [CLS] pooling, learned positions):
- ViT: 4x4 patches, 6 blocks.
- Hybrid: a one-stage ResNetV2 (stem width 16, one bottleneck; stride 4, so 32x32 -> 8x8 maps of 256 channels) cut
  into 1x1 patches, 5 blocks.
The hybrid's stage width is fixed at 256 * width_factor channels, so its smallest backbone plus projection costs
~78k parameters, about 1.5 of these blocks (~50k each). Trading one block for the CNN (hybrid ~8% larger) keeps
the token grid, width and almost the depth equal; trading two would leave it ~8% smaller. Both counts are printed.

Same budget for both: AdamW (lr 1e-3, weight decay 0.05), cosine schedule with 10% warm-up, batch 32, the same
number of optimizer steps for every data fraction (small fractions see more epochs, not fewer updates), and the
same augmentation (random translation of up to 3 pixels at 32x32, i.e. under one original pixel). Training goes
through transformers' `Trainer`; the data are `datasets.Dataset`s.

    OMP_NUM_THREADS=1 python benchmarks/small_data.py [--seeds 0 1 2] [--fractions 0.1 0.25 1.0] [--max-steps 150]

18 runs of 150 steps take about 9 minutes on a busy 2-core machine with one thread (two threads oversubscribe
cores shared with other processes and ran ten times slower there); on idle cores two threads are faster.

Prints a markdown table, writes benchmarks/results/small_data.json and benchmarks/results/small_data.png.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SIZE = 32
SHIFT = 3  # pixels of random translation at IMAGE_SIZE
TRANSFORMER = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, position_embedding_type="learned")
MODELS = {
    "vit": dict(patch_size=4, num_hidden_layers=6),
    "hybrid": dict(
        backbone_depths=[1],
        backbone_stem_width=16,
        backbone_width_factor=1,
        backbone_num_groups=8,
        patch_size=1,
        num_hidden_layers=5,
    ),
}
TRAINING = dict(
    learning_rate=1e-3, weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=0.1, per_device_train_batch_size=32
)


def build_model(name: str):
    from vitlm import VitlmHybridForImageClassification, VitlmViTForImageClassification
    from vitlm.models.configuration_vitlm import VitlmHybridConfig, VitlmViTConfig

    config_class, model_class = {
        "vit": (VitlmViTConfig, VitlmViTForImageClassification),
        "hybrid": (VitlmHybridConfig, VitlmHybridForImageClassification),
    }[name]
    config = config_class(image_size=IMAGE_SIZE, num_channels=3, num_labels=10, **TRANSFORMER, **MODELS[name])
    model = model_class(config)
    model.set_attn_implementation("sdpa")
    return model


def digits_splits(test_size: float = 0.3):
    """The digits as {"train", "test"} `datasets.Dataset`s of upsampled 1x32x32 pixel values and labels."""
    from datasets import Dataset
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()

    def to_dataset(images, labels):
        dataset = Dataset.from_dict({"image": images.astype(np.float32), "label": labels})
        return dataset.map(upsample, batched=True, remove_columns="image").with_format("torch")

    train_x, test_x, train_y, test_y = train_test_split(
        digits.images, digits.target, test_size=test_size, stratify=digits.target, random_state=0
    )
    return {"train": to_dataset(train_x, train_y), "test": to_dataset(test_x, test_y)}


def subset(train, fraction: float, seed: int):
    """A stratified `fraction` of the training split, drawn with `seed`."""
    if fraction >= 1.0:
        return train
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(train)), train_size=fraction, stratify=train["label"], random_state=seed)
    return train.select(sorted(keep))


def upsample(batch):
    """8x8 digits (values 0..16) -> 1x32x32 pixel values, background -1 and ink up to 1."""
    images = torch.as_tensor(np.asarray(batch["image"], dtype=np.float32))[:, None] / 16.0
    return {"pixel_values": F.interpolate(images, size=IMAGE_SIZE, mode="bilinear", align_corners=False) * 2 - 1}


def collate(examples, augment: bool):
    """Stacks examples into 3-channel pixel values, randomly shifted if `augment` (a batched transform in the
    collator: one call per batch, not per image)."""
    pixels = torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples])
    if augment:  # pad with background and crop back: a translation of up to SHIFT pixels either way
        padded = F.pad(pixels, (SHIFT,) * 4, value=-1.0)
        offsets = torch.randint(0, 2 * SHIFT + 1, (len(pixels), 2)).tolist()
        pixels = torch.stack([p[:, i : i + IMAGE_SIZE, j : j + IMAGE_SIZE] for p, (i, j) in zip(padded, offsets)])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixels.expand(-1, 3, -1, -1).contiguous(), "labels": labels}


def train_and_evaluate(name: str, train, test, seed: int, max_steps: int, output_dir: str) -> float:
    """Test accuracy of model `name` trained from scratch on `train` for `max_steps` steps."""
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)  # the initial weights
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_eval_batch_size=256,
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,  # the collator reads "pixel_values" and "label"
        dataloader_num_workers=0,
        **TRAINING,
    )
    trainer = Trainer(
        model=build_model(name), args=args, train_dataset=train, data_collator=partial(collate, augment=True)
    )
    trainer.train()
    trainer.data_collator = partial(collate, augment=False)  # evaluation sees the images as they are
    prediction = trainer.predict(test)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return float((logits.argmax(-1) == prediction.label_ids).mean())


def run_experiment(
    models=tuple(MODELS), fractions=(0.1, 0.25, 1.0), seeds=(0, 1, 2), max_steps: int = 150, progress: bool = True
) -> dict:
    """Trains every model on every data fraction with every seed; returns the setup and one row per (model,
    fraction) with the per-seed accuracies, their mean and standard deviation, and the training wall time."""
    splits = digits_splits()
    params = {name: sum(p.numel() for p in build_model(name).parameters()) for name in models}
    rows = {(name, fraction): {"accuracies": [], "wall_s": 0.0} for fraction in fractions for name in models}
    bar = tqdm(total=len(rows) * len(seeds), desc="training", unit="run", disable=not progress)
    with tempfile.TemporaryDirectory() as output_dir:
        for fraction in fractions:
            for seed in seeds:
                train = subset(splits["train"], fraction, seed)
                for name in models:  # both models see the same images with the same seed
                    start = time.perf_counter()
                    accuracy = train_and_evaluate(name, train, splits["test"], seed, max_steps, output_dir)
                    rows[name, fraction]["accuracies"].append(accuracy)
                    rows[name, fraction]["wall_s"] += time.perf_counter() - start
                    rows[name, fraction]["train_size"] = len(train)
                    bar.set_postfix(model=name, fraction=fraction, seed=seed, accuracy=f"{accuracy:.3f}")
                    bar.update()
    bar.close()
    results = []
    for (name, fraction), row in rows.items():
        accuracies = row["accuracies"]
        results.append(
            {
                "model": name,
                "params": params[name],
                "fraction": fraction,
                "train_size": row["train_size"],
                "accuracies": accuracies,
                "mean": statistics.fmean(accuracies),
                "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "wall_s": row["wall_s"],
            }
        )
    setup = {
        "dataset": "sklearn digits, 30% stratified test split",
        "test_size": len(splits["test"]),
        "image_size": IMAGE_SIZE,
        "max_steps": max_steps,
        "seeds": list(seeds),
        "training": TRAINING,
        "augmentation": f"random translation up to {SHIFT} px",
        "models": {name: {**TRANSFORMER, **MODELS[name]} for name in models},
    }
    return {"setup": setup, "rows": results}


def markdown(results: dict) -> str:
    lines = [
        "| model | params | data fraction | train images | test accuracy (mean ± std) | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(results["rows"], key=lambda r: (r["fraction"], r["model"])):
        lines.append(
            f"| {row['model']} | {row['params']:,} | {row['fraction']:.0%} | {row['train_size']} | "
            f"{row['mean']:.3f} ± {row['std']:.3f} | {row['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(row["model"] for row in results["rows"]):
        rows = sorted((r for r in results["rows"] if r["model"] == name), key=lambda r: r["fraction"])
        axes.errorbar(
            [r["train_size"] for r in rows],
            [r["mean"] for r in rows],
            yerr=[r["std"] for r in rows],
            marker="o",
            capsize=3,
            label=f"{name} ({rows[0]['params'] / 1e3:.0f}k params)",
        )
    axes.set_xscale("log")
    axes.set_xlabel("training images")
    axes.set_ylabel("test accuracy")
    axes.set_title(
        f"digits, from scratch, {results['setup']['max_steps']} steps, {len(results['setup']['seeds'])} seeds"
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    parser.add_argument("--max-steps", type=int, default=150)
    args = parser.parse_args()

    start = time.perf_counter()
    results = run_experiment(fractions=args.fractions, seeds=args.seeds, max_steps=args.max_steps)
    total = time.perf_counter() - start
    results["setup"].update(
        total_wall_s=total, date=str(date.today()), torch=torch.__version__, cpu=platform.processor() or "unknown"
    )
    results["setup"]["torch_threads"] = torch.get_num_threads()
    print(markdown(results))
    print(f"\ntotal wall time: {total:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "small_data.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "small_data.png")


if __name__ == "__main__":
    main()
