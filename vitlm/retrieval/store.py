"""What an embedding job writes, and how it is read back.

    OUT/job.json                 what the job embeds (model, source, shard size, the ids' hash): a rerun must match
    OUT/shards/shard-00000.parquet  one per `shard_size` items: columns `id` and `embedding` (float32, normalized);
                                 the items that failed to decode in the file's metadata; a job with captions
                                 adds `caption_embedding` (float32, normalized; null for an item without one)
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
import secrets
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
    staging = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    # created as `open` creates files, with the umask's permissions (mkstemp's are 0600 whatever the umask)
    os.close(os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
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


def _vectors(rows: np.ndarray):
    """(n, dim) float32 as a fixed-size list column; NaN rows become nulls (zeros underneath)."""
    import pyarrow as pa

    rows = np.array(rows, dtype=np.float32)  # a copy: the null rows are zeroed
    missing = np.isnan(rows).any(axis=1)
    rows[missing] = 0
    mask = pa.array(missing) if missing.any() else None
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1], mask=mask)


def write_shard(
    path: Path,
    ids: list[str],
    embeddings: np.ndarray,
    errors: list[tuple[str, str]],
    caption_embeddings: np.ndarray | None = None,
):
    """`embeddings` (len(ids), dim), also with no rows; `caption_embeddings` the same, NaN rows for no caption."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": pa.array(ids, pa.string()), "embedding": _vectors(embeddings)}
    if caption_embeddings is not None:
        columns["caption_embedding"] = _vectors(caption_embeddings)
    table = pa.table(columns)
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


def read_shard_captions(path: Path) -> np.ndarray:
    """(rows, dim) float32 caption embeddings of a job with captions, NaN rows for the items without one."""
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["caption_embedding"]).column(0).combine_chunks()
    rows = column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).astype(np.float32)
    rows[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return rows


def read_shard_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=["id"]).column("id").to_pylist()
    except (OSError, ValueError, KeyError) as error:  # missing, truncated, or not one of vitlm's shards
        raise ValueError(f"{path} cannot be read ({error}): run `vitlm embed` again to rebuild it") from None


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
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error}): run `vitlm embed` again to rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vitlm embedding manifest")
    return manifest
