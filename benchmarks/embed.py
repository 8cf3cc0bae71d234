"""Embedding throughput: images/s from encoded image files on disk to a written nearest-neighbour index, and peak
memory, for vitlm's single-process engine, vitlm on a local Ray runtime with 2 CPUs, and the loop users write today
(an open_clip model and a torch DataLoader, embeddings gathered in memory, then a faiss index). Same weights in all
three: a small open_clip ViT CLIP with random weights, converted to vitlm (the embeddings are checked equal).

Each contender runs in a fresh process, so that imports and caches do not carry over; the time is the job's, from
loading the model to the written index (interpreter start and imports excluded). Peak memory is each process's
resident-set high-water mark (the kernel's VmHWM, exact, where sampling the resident set would catch a longer run's
peaks more often): the job's own process's, with the time it last rose (from the process's start, imports included),
and the sum over the process and its children (DataLoader workers, Ray's processes), which counts the pages they
share once per process.
Sizes (default 2,000 and 20,000 shapes-world PNGs) show whether memory stays flat as the collection grows.

    python benchmarks/embed.py [--sizes 2000,20000] [--batch-size 256] [--workers 2]

Prints a markdown table and writes benchmarks/results/embed.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("vitlm", "vitlm-ray", "open_clip")
# a CLIP small enough for many images on a CPU, at the shapes world's 64 pixels
VISION = dict(image_size=64, patch_size=8, width=256, layers=6, head_width=64)
TEXT = dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=4)
EMBED_DIM = 128
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def build_models(folder: Path) -> tuple[Path, Path]:
    """The open_clip model's weights (safetensors) and the same model converted to a vitlm folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from vitlm.convert import save
    from vitlm.convert.from_open_clip import convert_model

    torch.manual_seed(0)
    model = open_clip.CLIP(EMBED_DIM, VISION, TEXT).eval()
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg())
    weights = folder / "open_clip.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, weights)
    vitlm_folder = folder / "vitlm-model"
    save(convert_model(model, open_clip.get_tokenizer("ViT-B-32")), vitlm_folder)
    return weights, vitlm_folder


def preprocess_cfg() -> dict:
    return dict(size=VISION["image_size"], mode="RGB", mean=MEAN, std=STD, interpolation="bicubic")


def write_images(folder: Path, count: int):
    """`count` shapes-world PNGs (as encoded by the generator), 1,000 per subfolder."""
    from datasets import Image

    from vitlm.data.shapes import generate

    for start in range(0, count, 1000):
        shapes = generate(min(1000, count - start), seed=start + 1, split="validation")
        chunk = folder / f"{start // 1000:03d}"
        chunk.mkdir(parents=True)
        for index, image in enumerate(shapes.cast_column("image", Image(decode=False))["image"]):
            (chunk / f"{index:04d}.png").write_bytes(image["bytes"])


class Files:
    """The baseline's data set: the image files, opened with PIL and transformed by open_clip's preprocessing."""

    def __init__(self, root: Path, transform):
        self.paths = sorted(path for path in root.rglob("*.png"))
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        import PIL.Image

        with PIL.Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def baseline(images: Path, weights: Path, out: Path, batch_size: int, workers: int):
    """What users write today: open_clip model, DataLoader, embeddings in a list, then a faiss index."""
    import faiss
    import numpy as np
    import open_clip
    import torch
    from safetensors.torch import load_file

    model = open_clip.CLIP(EMBED_DIM, VISION, TEXT)
    model.load_state_dict(load_file(weights))
    model.eval()
    transform = open_clip.image_transform(
        VISION["image_size"], is_train=False, mean=MEAN, std=STD, interpolation="bicubic"
    )
    loader = torch.utils.data.DataLoader(Files(images, transform), batch_size=batch_size, num_workers=workers)
    embeddings = []
    with torch.no_grad():
        for pixels in loader:
            embeddings.append(torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy())
    embeddings = np.concatenate(embeddings)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    out.mkdir(parents=True)
    faiss.write_index(index, str(out / "index.faiss"))
    np.save(out / "embeddings.npy", embeddings)


