"""Quality of the demo's default models on shapes-world data none of them was trained on.

- zero-shot: single-object images of the `HELD_OUT` shape x colour pairs (never in any training caption), classified
  among all 48 categories with the model's own prompt templates (chance 1/48), with a 95% interval; the seen pairs'
  accuracy for context, and on the held-out pairs whether the shape alone and the colour alone are named (shape-only
  and colour-only captions; chance 1/6 and 1/8);
- detection: test-split images (the first object of each is a held-out pair, 1-3 objects), queried with all 48
  category names; AP at IoU 0.5 per category, averaged over the categories present (COCO-style), and over the
  held-out categories alone;
- inpainting: test-split images with a random rectangle masked; PSNR inside the mask, per image, averaged, of the
  model's fill (blended into the image, and pasted as predicted) and of two fills without a model: the mean colour of
  the visible pixels (the target's baseline) and the smoothest surface through the pixels around the mask.

The images are drawn at each model's input size, from their own seed, so none of them was seen in training or in
training-time evaluation.

    python benchmarks/demo_models.py [--images 1024] [--update-cards]

Prints a markdown table, writes benchmarks/results/demo_models.json and, with --update-cards, the figures into each
model's card (README.md).
"""

import argparse
import json
import platform
import re
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskedImageModeling,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
)

from vitlm import VitlmDualEncoderForImageClassification
from vitlm.data.shapes import CATEGORIES, COLOURS, HELD_OUT, SHAPES, caption_variants, generate
from vitlm.models.inpainting_utils import poisson_fill
from vitlm.training.metrics import average_precision, center_to_corners

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ROOT / "vitlm" / "demo" / "default_models"
SEED = 2026  # training used seeds 0 (train) and 1 (its evaluation)
HELD_OUT_CATEGORIES = sorted(CATEGORIES.index(f"{colour} {shape}") for shape, colour in HELD_OUT)
CARD_SECTION = "## Quality on held-out data"


def image_side(config) -> int:
    """The model's input side: images are drawn at it, so objects keep the pixel sizes the model was trained on."""
    size = getattr(config, "vision_config", config).image_size
    return size if isinstance(size, int) else size[0]


def batches(dataset, batch_size: int, desc: str):
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc):
        yield dataset[start : start + batch_size]


@torch.no_grad()
def zero_shot_accuracy(folder: Path, split: str, num_images: int, batch_size: int) -> dict[str, float]:
    """Top-1 among the 48 categories (the model's prompt templates), and naming the shape alone among the six
    shape-only captions and the colour alone among the eight colour-only ones (the captions training used)."""
    model, processor = AutoModel.from_pretrained(folder).float().eval(), AutoProcessor.from_pretrained(folder)
    classifiers = {
        "top1": VitlmDualEncoderForImageClassification.from_dual_encoder(model, processor.tokenizer, CATEGORIES),
        "shape_top1": VitlmDualEncoderForImageClassification.from_dual_encoder(
            model, processor.tokenizer, [caption_variants([(shape, "red")])[1] for shape in SHAPES], templates=["{}"]
        ),
        "colour_top1": VitlmDualEncoderForImageClassification.from_dual_encoder(
            model, processor.tokenizer, [caption_variants([("circle", c)])[2] for c in COLOURS], templates=["{}"]
        ),
    }
    data = generate(
        num_images, seed=SEED, split=split, image_size=image_side(model.config), min_objects=1, max_objects=1
    )
    correct = dict.fromkeys(classifiers, 0)
    for batch in batches(data, batch_size, f"zero-shot ({split})"):
        pixel_values = processor.image_processor(batch["image"], return_tensors="pt")["pixel_values"]
        labels = {
            "top1": batch["label"],
            "shape_top1": [SHAPES.index(objects["shape"][0]) for objects in batch["objects"]],
            "colour_top1": [list(COLOURS).index(objects["colour"][0]) for objects in batch["objects"]],
        }
        for name, classifier in classifiers.items():
            predicted = classifier(pixel_values).logits.argmax(-1)
            correct[name] += int((predicted == torch.tensor(labels[name])).sum())
    return {name: count / num_images for name, count in correct.items()}


