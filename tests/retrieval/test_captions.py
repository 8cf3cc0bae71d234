"""Caption embeddings in `vitlm.retrieval.embed`: caption files beside a folder's images, text columns of parquet
files and `datasets` data sets, hostile captions, refusals before any work, resuming and the CLI."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.retrieval.conftest import CAPTIONED, NUM_IMAGES
from vitlm.retrieval import embed, job, store
from vitlm.retrieval.checks import clean_caption
from vitlm.retrieval.engine import DEFAULT_MODEL_FOLDER, text_embeddings


def read_captions(out):
    """(ids, image embeddings, caption embeddings with NaN rows for no caption) over every shard."""
    manifest = store.read_manifest(out)
    files = [out / shard["file"] for shard in manifest["shards"]]
    ids = [i for file in files for i in store.read_shard_ids(file)]
    images = np.concatenate([store.read_shard(file)[1] for file in files])
    return ids, images, np.concatenate([store.read_shard_captions(file) for file in files])


def assert_captions(model, captions, expected: list[str | None]):
    """Each row is the text tower's normalized embedding of its caption, alone; NaN for no caption."""
    dual_encoder, processor = model
    missing = [caption is None for caption in expected]
    assert np.isnan(captions).all(axis=1).tolist() == missing
    present = [caption for caption in expected if caption is not None]
    reference = text_embeddings(dual_encoder, processor.tokenizer, present)
    np.testing.assert_allclose(captions[~np.array(missing)], reference, atol=1e-6)


def test_caption_files_beside_a_folders_images(embedded_captions, embedded, collection, model):
    manifest = store.read_manifest(embedded_captions)
    assert manifest["captions"] == {"column": ".txt", "embedded": CAPTIONED}
    assert manifest["source"] == {"kind": "folder", "root": str(collection), "captions": ".txt"}
    assert manifest["counts"] == store.read_manifest(embedded)["counts"]
    ids, images, captions = read_captions(embedded_captions)
    local = [store.read_shard(embedded / shard["file"]) for shard in store.read_manifest(embedded)["shards"]]
    local_ids, local_images = [i for ids, _, _ in local for i in ids], np.concatenate([e for _, e, _ in local])
    # the images' embeddings are those of the job without captions, bit for bit (same batches)
    assert ids == local_ids and np.array_equal(images, local_images)
    expected = []
    for item in ids:
        caption = collection / item.replace(".png", ".txt")
        expected.append(clean_caption(caption.read_text(errors="replace")) if caption.is_file() else None)
    assert expected[ids.index("nested/001.png")] == "a  red [31m circle  \ufffd\ufffd"  # what the tower reads
    assert_captions(model, captions, expected)
    np.testing.assert_allclose(np.linalg.norm(captions[~np.isnan(captions[:, 0])], axis=1), 1.0, atol=1e-6)
    table = pq.read_table(embedded_captions / manifest["shards"][0]["file"])
    assert table.schema.field("caption_embedding").type == pa.list_(pa.float32(), 64)
    assert table.column("caption_embedding").null_count == 4  # of 000.png, 002.png, ..., 014.png: 002, 006, ...


def test_text_columns_of_parquet_and_datasets(shapes, model, tmp_path):
    """Nulls, blanks and hostile captions in a parquet column; a long caption is cut to the model's context (32
    tokens) as the tokenizer truncates, so it embeds as any text with the same first 31 tokens."""
    from datasets import Image

    raw = shapes.cast_column("image", Image(decode=False))
    pngs = [row["image"]["bytes"] for row in raw]
    captions = list(shapes["caption"])
    captions[1] = None
    captions[2] = "   "
    captions[3] = "a \x00red\x1b[0m\x7f circle\u2028"
    captions[4] = "a red circle " * 10_000  # 130,000 characters
    captions[5] = "🔴 <script>alert(1)</script> ⭐ \u202eelcric der"
    pq.write_table(pa.table({"image": pngs, "caption": captions}), tmp_path / "images.parquet", row_group_size=7)
    out = embed(tmp_path / "images.parquet", tmp_path / "out", captions="caption", num_workers=0, progress=False)
    _, _, embedded = read_captions(out)
    assert store.read_manifest(out)["captions"] == {"column": "caption", "embedded": NUM_IMAGES - 2}
    assert_captions(model, embedded, [clean_caption(caption) for caption in captions])
    truncated = text_embeddings(model[0], model[1].tokenizer, ["a red circle " * 12])[0]
    np.testing.assert_allclose(embedded[4], truncated, atol=1e-6)

    shapes.select_columns(["image", "caption"]).save_to_disk(tmp_path / "dataset")
    out = embed(tmp_path / "dataset", tmp_path / "out-dataset", captions="caption", num_workers=0, progress=False)
    _, _, embedded = read_captions(out)
    assert_captions(model, embedded, list(shapes["caption"]))


