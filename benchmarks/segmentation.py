"""Segmentation quality on shapes-world images no model was trained on (1024 "test" images from the unused seed of
`demo_models.py`: the first object of each is a held-out shape x colour pair, the others any pair).

- closed vocabulary: a Segmenter (mask transformer, 2 x 2 sub-patches) on the image tower of the demo's zero-shot
  model, fine-tuned here with `vitlm train image-segmentation`'s task on shapes-world images of every pair (the
  "train" split and, for the held-out pairs, the "test" split, both from seeds the evaluation does not use); mIoU over
  the 48 categories + background. It is trained once and cached (`--cache`, default
  ~/.cache/vitlm/benchmarks/segmenter-closed-<steps>; `--retrain` trains again).
- open vocabulary: the demo's default segmentation model (`vitlm/demo/default_models/segmentation`, trained on the
  "train" split: the held-out pairs never appear as masks), queried with all 48 category names; IoU of the 8 held-out
  categories, averaged, and of the seen ones.

Both with 95% bootstrap intervals over the images (1000 resamples).

    python benchmarks/segmentation.py [--images 1024] [--update-cards]

Prints a markdown table, writes benchmarks/results/segmentation.json and, with --update-cards, the figures into the
default model's card (README.md): its own rows, the open-vocabulary head's.
"""

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch
from datasets import concatenate_datasets
from demo_models import MODELS, RESULTS, SEED, batches, image_side, shown, update_card
from transformers import AutoProcessor

from vitlm import VitlmDualEncoderModel
from vitlm.data.shapes import CATEGORIES, HELD_OUT, generate
from vitlm.training.metrics import per_class_iou, segmentation_confusion
from vitlm.training.run import load_model, with_transforms
from vitlm.training.tasks import BACKGROUND, SEGMENTATION_IGNORE_INDEX, get_task
from vitlm.training.trainer import build_trainer, training_arguments

CLASSES = [BACKGROUND, *CATEGORIES]  # label k > 0 is category k - 1
HELD_OUT_CLASSES = sorted(CATEGORIES.index(f"{colour} {shape}") + 1 for shape, colour in HELD_OUT)
SEEN_CLASSES = [k for k in range(1, len(CLASSES)) if k not in HELD_OUT_CLASSES]
CLOSED_RECIPE = dict(train_images=6000, held_out_images=1500, steps=3000, batch_size=32, lr=1e-3, seed=0)
# named by the step count, so that a longer recipe never reads a model cached by a shorter one
DEFAULT_CACHE = Path.home() / ".cache" / "vitlm" / "benchmarks" / f"segmenter-closed-{CLOSED_RECIPE['steps']}"
CLOSED_HEAD = "subpatch_factor=2,mask_decoder_layers=1,mask_decoder_heads=4,decoder_type=mask_transformer"


def label_maps(batch) -> torch.Tensor:
    maps = np.zeros((len(batch["image"]), *batch["image"][0].size[::-1]), dtype=np.int64)
    for index, (masks, objects) in enumerate(zip(batch["masks"], batch["objects"])):
        for mask, category in zip(masks, objects["category"]):
            maps[index][np.asarray(mask, dtype=bool)] = category + 1
    return torch.from_numpy(maps)


