"""Retrieval quality of the default zero-shot model on a shapes-world collection whose captions are known.

The collection (2,000 images with one object each by default) is written as PNG files and embedded with
`vitlm.retrieval.embed`, as a user would; then, through the saved index:

- text -> image: every distinct caption ("a blue star") is a query; recall@k is the fraction of queries whose top k
  holds an image with that caption, precision@k the fraction of the top k that has it (chance: one over the number
  of captions);
- image -> image: every image is a query (itself left out); the same measures, with its own caption;
- exact vs approximate: HNSW and IVF indexes over the same embeddings, their recall@10 against exact search, and
  text -> image precision@10 through them.

The collection mixes the validation split (80%: shape x colour pairs seen in training, new images) and the test
split (20%: every object one of the 8 pairs the model never saw), so all 48 captions occur; text queries are reported
for the seen and the held-out captions apart (the latter measure compositional generalization).

    python benchmarks/retrieval.py [--num-images 2000]

Prints a markdown table and writes benchmarks/results/retrieval.json.
"""

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
KS = (1, 5, 10)
PARTS = (("validation", 7, 0.8), ("test", 8, 0.2))  # (split, seed, share of the collection)


def write_collection(folder: Path, count: int) -> dict[str, str]:
    """PNG files of `count` one-object images from each split's share; {file name: caption}."""
    from datasets import Image

    from vitlm.data.shapes import generate

    folder.mkdir(parents=True)
    captions = {}
    for split, seed, share in PARTS:
        shapes = generate(round(count * share), seed=seed, split=split, max_objects=1)
        images = shapes.cast_column("image", Image(decode=False))["image"]
        for index, (image, caption) in enumerate(zip(images, shapes["caption"])):
            name = f"{split}-{index:05d}.png"
            (folder / name).write_bytes(image["bytes"])
            captions[name] = caption
    return captions


def measures(found: list[list[str]], wanted: list[str], ks=KS) -> dict:
    """recall@k and precision@k of ranked caption lists against the wanted captions."""
    result = {}
    for k in ks:
        result[f"recall@{k}"] = float(np.mean([want in got[:k] for got, want in zip(found, wanted)]))
        result[f"precision@{k}"] = float(np.mean([got[:k].count(want) / k for got, want in zip(found, wanted)]))
    return result


def evaluate(count: int, scratch: Path) -> dict:
    from vitlm.data.shapes import HELD_OUT, caption_variants
    from vitlm.retrieval import Collection, embed, store
    from vitlm.retrieval.index import build_index

    captions = write_collection(scratch / "images", count)
    start = time.perf_counter()
    out = embed(scratch / "images", scratch / "index", progress=False, device="cpu")
    seconds = time.perf_counter() - start
    collection = Collection(out, device="cpu")
    labels = [captions[i] for i in collection.ids]
    embeddings = np.concatenate([store.read_shard(out / shard["file"])[1] for shard in collection.manifest["shards"]])

    queries = sorted(set(labels))
    held_out = {caption_variants([pair])[0] for pair in HELD_OUT}
    text = np.stack([collection.query_embedding(query) for query in queries]).astype(np.float32)
    _, rows = collection.index.search(text, max(KS))
    found = [[labels[row] for row in ranked] for ranked in rows]
    groups = {"seen": [q not in held_out for q in queries], "held-out": [q in held_out for q in queries]}
    text_results = {
        group: measures([f for f, keep in zip(found, mask) if keep], [q for q, keep in zip(queries, mask) if keep])
        | {"queries": sum(mask)}
        for group, mask in groups.items()
    }

    _, rows = collection.index.search(embeddings, max(KS) + 1)
    neighbours = [[labels[row] for row in ranked if row != query][: max(KS)] for query, ranked in enumerate(rows)]
    image_result = measures(neighbours, labels) | {"queries": len(labels)}

    indexes = {}
    for kind in ("hnsw", "ivf"):
        index, info = build_index(embeddings, kind)
        _, rows = index.search(text, 10)
        precision = measures([[labels[row] for row in ranked] for ranked in rows], queries, (10,))["precision@10"]
        indexes[kind] = {**info, "text_precision@10": precision}
    exact_precision = measures(found, queries, (10,))["precision@10"]
    return {
        "images": len(labels),
        "captions": len(queries),
        "chance_precision": 1 / len(queries),
        "embed_seconds": seconds,
        "text_to_image": text_results,
        "image_to_image": image_result,
        "exact_text_precision@10": exact_precision,
        "approximate": indexes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    args = parser.parse_args()

    from vitlm.cli import markdown_table

    with tempfile.TemporaryDirectory() as scratch:
        result = evaluate(args.num_images, Path(scratch))
    rows = [
        [f"text -> image, {group} captions", values["queries"]]
        + [f"{values[f'recall@{k}']:.3f}" for k in KS]
        + [f"{values[f'precision@{k}']:.3f}" for k in KS]
        for group, values in result["text_to_image"].items()
    ]
    values = result["image_to_image"]
    rows.append(
        ["image -> image (itself left out)", values["queries"]]
        + [f"{values[f'recall@{k}']:.3f}" for k in KS]
        + [f"{values[f'precision@{k}']:.3f}" for k in KS]
    )
    header = ["query", "queries", *(f"recall@{k}" for k in KS), *(f"precision@{k}" for k in KS)]
    print(
        f"Measured {date.today()}: default zero-shot model, {result['images']:,} shapes-world images, "
        f"{result['captions']} captions (chance precision {result['chance_precision']:.3f}), exact index:\n"
    )
    print(markdown_table(header, rows))
    index_rows = [["exact", "1.000", f"{result['exact_text_precision@10']:.3f}"]] + [
        [kind, f"{info['recall_at_10']:.3f}", f"{info['text_precision@10']:.3f}"]
        for kind, info in result["approximate"].items()
    ]
    print("\nIndexes over the same embeddings:\n")
    print(markdown_table(["index", "recall@10 vs exact", "text -> image precision@10"], index_rows))
    RESULTS.mkdir(exist_ok=True)
    payload = {"date": str(date.today()), "num_images": args.num_images, **result}
    (RESULTS / "retrieval.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
