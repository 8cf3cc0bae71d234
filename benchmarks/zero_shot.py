"""Zero-shot classification speed: vitlm's cached classifier against transformers' zero-shot pipeline, same weights.

transformers' `pipeline("zero-shot-image-classification")` encodes every candidate label's prompt again for every
image; vitlm's `VitlmDualEncoderForImageClassification` encodes the labels once and then runs only the image tower,
so its cost per image stays flat as the label count grows. Both use one CLIP ViT-B/32 (random weights: speed does
not depend on them), and their probabilities are checked equal before timing. vitlm's speed is the best of `--rounds`
passes over all images; the pipeline, minutes per pass at 1000 labels, gets one pass over as many images as keep it
to about 8000 label encodings.

    python benchmarks/zero_shot.py [--labels 10 100 1000] [--images 8]

Prints a markdown table and writes benchmarks/results/zero_shot.json.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, pipeline

from vitlm import VitlmDualEncoderForImageClassification
from vitlm.clip_bpe import clip_tokenizer
from vitlm.convert import load
from vitlm.convert.to_transformers import to_clip_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = "a photo of a {}."


def label_names(count: int) -> list[str]:
    words = ["red", "green", "blue", "striped", "spotted", "tiny", "giant", "wooden", "metal", "glass"]
    things = ["cat", "dog", "car", "chair", "boat", "lamp", "bird", "cup", "tree", "house"]
    names = [f"{a} {b} {c}" for a in words for b in things for c in things]
    return names[:count]


def classify(classifier, image_processor, images):
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return classifier(pixel_values).logits.softmax(-1)


def images_per_second(run, images, rounds: int) -> float:
    run(images[:1])  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return len(images) / min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(args.images)]

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        source = CLIPModel(CLIPConfig()).eval()
        CLIPProcessor(CLIPImageProcessor(), to_clip_tokenizer(clip_tokenizer())).save_pretrained(folder)
        source.save_pretrained(folder)
        reference = pipeline("zero-shot-image-classification", model=folder)
        model, processor = load(f"hf:{folder}")

    results = {}
    for count in tqdm(args.labels, desc="label counts", unit="run"):
        labels = label_names(count)
        start = time.perf_counter()
        classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(
            model, processor.tokenizer, labels, [TEMPLATE]
        )
        caching_seconds = time.perf_counter() - start

        ours = partial(classify, classifier, processor.image_processor)
        theirs = partial(reference, candidate_labels=labels, hypothesis_template=TEMPLATE)
        expected = theirs(images[:1])[0]
        probabilities = ours(images[:1])[0]
        max_diff = max(abs(probabilities[labels.index(r["label"])].item() - r["score"]) for r in expected)
        if max_diff > 1e-4:
            raise RuntimeError(
                f"{count} labels: vitlm and the pipeline disagree (max probability diff {max_diff:.2e})"
            )
        reference_images = images[: max(1, min(len(images), 8000 // count))]  # keep the slow side to minutes
        vitlm_speed = images_per_second(ours, images, args.rounds)
        transformers_speed = images_per_second(theirs, reference_images, 1)
        results[count] = {
            "vitlm_images_per_s": vitlm_speed,
            "transformers_pipeline_images_per_s": transformers_speed,
            "speedup": vitlm_speed / transformers_speed,
            "vitlm_label_caching_s": caching_seconds,
            "max_abs_probability_diff": max_diff,
        }

    setup = (
        f"{date.today()}, {platform.processor() or 'CPU'} ({os.cpu_count()} cores), torch {torch.__version__}, fp32"
    )
    lines = [
        "| labels | vitlm images/s | transformers pipeline images/s | speed-up | vitlm label caching (s, once) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count, row in results.items():
        lines.append(
            f"| {count} | {row['vitlm_images_per_s']:.2f} | {row['transformers_pipeline_images_per_s']:.3f} | "
            f"{row['speedup']:.1f}x | {row['vitlm_label_caching_s']:.1f} |"
        )
    print(setup)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zero_shot.json").write_text(json.dumps({"setup": setup, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
