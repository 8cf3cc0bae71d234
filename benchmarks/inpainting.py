"""Does inpainting complete what the mask hides? The synthesis head, the MAE head and a model-free fill on occluded
objects.

Each of 1024 shapes-world test images (a seed no training run used) gets a mask over part of its topmost object,
the one no other object covers: the pixels beyond a random straight cut through the object, within its bounding box
widened by a margin, the cut placed so that the mask hides 30-70% of the object's area and crosses its edge (object
and background pixels both hidden). Three fills are compared on the same images and masks:

- synthesis: the synthesis inpainting head (`VitlmViTForInpaintingSynthesis.inpaint`, the default model's sampling
  settings), `--samples` completions per image (one call, seeded by the image's index); its figures are the mean
  over them;
- MAE: the masked-autoencoder head (the demo's earlier default model), blended as `post_process_inpainting` does;
- harmonic: no model, the smoothest surface through the pixels around the mask (`poisson_fill` without a guide).

Measures, per image, then averaged with a 95% interval (normal approximation over the 1024 images; the gains over
the harmonic fill are paired per image):

- PSNR inside the mask (dB);
- object completion IoU: the completed object is every pixel of the filled image, within the object's bounding box
  widened by the margin, whose colour lies within `COLOUR_TOLERANCE` of the object's colour (the mean of its pixels
  the mask leaves visible, which any method sees); its IoU with the object's true mask. The same extraction for every
  method; the visible part of the object counts for all of them alike.
- diversity of the synthesis head: the mean absolute difference (0-255) inside the mask between pairs of its
  samples of one image, averaged over the images (> 0: different seeds complete differently), and the number of
  pixels outside the mask that differ from the input in any sample (must be 0).

    python benchmarks/inpainting.py [--images 1024] [--samples 4] [--update-cards]

Prints a markdown table, writes benchmarks/results/inpainting.json and, with --update-cards, the figures into the
synthesis model's card.
"""

import argparse
import itertools
import json
import platform
import re
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForMaskedImageModeling

import vitlm  # noqa: F401  (registers the vitlm models with the Auto classes)
from vitlm.data.shapes import generate
from vitlm.models.inpainting_utils import poisson_fill

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ROOT / "vitlm" / "demo" / "default_models"
SEED = 2121  # training used seeds 0 and 1, benchmarks/demo_models.py 2026
MARGIN = 3  # pixels around the object's bounding box: the mask reaches past its edge, the extraction looks there
COLOUR_TOLERANCE = 40.0  # RGB distance: shapes-world colours are >= 95 apart, an object's shading within +-12
CARD_SECTION = "## Completing occluded objects"


