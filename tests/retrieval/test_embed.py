"""`vitlm.retrieval.embed`: what it writes, corrupt files, resuming after a kill, the other sources and Ray."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.retrieval.conftest import NUM_IMAGES
from vitlm.retrieval import embed, job, store
from vitlm.retrieval.engine import image_embeddings
from vitlm.retrieval.sources import FolderSource, decode


def read_all(out):
    """(ids, embeddings, errors) over every shard, in order."""
    manifest = store.read_manifest(out)
    shards = [store.read_shard(out / shard["file"]) for shard in manifest["shards"]]
    return (
        [i for ids, _, _ in shards for i in ids],
        np.concatenate([embeddings for _, embeddings, _ in shards]),
        [e for _, _, errors in shards for e in errors],
    )


def test_writes_shards_index_and_manifest(embedded, collection, model):
    manifest = store.read_manifest(embedded)
    assert manifest["counts"] == {"items": NUM_IMAGES + 2, "embedded": NUM_IMAGES, "errors": 2}
    assert manifest["embedding_dim"] == 64 and manifest["model"] == "default"
    assert [shard["rows"] for shard in manifest["shards"]] == [
        8,
        7,
        5,
    ]  # 8 items per shard (sorted paths), less the broken ones
    assert manifest["index"]["kind"] == "exact"
    ids, embeddings, _ = read_all(embedded)
    assert ids == [i for i in FolderSource(collection).ids if i not in ("broken.png", "nested/truncated.png")]
    assert "notes.txt" not in ids
    # each embedding is the model's on that file alone, normalized
    dual_encoder, processor = model
    for row in (0, 13):
        pixels = processor.image_processor(decode(str(collection / ids[row])), return_tensors="pt")["pixel_values"]
        np.testing.assert_allclose(embeddings[row], image_embeddings(dual_encoder, pixels)[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    import faiss

    index = faiss.read_index(str(embedded / store.INDEX))
    assert index.ntotal == NUM_IMAGES
    _, rows = index.search(embeddings[[5]], 1)
    assert rows[0, 0] == 5


def test_corrupt_files_are_listed_and_skipped(embedded):
    with open(embedded / store.ERRORS, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["id"] for row in rows] == ["broken.png", "nested/truncated.png"]
    assert all("cannot" in row["error"] or "truncated" in row["error"] for row in rows), rows


def test_a_shard_of_unreadable_files_only(collection, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"broken")
    (folder / "b.png").write_bytes(b"broken too")
    (folder / "c.png").write_bytes((collection / "000.png").read_bytes())
    out = embed(folder, tmp_path / "out", shard_size=2, num_workers=0, progress=False)
    assert [shard["rows"] for shard in store.read_manifest(out)["shards"]] == [0, 1]
    ids, embeddings, errors = read_all(out)
    assert ids == ["c.png"] and embeddings.shape == (1, 64) and [e[0] for e in errors] == ["a.png", "b.png"]
    (folder / "c.png").write_bytes(b"broken as well")
    with pytest.raises(ValueError, match="no image of the collection could be decoded"):
        embed(folder, tmp_path / "out2", shard_size=2, num_workers=0, progress=False)
    assert len((tmp_path / "out2" / store.ERRORS).read_text().splitlines()) == 4


def test_resume_after_a_kill_ends_identical(collection, embedded, tmp_path, monkeypatch):
    """A job killed after its first shard (and in the middle of writing another, leaving a temporary file) ends,
    rerun, with the files of the uninterrupted run."""
    out = tmp_path / "out"
    write_shard = job._write_shard
    written = []

    def killed_after_one(*args):
        if written:
            (out / store.SHARDS / ".shard-00001.parquet.abc.tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt  # what SIGINT raises; SIGKILL leaves the same files
        write_shard(*args)
        written.append(args[2])  # the shard's number

    monkeypatch.setattr(job, "_write_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        embed(collection, out, shard_size=8, batch_size=3, num_workers=1, progress=False)
    assert written == [0] and not (out / store.MANIFEST).exists()
    with pytest.raises(ValueError, match="the job did not finish"):
        store.read_manifest(out)
    monkeypatch.setattr(job, "_write_shard", write_shard)
    embed(collection, out, shard_size=8, batch_size=3, num_workers=1, progress=False)
    names = [
        "job.json",
        "errors.csv",
        "manifest.json",
        "index.faiss",
        *(f"shards/shard-0000{i}.parquet" for i in range(3)),
    ]
    for name in names:
        assert (out / name).read_bytes() == (embedded / name).read_bytes(), name


def test_refuses_a_folder_of_another_job_or_files(collection, embedded, tmp_path):
    with pytest.raises(ValueError, match=r"holds another embedding job \(different batch_size\)"):
        embed(collection, embedded, shard_size=8, batch_size=4, progress=False)
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not an embedding job's folder"):
        embed(collection, tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(engine="spark"), "unknown engine 'spark'"),
        (dict(index="lsh"), "unknown index kind 'lsh'"),
        (dict(kind="table"), "unknown source kind 'table'"),
    ],
)
def test_bad_settings(collection, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        embed(collection, tmp_path / "out", progress=False, **kwargs)


def test_parquet_and_datasets_sources_embed_like_the_folder(shapes, embedded, tmp_path):
    """The same images as PNG bytes in parquet, as paths in parquet, and as a saved `datasets` data set."""
    from datasets import Image

    raw = shapes.cast_column("image", Image(decode=False))
    pngs = [row["image"]["bytes"] for row in raw]
    names = [f"{index:03d}" for index in range(len(pngs))]
    pq.write_table(pa.table({"name": names, "image": pngs}), tmp_path / "bytes.parquet", row_group_size=7)
    (tmp_path / "files").mkdir()
    for name, png in zip(names, pngs):
        (tmp_path / "files" / f"{name}.png").write_bytes(png)
    paths = [f"files/{name}.png" for name in names]
    pq.write_table(pa.table({"image": paths}), tmp_path / "paths.parquet")
    shapes.save_to_disk(tmp_path / "dataset")

    folder_ids, folder_embeddings, _ = read_all(embedded)
    reference = dict(zip(folder_ids, folder_embeddings))
    expected = np.stack([reference[f"{'nested/' if index % 2 else ''}{name}.png"] for index, name in enumerate(names)])
    for source, options, ids in [
        (tmp_path / "bytes.parquet", dict(id_column="name"), names),
        (tmp_path / "paths.parquet", {}, [f"paths.parquet:{index}" for index in range(len(names))]),
        (tmp_path / "dataset", {}, [str(index) for index in range(len(names))]),
    ]:
        out = embed(source, tmp_path / f"out-{source.name}", progress=False, num_workers=0, **options)
        got_ids, embeddings, errors = read_all(out)
        assert got_ids == ids and not errors, source
        np.testing.assert_allclose(embeddings, expected, atol=1e-6)


def test_source_errors(tmp_path):
    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "table.parquet")
    with pytest.raises(ValueError, match=r"has no column 'image'; its columns are \['picture'\]"):
        embed(tmp_path / "table.parquet", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        embed(tmp_path / "empty", tmp_path / "out", progress=False)


def test_ray_engine_equals_single_process(collection, embedded, tmp_path):
    out = embed(collection, tmp_path / "ray", engine="ray", num_cpus=2, shard_size=8, batch_size=3, progress=False)
    ids, embeddings, errors = read_all(out)
    local_ids, local_embeddings, local_errors = read_all(embedded)
    assert ids == local_ids and errors == local_errors
    assert np.abs(embeddings - local_embeddings).max() <= 1e-6
    manifest, local = (json.loads((folder / store.MANIFEST).read_text()) for folder in (out, embedded))
    assert manifest == local


def test_embed_cli(collection, tmp_path, capsys):
    from vitlm.cli import main

    out = tmp_path / "out"
    assert main(["embed", str(collection), "--out", str(out), "--shard-size", "8", "--num-workers", "0"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"wrote {out}: 20 of 22 images embedded (2 could not be decoded, listed in {out / 'errors.csv'}), exact index"
    )
    assert main(["embed", str(collection), "--out", str(out), "--shard-size", "8", "--batch-size", "4"]) == 2
    assert "holds another embedding job (different batch_size)" in capsys.readouterr().err