def worker(args):
    """One contender's run, in this (fresh) process: prints its seconds as JSON."""
    import importlib

    images, out = Path(args.images), Path(args.out)
    # the libraries each contender's job uses, imported before the clock starts (their import time is the cold-start
    # benchmark's subject, not this one's)
    libraries = {
        "open_clip": ["faiss", "open_clip", "safetensors.torch"],
        "vitlm": ["faiss", "pyarrow.parquet", "vitlm.retrieval"],
        "vitlm-ray": ["faiss", "pyarrow.parquet", "vitlm.retrieval", "ray", "ray.data"],
    }
    for library in libraries[args.worker]:
        importlib.import_module(library)
    start = time.perf_counter()
    if args.worker == "open_clip":
        baseline(images, Path(args.weights), out, args.batch_size, args.workers)
    else:
        from vitlm.retrieval import embed

        ray = args.worker == "vitlm-ray"
        embed(
            images,
            out,
            model=args.model,
            engine="ray" if ray else "local",
            num_cpus=2 if ray else None,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device="cpu",
            progress=False,
        )
    print(json.dumps({"seconds": time.perf_counter() - start}))


def high_water_marks(pid: int, marks: dict[int, int]):
    """Record in `marks` the peak resident set (the kernel's exact high-water mark, VmHWM, not a sample) of the process
    and of each of its children (DataLoader workers, Ray's processes) as they are now."""
    import psutil

    try:
        process = psutil.Process(pid)
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in members:
        try:
            status = Path(f"/proc/{member.pid}/status").read_text()
        except OSError:  # exited, or not Linux
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                marks[member.pid] = max(marks.get(member.pid, 0), int(line.split()[1]) * 1024)


def measure(contender: str, images: Path, out: Path, weights: Path, model: Path, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        contender,
        "--images",
        str(images),
        "--out",
        str(out),
        "--weights",
        str(weights),
        "--model",
        str(model),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    marks, done, started = {}, threading.Event(), time.perf_counter()
    main_peak_reached = [0.0]  # when the job's own high-water mark last rose: memory flat after it

    def poll():
        while not done.is_set():
            before = marks.get(process.pid)
            high_water_marks(process.pid, marks)
            if marks.get(process.pid) != before:
                main_peak_reached[0] = time.perf_counter() - started
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    poller.join()
    if process.returncode:
        raise SystemExit(f"{contender} failed with status {process.returncode}")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return {
        "seconds": seconds,
        "peak_rss_mib": sum(marks.values()) / 2**20,
        "peak_rss_main_mib": marks.get(process.pid, 0) / 2**20,
        "main_peak_reached_s": main_peak_reached[0],
        "wall_s": wall,
    }


def embeddings_of(contender: str, out: Path):
    import numpy as np

    if contender == "open_clip":
        return np.load(out / "embeddings.npy")
    from vitlm.retrieval import store

    manifest = store.read_manifest(out)
    return np.concatenate([store.read_shard(out / shard["file"])[1] for shard in manifest["shards"]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="comma-separated collection sizes")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (vitlm and the baseline)")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    for name in ("--images", "--out", "--weights", "--model"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from vitlm.cli import markdown_table

    sizes = [int(size) for size in args.sizes.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        weights, model = build_models(scratch)
        for size in sizes:
            images = scratch / f"images-{size}"
            write_images(images, size)
            measured = {}
            for contender in CONTENDERS:
                out = scratch / f"out-{contender}-{size}"
                measured[contender] = measure(contender, images, out, weights, model, args)
                measured[contender]["embeddings"] = embeddings_of(contender, out)
            reference = measured["open_clip"]
            reference_embeddings = reference["embeddings"]
            for contender in CONTENDERS:
                result = measured[contender]
                difference = float(abs(result.pop("embeddings") - reference_embeddings).max())
                speed = size / result["seconds"]
                ratio = speed / (size / reference["seconds"])
                results.append(
                    {
                        "contender": contender,
                        "images": size,
                        "images_per_s": speed,
                        "vs_open_clip": ratio,
                        "max_abs_diff_vs_open_clip": difference,
                        **result,
                    }
                )
                rows.append(
                    [
                        contender,
                        f"{size:,}",
                        f"{speed:.1f}",
                        f"{ratio:.2f}x",
                        f"{result['peak_rss_main_mib']:.0f}",
                        f"{result['main_peak_reached_s']:.0f} of {result['wall_s']:.0f}",
                        f"{result['peak_rss_mib']:.0f}",
                        f"{difference:.1e}",
                    ]
                )
    header = [
        "contender",
        "images",
        "images/s",
        "vs open_clip loop",
        "peak RSS MiB, the job's process",
        "its peak reached at (s of the process's wall s)",
        "peak RSS MiB, summed",
        "max abs diff",
    ]
    print(
        f"Measured {date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, batch {args.batch_size}, "
        f"{args.workers} DataLoader workers:\n"
    )
    print(markdown_table(header, rows))
    RESULTS.mkdir(exist_ok=True)
    settings = {"batch_size": args.batch_size, "workers": args.workers, "vision": VISION, "date": str(date.today())}
    (RESULTS / "embed.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
