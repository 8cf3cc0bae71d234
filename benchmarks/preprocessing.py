"""Image-processor throughput: vitlm's `VitlmImageProcessor` against transformers' `CLIPImageProcessor`, same inputs.

Inputs: a batch of 640x480 photos-like RGB images (smooth gradients and noise), given as PIL images and as JPEG file
paths, turned into CLIP's 224x224 `pixel_values` (resize the short side to 224 bicubic, center crop, rescale,
normalize). transformers picks its own backend (`AutoImageProcessor` / `CLIPImageProcessor` default; torchvision's
when installed); both run in turn, round after round, and the median is reported. Before timing, the two outputs are
compared (they differ only by resampling implementation and crop rounding).

    python benchmarks/preprocessing.py [--rounds 10] [--batch-size 32]

Prints a markdown table and writes benchmarks/results/preprocessing.json.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import PIL.Image
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def make_images(count: int, width: int = 640, height: int = 480, seed: int = 0) -> list[PIL.Image.Image]:
    """Images with a photo's mix of smooth regions and texture (JPEG size and decoding cost like a photo's)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([np.sin(x / 90 + p) * np.cos(y / 70 - p) for p in phase], axis=-1) * 90 + 128
        noise = rng.normal(0, 12, (height, width, 3))
        images.append(PIL.Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return images


def processors():
    from transformers import CLIPImageProcessor

    from vitlm import VitlmImageProcessor

    return {"vitlm": VitlmImageProcessor(), "transformers CLIPImageProcessor": CLIPImageProcessor()}


def time_inputs(processors: dict, inputs: list, rounds: int) -> dict[str, float]:
    """Median seconds per batch for each processor, contenders in turn every round."""
    times = {name: [] for name in processors}
    for processor in processors.values():  # warm-up
        processor(inputs, return_tensors="pt")
    for _ in range(rounds):
        for name, processor in processors.items():
            start = time.perf_counter()
            processor(inputs, return_tensors="pt")
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vitlm.cli import markdown_table

    contenders = processors()
    images = make_images(args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, image in enumerate(images):
            paths.append(str(Path(folder) / f"{index}.jpg"))
            image.save(paths[-1], quality=90)
        outputs = {name: p(images, return_tensors="pt")["pixel_values"] for name, p in contenders.items()}
        ours, theirs = outputs.values()
        difference = (ours - theirs).abs()
        timings = {
            "PIL images": time_inputs(contenders, images, args.rounds),
            "file paths": time_inputs(contenders, paths, args.rounds),
        }
    rows, results = [], {}
    for kind, seconds in timings.items():
        fastest_other = min(v for k, v in seconds.items() if k != "vitlm")
        for name, value in seconds.items():
            throughput = args.batch_size / value
            ratio = fastest_other / seconds["vitlm"] if name == "vitlm" else None
            rows.append([kind, name, f"{throughput:.0f}", f"{1000 * value:.1f}", f"{ratio:.2f}x" if ratio else ""])
            results.setdefault(kind, {})[name] = {"images_per_s": throughput, "ms_per_batch": 1000 * value}
    header = ["input", "processor", "images/s", "ms per batch", "vitlm vs transformers"]
    setup = (
        f"batch {args.batch_size} of 640x480 RGB -> 224x224, {args.rounds} rounds (median), torch threads "
        f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}, {date.today()}; "
        f"outputs differ by at most {difference.max():.3f} (mean {difference.mean():.4f}) in normalized units"
    )
    print(markdown_table(header, rows))
    print(setup)
    RESULTS.mkdir(exist_ok=True)
    record = {"setup": setup, "results": results, "max_abs_difference": float(difference.max())}
    (RESULTS / "preprocessing.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