@torch.no_grad()
def detection_ap50(folder: Path, num_images: int, batch_size: int) -> dict[str, float]:
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).float().eval()
    processor = AutoProcessor.from_pretrained(folder)
    template = model.config.prompt_templates[0] if model.config.prompt_templates else "a photo of a {}."
    queries = processor.tokenizer([template.format(name) for name in CATEGORIES], padding=True, return_tensors="pt")
    data = generate(num_images, seed=SEED, split="test", image_size=image_side(model.config))
    detections, truths = [], []
    for batch in batches(data, batch_size, "detection"):
        pixel_values = processor.image_processor(batch["image"], return_tensors="pt")["pixel_values"]
        count = len(pixel_values)
        outputs = model(
            pixel_values=pixel_values,
            input_ids=queries["input_ids"].repeat(count, 1),
            attention_mask=queries["attention_mask"].repeat(count, 1),
        )
        # every token proposes its best-scoring category; no NMS (each object is matched to one token in training)
        scores, labels = outputs.logits.sigmoid().max(-1)
        for image_scores, image_labels, boxes, image, objects in zip(
            scores, labels, outputs.pred_boxes, batch["image"], batch["objects"]
        ):
            size = torch.tensor(image.size * 2, dtype=torch.float64)
            detections.append(
                {"boxes": center_to_corners(boxes.double().numpy()), "scores": image_scores, "labels": image_labels}
            )
            truths.append({"boxes": np.asarray(objects["bbox"]) / size.numpy(), "labels": objects["category"]})
    per_class = average_precision(detections, truths, iou_threshold=0.5)
    return {
        "ap50": float(np.mean(list(per_class.values()))),
        "ap50_held_out": float(np.mean([per_class[c] for c in HELD_OUT_CATEGORIES if c in per_class])),
        "ap50_seen": float(np.mean([ap for c, ap in per_class.items() if c not in HELD_OUT_CATEGORIES])),
    }


