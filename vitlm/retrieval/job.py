"""`embed`: a collection's image embeddings, written as shards, then indexed (see `store.py` for the folder).

The items are cut into shards of `shard_size` in the source's order, and each shard into batches; a shard is
written once all its items are computed. A rerun into the same folder skips the shards already there, so a killed
job continues where it stopped, and, the batches being the same, ends with the same files as an uninterrupted run.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from . import store
from .checks import check_engine, positive
from .engine import DEFAULT_MODEL, image_embeddings, load_model, model_name, pixel_shape, run_local
from .index import build_index, save_index
from .sources import open_source


def check_job(out_dir: Path, job: dict):
    """Claim `out_dir` for `job`: a new or empty folder, or one holding the same job (resumed)."""
    path = out_dir / store.JOB
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != job:
            changed = sorted(key for key in {*job, *existing} if job.get(key) != existing.get(key))
            raise ValueError(
                f"{out_dir} holds another embedding job (different {', '.join(changed)}); pick another output "
                "folder, or delete that one to start again"
            )
        return
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not an embedding job's folder; pick a new or empty folder")
    store.write_json(path, job)


def embed(
    source,
    out_dir,
    model: str = DEFAULT_MODEL,
    engine: str = "local",
    batch_size: int = 256,
    shard_size: int = 4096,
    index: str = "auto",
    num_workers: int | None = None,
    device: str | None = None,
    kind: str = "auto",
    image_column: str = "image",
    id_column: str | None = None,
    split: str = "train",
    address: str | None = None,
    num_cpus: int | None = None,
    num_actors: int = 1,
    gpus_per_actor: float | None = None,
    progress: bool = True,
) -> Path:
    """Embed every image of `source` (a folder, a `datasets` data set or parquet files; see `open_source`) with the
    dual encoder `model` into `out_dir`, build the index and return `out_dir`. `engine="ray"` runs the same job on
    Ray Data (a local runtime with `num_cpus`, or the cluster at `address`; `num_actors` model replicas with
    `gpus_per_actor` GPUs each). Images that fail to decode are listed in `errors.csv` and left out."""
    check_engine(engine)
    # the shards' writer, loaded before the embedding starts: a missing install fails at once, and the libraries it
    # maps (about 100 MB) do not first count when the first shard is written, in the middle of the job
    import pyarrow.parquet  # noqa: F401

    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("num_actors", num_actors)):
        positive(name, value)
    out_dir = Path(out_dir)
    collection = open_source(source, kind, image_column, split, id_column)
    if not len(collection):
        raise ValueError(f"{source} holds no images")
    # Ray's actors take a copy of the model and move it to their own GPU
    dual_encoder, processor = load_model(model, "cpu" if engine == "ray" else device)
    pixel_shape(processor.image_processor)
    job = {
        "model": model_name(model),
        "source": collection.description,
        "items": len(collection),
        "ids_sha256": collection.fingerprint(),
        "shard_size": shard_size,
        "batch_size": batch_size,
    }
    check_job(out_dir, job)

    shards = range(math.ceil(len(collection) / shard_size))
    pending = [shard for shard in shards if not store.shard_path(out_dir, shard).is_file()]
    batches = [
        list(range(start, min(start + batch_size, (shard + 1) * shard_size, len(collection))))
        for shard in pending
        for start in range(shard * shard_size, min((shard + 1) * shard_size, len(collection)), batch_size)
    ]
    if engine == "local":
        results = run_local(
            collection,
            processor.image_processor,
            batches,
            lambda pixels: image_embeddings(dual_encoder, pixels),
            num_workers,
        )
    else:
        from .ray_engine import run_ray

        results = run_ray(
            collection,
            processor.image_processor,
            dual_encoder,
            batches,
            address,
            num_cpus,
            num_actors,
            gpus_per_actor,
        )
    dim = dual_encoder.config.projection_dim
    _write_shards(out_dir, collection, shard_size, dim, pending, results, progress)
    return finish(out_dir, job, dim, len(shards), index)


def _write_shards(out_dir: Path, collection, shard_size: int, dim: int, pending: list[int], results, progress: bool):
    """Collect each pending shard's rows from the engine's batches (in any order) and write it once complete."""
    from tqdm.auto import tqdm

    sizes = {shard: min(shard_size, len(collection) - shard * shard_size) for shard in pending}
    rows = {shard: [] for shard in pending}  # [(position, embedding or error message)]
    bar = tqdm(total=sum(sizes.values()), desc="Embedding", unit="image", disable=not progress, file=sys.stderr)
    with bar:
        for result in results:
            for position, embedding in zip(result.positions.tolist(), result.outputs):
                rows[position // shard_size].append((position, embedding))
            for position, error in result.errors:
                rows[position // shard_size].append((position, error))
            touched = {position // shard_size for position in result.positions.tolist()}
            touched |= {position // shard_size for position, _ in result.errors}
            for shard in touched:
                if len(rows[shard]) == sizes[shard]:
                    _write_shard(out_dir, collection, shard, dim, rows.pop(shard))
            bar.update(len(result.positions) + len(result.errors))
    if rows:  # an engine that ends early must not leave a shard out silently
        raise RuntimeError(f"the engine returned no results for shards {sorted(rows)}")


def _write_shard(out_dir: Path, collection, shard: int, dim: int, rows: list):
    rows.sort(key=lambda row: row[0])
    good = [(position, value) for position, value in rows if not isinstance(value, str)]
    errors = [(collection.ids[position], value) for position, value in rows if isinstance(value, str)]
    embeddings = np.stack([value for _, value in good]) if good else np.zeros((0, dim), np.float32)
    store.write_shard(
        store.shard_path(out_dir, shard), [collection.ids[position] for position, _ in good], embeddings, errors
    )


def finish(out_dir: Path, job: dict, dim: int, num_shards: int, index_kind: str) -> Path:
    """Index every shard's rows and write the errors file and the manifest (last)."""
    ids, parts, errors, shard_rows = [], [], [], []
    for shard in range(num_shards):
        shard_ids, embeddings, shard_errors = store.read_shard(store.shard_path(out_dir, shard))
        ids += shard_ids
        parts.append(embeddings.reshape(-1, dim))
        errors += shard_errors
        shard_rows.append(len(shard_ids))
    store.write_text(out_dir / store.ERRORS, store.errors_csv(errors))
    if not ids:
        raise ValueError(f"no image of the collection could be decoded: see {out_dir / store.ERRORS}")
    index, index_info = build_index(np.concatenate(parts), index_kind)
    save_index(index, out_dir / store.INDEX)
    manifest = {
        "format": store.FORMAT,
        "model": job["model"],
        "embedding_dim": dim,
        "normalized": True,
        "source": job["source"],
        "counts": {"items": job["items"], "embedded": len(ids), "errors": len(errors)},
        "shards": [
            {"file": store.shard_path(out_dir, shard).relative_to(out_dir).as_posix(), "rows": rows}
            for shard, rows in enumerate(shard_rows)
        ],
        "index": {"file": store.INDEX, **index_info},
        "errors_file": store.ERRORS,
        "torch": torch.__version__,
    }
    store.write_json(out_dir / store.MANIFEST, manifest)
    return out_dir
