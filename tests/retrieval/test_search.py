"""Searching an embedded collection: the Python API, `vitlm search` and its refusals."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest

from vitlm.cli import main, markdown_table
from vitlm.retrieval import Collection, search, store
from vitlm.retrieval.engine import text_embeddings


def stored_embeddings(folder):
    manifest = store.read_manifest(folder)
    shards = [store.read_shard(folder / shard["file"]) for shard in manifest["shards"]]
    return [i for ids, _, _ in shards for i in ids], np.concatenate([e for _, e, _ in shards])


def test_text_search_ranks_by_cosine_similarity(embedded, collection, model):
    ids, embeddings = stored_embeddings(embedded)
    hits = search(embedded, "a red circle", k=5)
    query = text_embeddings(model[0], model[1].tokenizer, ["a red circle"])[0]
    scores = embeddings @ query
    order = np.argsort(-scores)[:5]
    assert [hit.id for hit in hits] == [ids[row] for row in order]
    np.testing.assert_allclose([hit.score for hit in hits], scores[order], atol=1e-5)
    assert [hit.rank for hit in hits] == [1, 2, 3, 4, 5]
    assert hits[0].path == str(embedded.parent.parent / "collection0" / hits[0].id) or hits[0].path.endswith(
        hits[0].id
    )


def test_image_search_finds_the_image_itself(embedded, collection):
    collection_ = Collection(embedded)
    for name in ("000.png", "nested/013.png"):
        top = collection_.search(image=collection / name, k=3)[0]
        assert top.id == name and top.score == pytest.approx(1.0, abs=1e-5)
    # a PIL image works the same as its file
    assert collection_.search(image=PIL.Image.open(collection / "000.png"), k=1)[0].id == "000.png"


def test_text_and_image_together(embedded, collection, model):
    collection_ = Collection(embedded, model=model)
    both = collection_.query_embedding("a blue star", collection / "000.png")
    text, image = collection_.query_embedding("a blue star"), collection_.query_embedding(image=collection / "000.png")
    np.testing.assert_allclose(both, (text + image) / np.linalg.norm(text + image), atol=1e-6)


def test_k_larger_than_the_collection(embedded):
    assert len(search(embedded, "a shape", k=500)) == 20


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "the query text is empty"),
        ("   \n", "the query text is empty"),
        ("a" * 1001, "the query text has 1,001 characters; the limit is 1,000"),
        ("red\x00circle", r"control characters \(U\+0000\)"),
        ("\x1b[31mred", r"control characters \(U\+001B\)"),
        ("\ud800", r"control characters \(U\+D800\)"),
        (b"red circle", "must be a string, got bytes"),
    ],
)
def test_hostile_text_is_refused(embedded, query, message):
    with pytest.raises(ValueError, match=message):
        search(embedded, query)


def test_odd_but_valid_text_is_searched(embedded):
    for query in ("🔴 ⭐", "<script>alert(1)</script>", "a\tred  circle", "ＲＥＤ ｃｉｒｃｌｅ", "a " * 400):
        assert len(search(embedded, query, k=2)) == 2


def test_unreadable_query_images_are_refused(embedded, collection, tmp_path):
    with pytest.raises(ValueError, match="cannot read the query image: .*cannot identify image file"):
        search(embedded, image=collection / "broken.png")
    with pytest.raises(ValueError, match="cannot read the query image: .*No such file"):
        search(embedded, image=tmp_path / "missing.png")
    with pytest.raises(ValueError, match="give a query text, a query image or both"):
        search(embedded)
    with pytest.raises(ValueError, match="k must be an integer from 1 to 10,000, got 0"):
        search(embedded, "a red circle", k=0)


def test_search_cli(embedded, collection, capsys):
    assert main(["search", str(embedded), "--image", str(collection / "000.png"), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == ["rank", "score", "image"]
    assert len(lines) == 2 + 3
    cells = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    assert cells[0] == "1" and float(cells[1]) == pytest.approx(1.0, abs=1e-4)
    assert cells[2] == str(collection / "000.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x"], "vitlm search: error: give a query text, --image or both"),
        (["x", ""], "vitlm search: error: the query text is empty"),
        (["x", "red", "-k", "0"], "argument -k: expected a positive integer, got '0'"),
        (["{out}", "red", "--image", "{collection}/broken.png"], "vitlm search: error: cannot read the query image"),
        (["{collection}", "red"], "holds no embedding index: no manifest.json"),
        (["{out}", "--image", "{collection}"], "vitlm search: error: cannot read the query image: "),
        (["{out}", "--image", "/dev/zero"], "/dev/zero is not a regular file"),
    ],
)
def test_search_cli_errors(embedded, collection, capsys, args, message):
    args = [arg.format(out=embedded, collection=collection) for arg in args]
    try:
        status = main(["search", *args])
    except SystemExit as exit:  # argparse
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("damaged", ["index", "manifest", "shard"])
def test_damaged_index_files_are_named_in_one_line(embedded, tmp_path, capsys, damaged):
    copy = tmp_path / "copy"
    shutil.copytree(embedded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    target = {
        "index": copy / manifest["index"]["file"],
        "manifest": copy / "manifest.json",
        "shard": copy / manifest["shards"][0]["file"],
    }[damaged]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    assert main(["search", str(copy), "red"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlm search: error: ") and str(target) in err and err.count("\n") == 1, err
    assert "run `vitlm embed` again" in err


def test_file_names_cannot_drive_the_terminal_or_break_the_table():
    table = markdown_table(["rank", "image"], [[1, "a|b\x1b]0;title\x07\x1b[2J\nc\u202e.png"], [2, "été.png"]])
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count(" | ") == 1 for line in lines if not line.startswith("|-"))
    assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table
    assert "a\\|b\\x1b]0;title\\x07\\x1b[2J\\nc\\u202e.png" in lines[2] and "été.png" in lines[3]