def wilson_interval(fraction: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% interval of a proportion measured on `count` samples (Wilson score): whether a target is met is read
    from it, not from the point estimate alone."""
    centre = (fraction + z**2 / (2 * count)) / (1 + z**2 / count)
    half = z / (1 + z**2 / count) * np.sqrt(fraction * (1 - fraction) / count + z**2 / (4 * count**2))
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def psnr(predicted: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    error = (predicted[mask].astype(np.float64) - target[mask].astype(np.float64)) / 255
    return float(10 * np.log10(1 / max(np.mean(error**2), 1e-10)))


def random_rectangle(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    box_height, box_width = (int(rng.integers(side // 5, side // 2 + 1)) for side in (height, width))
    top, left = int(rng.integers(0, height - box_height + 1)), int(rng.integers(0, width - box_width + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + box_height, left : left + box_width] = True
    return mask


@torch.no_grad()
def inpainting_psnr(folder: Path, num_images: int) -> dict[str, float]:
    """PSNR inside the mask of the model's fill (blended, and pasted as predicted) and of two fills without a model:
    the visible pixels' mean colour, and the smoothest surface through the pixels around the mask."""
    model = AutoModelForMaskedImageModeling.from_pretrained(folder).float().eval()
    image_processor = AutoImageProcessor.from_pretrained(folder)
    data = generate(num_images, seed=SEED, split="test", image_size=image_side(model.config))
    rng = np.random.default_rng(SEED)
    scores = {"model": [], "model_pasted": [], "mean_fill": [], "harmonic_fill": []}
    for image in tqdm(data["image"], desc="inpainting"):
        pixels = np.asarray(image.convert("RGB"))
        mask = random_rectangle(rng, *pixels.shape[:2])
        mean_fill = pixels.copy()
        mean_fill[mask] = np.rint(pixels[~mask].mean(axis=0)).astype(np.uint8)
        harmonic = poisson_fill(torch.from_numpy(pixels.copy()).permute(2, 0, 1), torch.from_numpy(mask))
        inputs = image_processor.prepare_inpainting(image, mask, model.config)
        outputs = model(**inputs)
        fills = {
            "model": image_processor.post_process_inpainting(outputs, inputs["pixel_values"], image, mask),
            "model_pasted": image_processor.post_process_inpainting(
                outputs, inputs["pixel_values"], image, mask, blend=False
            ),
            "mean_fill": mean_fill,
            "harmonic_fill": harmonic.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(),
        }
        for name, filled in fills.items():
            scores[name].append(psnr(np.asarray(filled), pixels, mask))
    scores = {name: np.asarray(values) for name, values in scores.items()}
    gains = scores["model"] - scores["mean_fill"]
    return {
        "psnr": float(scores["model"].mean()),
        "pasted_psnr": float(scores["model_pasted"].mean()),
        "mean_fill_psnr": float(scores["mean_fill"].mean()),
        "harmonic_fill_psnr": float(scores["harmonic_fill"].mean()),
        "gain_db": float(gains.mean()),
        "gain_over_harmonic_db": float((scores["model"] - scores["harmonic_fill"]).mean()),
        "images_improved": float((gains > 0).mean()),
    }


def shown(value: float | tuple[float, float]) -> str:
    return "{:.3f} to {:.3f}".format(*value) if isinstance(value, tuple) else f"{value:.3f}"


def update_card(folder: Path, rows: list[tuple[str, str]], script: str = "benchmarks/demo_models.py"):
    """Replace (or append) the card's quality section with `rows` of (measure, value), measured by `script`."""
    card = folder / "README.md"
    text = card.read_text()
    table = "\n".join(f"| {measure} | {value} |" for measure, value in rows)
    section = (
        f"{CARD_SECTION}\n\nMeasured by `python {script}` on shapes-world images drawn from a seed no"
        f" training run used ({date.today()}).\n\n| measure | value |\n| --- | --- |\n{table}\n"
    )
    pattern = re.compile(rf"{re.escape(CARD_SECTION)}\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section, text) if CARD_SECTION in text else text.rstrip() + "\n\n" + section
    card.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODELS, help="folder with zero-shot/, detection/, inpainting/")
    parser.add_argument("--images", type=int, default=1024, help="evaluation images per measure")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--update-cards", action="store_true", help="write the figures into the models' cards")
    args = parser.parse_args()
    torch.manual_seed(0)

    held_out = zero_shot_accuracy(args.models / "zero-shot", "test", args.images, args.batch_size)
    seen = zero_shot_accuracy(args.models / "zero-shot", "validation", args.images, args.batch_size)
    zero_shot = {
        "held_out_top1": held_out["top1"],
        "held_out_top1_interval": wilson_interval(held_out["top1"], args.images),
        "seen_top1": seen["top1"],
        "held_out_shape_top1": held_out["shape_top1"],
        "held_out_colour_top1": held_out["colour_top1"],
        "chance": 1 / len(CATEGORIES),
    }
    detection = detection_ap50(args.models / "detection", args.images, args.batch_size)
    inpainting = inpainting_psnr(args.models / "inpainting", args.images)

    rows = [
        ("zero-shot", "top-1, held-out shape x colour pairs, 48 classes", zero_shot["held_out_top1"], ">= 0.90"),
        ("zero-shot", "the same, 95% interval", zero_shot["held_out_top1_interval"], ""),
        ("zero-shot", "top-1, seen pairs (unseen images)", zero_shot["seen_top1"], ""),
        ("zero-shot", "held-out pairs: shape named among 6 shape-only captions", zero_shot["held_out_shape_top1"], ""),
        (
            "zero-shot",
            "held-out pairs: colour named among 8 colour-only captions",
            zero_shot["held_out_colour_top1"],
            "",
        ),
        ("detection", "AP50, test images (48 queries)", detection["ap50"], ">= 0.80"),
        ("detection", "AP50, held-out categories only", detection["ap50_held_out"], ""),
        ("detection", "AP50, seen categories only", detection["ap50_seen"], ""),
        ("inpainting", "PSNR in mask, model (dB)", inpainting["psnr"], ""),
        ("inpainting", "PSNR in mask, model without blending (dB)", inpainting["pasted_psnr"], ""),
        ("inpainting", "PSNR in mask, mean-colour fill (dB)", inpainting["mean_fill_psnr"], ""),
        ("inpainting", "PSNR in mask, smooth (harmonic) fill, no model (dB)", inpainting["harmonic_fill_psnr"], ""),
        ("inpainting", "gain over mean-colour fill (dB)", inpainting["gain_db"], ">= 3"),
        ("inpainting", "gain over smooth fill (dB)", inpainting["gain_over_harmonic_db"], ""),
    ]
    print("| model | measure | value | target |\n| --- | --- | ---: | --- |")
    for model, measure, value, target in rows:
        print(f"| {model} | {measure} | {shown(value)} | {target} |")

    RESULTS.mkdir(exist_ok=True)
    setup = {"date": str(date.today()), "images": args.images, "seed": SEED, "machine": platform.processor()}
    results = {"setup": setup, "zero_shot": zero_shot, "detection": detection, "inpainting": inpainting}
    (RESULTS / "demo_models.json").write_text(json.dumps(results, indent=2))
    if args.update_cards:
        for folder in ("zero-shot", "detection", "inpainting"):
            mine = [(measure, shown(value)) for model, measure, value, _ in rows if model == folder]
            update_card(args.models / folder, mine)


if __name__ == "__main__":
    main()