def test_refused_before_any_work(shapes, collection, tmp_path):
    pq.write_table(pa.table({"image": [b"x"], "label": [3]}), tmp_path / "table.parquet")
    shapes.select_columns(["image", "label"]).save_to_disk(tmp_path / "dataset")
    inpainting = DEFAULT_MODEL_FOLDER.parent / "inpainting"
    out = tmp_path / "out"
    for source, options, message in [
        (tmp_path / "table.parquet", dict(captions="text"), r"has no column 'text'; its columns are \['image', 'lab"),
        (tmp_path / "table.parquet", dict(captions="label"), "the caption column 'label' of .* holds int64, not text"),
        (tmp_path / "dataset", dict(captions="label"), "the caption column 'label' of .* holds ClassLabel"),
        (collection, dict(captions="json"), "no image under .* has a caption file .* suffix .json"),
        (collection, dict(captions="png"), r"captions of a folder name the suffix .* got 'png'"),
        (collection, dict(captions="../x"), r"captions of a folder name the suffix .* got '../x'"),
        (collection, dict(captions=" "), "captions must name a text column"),
        (collection, dict(captions=3), "captions must name a text column"),
        (collection, dict(captions="txt", model=str(inpainting)), "embedding and search need a dual encoder"),
    ]:
        with pytest.raises(ValueError, match=message):
            embed(source, out, progress=False, **options)
        assert not out.exists()


def test_resume_with_captions_ends_identical(collection, embedded_captions, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_shard = job._write_shard

    def killed_after_one(*args):
        if args[2] == 1:  # the shard's number
            raise KeyboardInterrupt
        write_shard(*args)

    monkeypatch.setattr(job, "_write_shard", killed_after_one)
    options = dict(shard_size=8, batch_size=3, num_workers=1, captions="txt", progress=False)
    with pytest.raises(KeyboardInterrupt):
        embed(collection, out, **options)
    monkeypatch.setattr(job, "_write_shard", write_shard)
    with pytest.raises(ValueError, match=r"holds another embedding job \(different source\)"):
        embed(collection, out, **{**options, "captions": None})
    embed(collection, out, **options)
    for name in [
        "job.json",
        "errors.csv",
        "manifest.json",
        "index.faiss",
        *(f"shards/shard-0000{i}.parquet" for i in range(3)),
    ]:
        assert (out / name).read_bytes() == (embedded_captions / name).read_bytes(), name


def test_embed_cli_with_captions(collection, tmp_path, capsys):
    from vitlm.cli import main

    out = tmp_path / "out"
    args = ["embed", str(collection), "--out", str(out), "--captions", "txt", "--num-workers", "0"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith(f"exact index, {CAPTIONED} captions embedded")
    assert json.loads((out / store.JOB).read_text())["source"]["captions"] == ".txt"
    assert main(["embed", str(collection), "--out", str(tmp_path / "other"), "--captions", "csv"]) == 2
    err = capsys.readouterr().err
    assert "no image under" in err and "Traceback" not in err, err


def test_search_by_captions(embedded_captions, embedded, collection, model, capsys):
    from vitlm.cli import main
    from vitlm.retrieval import Collection, search

    ids, _, captions = read_captions(embedded_captions)
    captioned = np.flatnonzero(~np.isnan(captions[:, 0]))
    query = text_embeddings(model[0], model[1].tokenizer, ["a red circle"])[0]
    scores = captions[captioned] @ query
    order = np.argsort(-scores)
    hits = search(embedded_captions, "a red circle", k=50, captions=True)  # k above the captions: all of them
    assert [hit.id for hit in hits] == [ids[captioned[row]] for row in order]
    np.testing.assert_allclose([hit.score for hit in hits], scores[order], atol=1e-5)
    assert hits[0].path == str(collection / hits[0].id)
    by_image = Collection(embedded_captions, model=model).search(image=collection / "002.png", k=3, captions=True)
    assert len(by_image) == 3 and {hit.id for hit in by_image} <= {ids[row] for row in captioned}
    with pytest.raises(ValueError, match="holds no caption embeddings: embed the collection with captions"):
        search(embedded, "a red circle", captions=True)
    assert main(["search", str(embedded_captions), "a red circle", "--captions", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 2 and lines[2].split("|")[3].strip() == hits[0].path