def train_closed(cache: Path, zero_shot: Path):
    """Segmenter's head on the zero-shot model's image tower, trained with the segmentation task's transforms,
    collator and metrics on shapes-world images of all 48 pairs."""
    recipe = CLOSED_RECIPE
    tower = cache.parent / "zero-shot-image-tower"
    VitlmDualEncoderModel.from_pretrained(zero_shot).vision_model.float().save_pretrained(tower)
    AutoProcessor.from_pretrained(zero_shot).image_processor.save_pretrained(tower)
    train_set = concatenate_datasets(
        [
            generate(recipe["train_images"], seed=100, split="train"),
            generate(recipe["held_out_images"], seed=101, split="test"),  # the only images of the held-out pairs
        ]
    )
    eval_set = generate(256, seed=102, split="test")
    spec = get_task("segment")
    torch.manual_seed(recipe["seed"])
    overrides = dict(item.split("=") for item in CLOSED_HEAD.split(","))
    overrides = {key: value if key == "decoder_type" else int(value) for key, value in overrides.items()}
    model, processor = load_model(spec, str(tower), CLASSES, overrides)
    train_set, eval_set = with_transforms(spec, train_set, eval_set, processor, augment=False)
    args = training_arguments(
        cache / "run",
        max_steps=recipe["steps"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        seed=recipe["seed"],
        eval_strategy="steps",
        eval_steps=recipe["steps"] // 2,
        save_strategy="no",
    )
    trainer = build_trainer(spec, model, train_set, eval_set, processor, args, class_names=CLASSES)
    trainer.train()
    trainer.model.save_pretrained(cache)
    processor.save_pretrained(cache)


def bootstrap(confusions: np.ndarray, classes: list[int], resamples: int = 1000) -> tuple[float, float]:
    """95% interval of the mean IoU over `classes` when the images are resampled with replacement."""
    rng = np.random.default_rng(SEED)
    values = []
    for _ in range(resamples):
        total = confusions[rng.integers(0, len(confusions), len(confusions))].sum(0)
        values.append(np.nanmean(per_class_iou(total)[classes]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


@torch.no_grad()
def confusions(model, processor, data, batch_size: int, queries=None) -> np.ndarray:
    """One confusion matrix per image (logits upsampled to the label maps, as post-processing does)."""
    image_processor = getattr(processor, "image_processor", processor)
    per_image = []
    for batch in batches(data, batch_size, type(model).__name__):
        pixel_values = image_processor(batch["image"], return_tensors="pt")["pixel_values"]
        inputs = {"pixel_values": pixel_values}
        if queries is not None:
            count = len(pixel_values)
            inputs.update(
                input_ids=queries["input_ids"].repeat(count, 1),
                attention_mask=queries["attention_mask"].repeat(count, 1),
            )
        logits = model(**inputs).logits
        truth = label_maps(batch)
        for image_logits, image_truth in zip(logits, truth):
            per_image.append(
                segmentation_confusion(image_logits[None], image_truth[None], len(CLASSES), SEGMENTATION_IGNORE_INDEX)
            )
    return np.stack(per_image)


def summary(per_image: np.ndarray, classes: list[int]) -> tuple[float, tuple[float, float]]:
    return float(np.nanmean(per_class_iou(per_image.sum(0))[classes])), bootstrap(per_image, classes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODELS, help="folder with zero-shot/ and segmentation/")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the closed-vocabulary model lives")
    parser.add_argument("--retrain", action="store_true", help="train the closed-vocabulary model again")
    parser.add_argument("--update-cards", action="store_true", help="write the figures into the default's card")
    args = parser.parse_args()

    if args.retrain or not (args.cache / "config.json").is_file():
        train_closed(args.cache, args.models / "zero-shot")
    closed, closed_processor = load_model(get_task("segment"), str(args.cache))
    closed.eval()
    data = generate(args.images, seed=SEED, split="test", image_size=image_side(closed.config))
    closed_confusions = confusions(closed, closed_processor, data, args.batch_size)
    closed_miou, closed_interval = summary(closed_confusions, list(range(len(CLASSES))))

    folder = args.models / "segmentation"
    open_model = load_model(get_task("segment"), str(folder))[0].float().eval()
    open_processor = AutoProcessor.from_pretrained(folder)
    template = (open_model.config.prompt_templates or ["a photo of a {}."])[0]
    queries = open_processor.tokenizer(
        [template.format(name) for name in CATEGORIES], padding=True, return_tensors="pt"
    )
    open_confusions = confusions(open_model, open_processor, data, args.batch_size, queries)
    held_out, held_out_interval = summary(open_confusions, HELD_OUT_CLASSES)
    seen, seen_interval = summary(open_confusions, SEEN_CLASSES)
    everything, _ = summary(open_confusions, list(range(len(CLASSES))))

    rows = [
        ("closed", "mIoU, 48 categories + background", closed_miou, ">= 0.80"),
        ("closed", "the same, 95% interval", closed_interval, ""),
        ("open", "mIoU, the 8 held-out pairs (never masks in training)", held_out, ">= 0.60"),
        ("open", "the same, 95% interval", held_out_interval, ""),
        ("open", "mIoU, the 40 seen pairs", seen, ""),
        ("open", "the same, 95% interval", seen_interval, ""),
        ("open", "mIoU, 48 categories + background", everything, ""),
    ]
    print("| head | measure | value | target |\n| --- | --- | ---: | --- |")
    for head, measure, value, target in rows:
        print(f"| {head} | {measure} | {shown(value)} | {target} |")

    RESULTS.mkdir(exist_ok=True)
    setup = {
        "date": str(date.today()),
        "images": args.images,
        "seed": SEED,
        "machine": platform.processor(),
        "closed_recipe": {**CLOSED_RECIPE, "head": CLOSED_HEAD},
    }
    results = {
        "setup": setup,
        "closed": {"miou": closed_miou, "miou_interval": closed_interval},
        "open": {
            "held_out_miou": held_out,
            "held_out_miou_interval": held_out_interval,
            "seen_miou": seen,
            "seen_miou_interval": seen_interval,
            "miou": everything,
        },
    }
    (RESULTS / "segmentation.json").write_text(json.dumps(results, indent=2))
    if args.update_cards:
        # the shipped model's own figures (the closed-vocabulary head is the benchmark's, not shipped)
        mine = [(measure, shown(value)) for head, measure, value, _ in rows if head == "open"]
        update_card(folder, mine, script="benchmarks/segmentation.py")


if __name__ == "__main__":
    main()
