"""What an embedding job writes, and how it is read back.

    OUT/job.json                 what the job embeds (model, source, shard size, the ids' hash): a rerun must match
    OUT/shards/shard-00000.parquet  one per `shard_size` items: columns `id` and `embedding` (float32, normalized);
                                 the items that failed to decode in the file's metadata
    OUT/index.faiss              the nearest-neighbour index over every shard's rows, in shard order
    OUT/errors.csv               id,error for every item that failed to decode
    OUT/manifest.json            model, dimensions, counts, index and its recall: written last, so a folder with a
                                 manifest is complete

Every file is written under a temporary name and renamed into place, so a killed job leaves whole files only (and
temporary ones, which the next run ignores and replaces).
"""

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
JOB = "job.json"
INDEX = "index.faiss"
ERRORS = "errors.csv"
SHARDS = "shards"
FORMAT = "vitlm-embeddings"
ERRORS_METADATA = b"vitlm_errors"


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / SHARDS / f"shard-{shard:05d}.parquet"


def write_atomically(path: Path, write):
    """`write(temporary path)`, then rename it to `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_text(path: Path, text: str):
    write_atomically(path, lambda staging: Path(staging).write_text(text, encoding="utf-8"))


def write_json(path: Path, value):
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_shard(path: Path, ids: list[str], embeddings: np.ndarray, errors: list[tuple[str, str]]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # (len(ids), dim), also with no rows
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])
    table = pa.table({"id": pa.array(ids, pa.string()), "embedding": column})
    table = table.replace_schema_metadata({ERRORS_METADATA: json.dumps(errors).encode()})
    write_atomically(path, lambda staging: pq.write_table(table, staging))


def read_shard(path: Path) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(ids, (rows, dim) float32 embeddings, [(id, error)])."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    embeddings = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    errors = [tuple(error) for error in json.loads(table.schema.metadata[ERRORS_METADATA])]
    return table.column("id").to_pylist(), embeddings, errors


def read_shard_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def errors_csv(errors: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "error"])
    writer.writerows(errors)
    return buffer.getvalue()


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        hint = (
            " (the job did not finish: run `vitlm embed` again to complete it)"
            if (Path(folder) / JOB).is_file()
            else ""
        )
        raise ValueError(f"{folder} holds no embedding index: no {MANIFEST}{hint}")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vitlm embedding manifest")
    return manifest