def psnr(predicted: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    error = (predicted[mask].astype(np.float64) - target[mask].astype(np.float64)) / 255
    return float(10 * np.log10(1 / max(np.mean(error**2), 1e-10)))


def region(object_mask: np.ndarray) -> tuple[slice, slice]:
    """The object's bounding box widened by `MARGIN` pixels, clipped to the image."""
    rows, cols = np.flatnonzero(object_mask.any(1)), np.flatnonzero(object_mask.any(0))
    height, width = object_mask.shape
    return (
        slice(max(rows[0] - MARGIN, 0), min(rows[-1] + 1 + MARGIN, height)),
        slice(max(cols[0] - MARGIN, 0), min(cols[-1] + 1 + MARGIN, width)),
    )


def occluding_mask(rng: np.random.Generator, object_mask: np.ndarray) -> np.ndarray | None:
    """A mask hiding 30-70% of the object's area and some background beside it: the side of a random straight cut
    through the object, within its widened bounding box. None when the drawn cut misses those bounds."""
    ys, xs = np.mgrid[: object_mask.shape[0], : object_mask.shape[1]]
    angle = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    share = rng.uniform(0.3, 0.7)
    cut = np.quantile(along[object_mask], 1 - share)
    inside = np.zeros_like(object_mask)
    inside[region(object_mask)] = True
    mask = inside & (along > cut)
    hidden = (mask & object_mask).sum() / object_mask.sum()
    return mask if 0.3 <= hidden <= 0.7 and (mask & ~object_mask).any() else None


def completion_iou(filled: np.ndarray, visible: np.ndarray, object_mask: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the object as the filled image shows it (pixels of its colour within its widened bounding box) with the
    object's true mask."""
    colour = visible[object_mask & ~mask].astype(np.float64).mean(0)
    box = region(object_mask)
    distance = np.linalg.norm(filled[box].astype(np.float64) - colour, axis=-1)
    shown, truth = distance <= COLOUR_TOLERANCE, object_mask[box]
    return float((shown & truth).sum() / (shown | truth).sum())


def interval(values: np.ndarray) -> tuple[float, float]:
    """95% interval of the mean of `values` (normal approximation)."""
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


@torch.no_grad()
def evaluate(
    synthesis_folder: Path,
    mae_folder: Path,
    num_images: int,
    num_samples: int,
    steps=None,
    temperature=None,
    seed: int = SEED,
) -> dict:
    synthesis = AutoModelForMaskedImageModeling.from_pretrained(synthesis_folder).float().eval()
    synthesis_processor = AutoImageProcessor.from_pretrained(synthesis_folder)
    mae = AutoModelForMaskedImageModeling.from_pretrained(mae_folder).float().eval()
    mae_processor = AutoImageProcessor.from_pretrained(mae_folder)
    data = generate(num_images, seed=seed, split="test")
    rng = np.random.default_rng(seed)
    scores = {name: {"psnr": [], "iou": []} for name in ("synthesis", "mae", "harmonic")}
    differences, changed_outside, hidden_shares = [], 0, []
    for index, example in enumerate(tqdm(data, desc="inpainting")):
        image = example["image"]
        pixels = np.asarray(image.convert("RGB"))
        object_mask = np.asarray(example["masks"][-1].convert("L")) > 0  # the topmost object: nothing covers it
        mask = None
        while mask is None:
            mask = occluding_mask(rng, object_mask)
        hidden_shares.append((mask & object_mask).sum() / object_mask.sum())

        samples = synthesis.inpaint(
            image, mask, synthesis_processor, num_samples, seed=index, steps=steps, temperature=temperature
        )
        samples = [np.asarray(sample) for sample in samples]
        inputs = mae_processor.prepare_inpainting(image, mask, mae.config)
        mae_fill = mae_processor.post_process_inpainting(mae(**inputs), inputs["pixel_values"], image, mask)
        harmonic = poisson_fill(torch.from_numpy(pixels.copy()).permute(2, 0, 1), torch.from_numpy(mask))
        harmonic = harmonic.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()

        for name, fills in (("synthesis", samples), ("mae", [np.asarray(mae_fill)]), ("harmonic", [harmonic])):
            scores[name]["psnr"].append(np.mean([psnr(fill, pixels, mask) for fill in fills]))
            scores[name]["iou"].append(np.mean([completion_iou(fill, pixels, object_mask, mask) for fill in fills]))
        changed_outside += sum(int((sample[~mask] != pixels[~mask]).sum()) for sample in samples)
        pairs = itertools.combinations(samples, 2)
        differences.append(
            np.mean([np.abs(a[mask].astype(np.int16) - b[mask].astype(np.int16)).mean() for a, b in pairs])
            if num_samples > 1
            else 0.0
        )

    scores = {name: {k: np.asarray(v) for k, v in measures.items()} for name, measures in scores.items()}
    results = {
        name: {
            "psnr": float(measures["psnr"].mean()),
            "psnr_interval": interval(measures["psnr"]),
            "iou": float(measures["iou"].mean()),
            "iou_interval": interval(measures["iou"]),
        }
        for name, measures in scores.items()
    }
    for name in ("synthesis", "mae"):
        psnr_gain = scores[name]["psnr"] - scores["harmonic"]["psnr"]
        iou_gain = scores[name]["iou"] - scores["harmonic"]["iou"]
        results[name].update(
            psnr_gain_over_harmonic=float(psnr_gain.mean()),
            psnr_gain_interval=interval(psnr_gain),
            iou_gain_over_harmonic=float(iou_gain.mean()),
            iou_gain_interval=interval(iou_gain),
        )
    differences = np.asarray(differences)
    results["diversity"] = {
        "samples_per_image": num_samples,
        "mean_pairwise_difference_in_mask": float(differences.mean()),
        "images_with_differing_samples": float((differences > 0).mean()),
        "pixels_changed_outside_mask": changed_outside,
    }
    results["masks"] = {"hidden_object_share_mean": float(np.mean(hidden_shares))}
    return results


def shown(value) -> str:
    return "{:.3f} to {:.3f}".format(*value) if isinstance(value, tuple) else f"{value:.3f}"


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(measure, value, target) rows of the markdown table."""
    rows = []
    for name, title in (
        ("synthesis", "synthesis head"),
        ("mae", "MAE head"),
        ("harmonic", "harmonic fill (no model)"),
    ):
        measures = results[name]
        rows.append(
            (f"PSNR in mask, {title} (dB)", f"{shown(measures['psnr'])} ({shown(measures['psnr_interval'])})", "")
        )
        rows.append((f"completion IoU, {title}", f"{shown(measures['iou'])} ({shown(measures['iou_interval'])})", ""))
    for name, title in (("synthesis", "synthesis head"), ("mae", "MAE head")):
        measures = results[name]
        target = (">= +3", ">= +0.15") if name == "synthesis" else ("", "")
        gain = measures["psnr_gain_over_harmonic"], measures["psnr_gain_interval"]
        rows.append((f"PSNR gain over harmonic, {title} (dB)", f"{gain[0]:+.3f} ({shown(gain[1])})", target[0]))
        gain = measures["iou_gain_over_harmonic"], measures["iou_gain_interval"]
        rows.append((f"IoU gain over harmonic, {title}", f"{gain[0]:+.3f} ({shown(gain[1])})", target[1]))
    diversity = results["diversity"]
    rows.append(
        (
            f"mean pairwise difference in mask, {diversity['samples_per_image']} seeds (0-255)",
            shown(diversity["mean_pairwise_difference_in_mask"]),
            "> 0",
        )
    )
    rows.append(("pixels outside the mask changed, all samples", str(diversity["pixels_changed_outside_mask"]), "0"))
    return rows


def update_card(folder: Path, rows, num_images: int):
    """Replace (or append) the card's section with the table."""
    card = folder / "README.md"
    text = card.read_text()
    table = "\n".join(f"| {measure} | {value} | {target} |" for measure, value, target in rows)
    section = (
        f"{CARD_SECTION}\n\nMeasured by `python benchmarks/inpainting.py` on {num_images} shapes-world test images "
        f"drawn from a seed no training run used, each with a mask over 30-70% of one object crossing its edge "
        f"({date.today()}; 95% intervals in brackets).\n\n| measure | value (95% interval) | target |\n"
        f"| --- | --- | --- |\n{table}\n"
    )
    pattern = re.compile(rf"{re.escape(CARD_SECTION)}\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section, text) if CARD_SECTION in text else text.rstrip() + "\n\n" + section
    card.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthesis", type=Path, default=MODELS / "inpainting-synthesis")
    parser.add_argument("--mae", type=Path, default=MODELS / "inpainting")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=4, help="synthesis completions per image (seeds)")
    parser.add_argument("--steps", type=int, help="synthesis decoding rounds (default: the model's)")
    parser.add_argument("--temperature", type=float, help="synthesis sampling temperature (default: the model's)")
    parser.add_argument(
        "--seed", type=int, default=SEED, help="of the images and masks (another one to tune sampling settings on)"
    )
    parser.add_argument("--update-cards", action="store_true", help="write the table into the synthesis card")
    args = parser.parse_args()
    results = evaluate(args.synthesis, args.mae, args.images, args.samples, args.steps, args.temperature, args.seed)
    rows = table_rows(results)
    print("| measure | value (95% interval) | target |\n| --- | --- | --- |")
    for measure, value, target in rows:
        print(f"| {measure} | {value} | {target} |")
    RESULTS.mkdir(exist_ok=True)
    setup = {
        "date": str(date.today()),
        "images": args.images,
        "samples": args.samples,
        "steps": args.steps,
        "temperature": args.temperature,
        "seed": args.seed,
        "machine": platform.processor(),
    }
    (RESULTS / "inpainting.json").write_text(json.dumps({"setup": setup, **results}, indent=2))
    if args.update_cards:
        update_card(args.synthesis, rows, args.images)


if __name__ == "__main__":
    main()
