"""The Search tab's function: the example collection, local folders (and their refusal in a public demo), bad
queries."""

import gradio as gr
import numpy as np
import pytest

from vitlm.demo.app import EXAMPLE_COLLECTION, MAX_RESULTS, example_collection, search
from vitlm.demo.models import ModelStore
from vitlm.retrieval import query_embedding
from vitlm.retrieval.sources import decode


@pytest.fixture(scope="module")
def store():
    return ModelStore(device="cpu")


def test_example_collection_is_drawn_the_same_every_time():
    collection = example_collection()
    assert len(collection) == 256 and collection.ids[0].startswith("000 a ")
    example_collection.cache_clear()
    again = example_collection()
    assert again is not collection and again.payloads == collection.payloads


def test_text_search_ranks_the_example_collection(store):
    gallery, table = search("a blue star", None, EXAMPLE_COLLECTION, 5, store=store)
    assert [row[0] for row in table] == [1, 2, 3, 4, 5] and len(gallery) == 5
    scores = [row[1] for row in table]
    assert scores == sorted(scores, reverse=True)
    # the scores are the cosine similarities of the query with each image's own embedding
    loaded = store.get("zero-shot-image-classification", "default")
    collection = example_collection()
    query = query_embedding(loaded.model, loaded.processor, "a blue star")
    for (thumbnail, caption), (_, score, name) in zip(gallery, table):
        image = decode(collection.read(collection.ids.index(name)))
        assert np.array_equal(np.asarray(thumbnail), np.asarray(image))  # 64 px: under the thumbnail size
        single = query_embedding(loaded.model, loaded.processor, None, image)
        assert score == pytest.approx(float(query @ single), abs=1e-4)
        assert caption == f"{score:.3f} · {name}"
    # the shapes model finds stars first, most of them blue
    assert sum("star" in row[2] for row in table) >= 4 and sum("blue star" in row[2] for row in table) >= 3


def test_image_query_finds_the_image_first(store, tmp_path):
    collection = example_collection()
    path = tmp_path / "query.png"
    path.write_bytes(collection.payloads[17])
    _, table = search("", str(path), EXAMPLE_COLLECTION, 3, store=store)
    assert table[0][2] == collection.ids[17] and table[0][1] == pytest.approx(1.0, abs=1e-4)


def test_a_local_folder_is_searched_when_serving_this_machine(store, tmp_path):
    collection = example_collection()
    for index in range(6):
        (tmp_path / f"{index}.png").write_bytes(collection.payloads[index])
    (tmp_path / "broken.png").write_bytes(b"no image")
    with pytest.warns(UserWarning, match="1 images of the collection could not be read"):
        gallery, table = search("", str(tmp_path / "4.png"), str(tmp_path), 10, store=store)
    assert len(table) == 6 and table[0][2] == "4.png"
    public = ModelStore(device="cpu", allow_local=False)
    messages = set()
    for folder in (str(tmp_path), "/no/such/folder", "/etc"):
        with pytest.raises(gr.Error) as refused:
            search("a star", None, folder, 5, store=public)
        messages.add(refused.value.message)
    assert len(messages) == 1 and "searches the example collection only" in messages.pop()


@pytest.mark.parametrize(
    ("text", "image", "k", "message"),
    [
        ("", None, 5, "Type a query text or upload a query image"),
        ("a star", None, 0, f"from 1 to {MAX_RESULTS}"),
        ("a star", None, MAX_RESULTS + 1, f"from 1 to {MAX_RESULTS}"),
        ("x" * 201, None, 5, "The query has 201 characters"),
        ("red\x00star", None, 5, "control characters"),
    ],
)
def test_bad_queries_are_refused(store, text, image, k, message):
    with pytest.raises(gr.Error, match=message):
        search(text, image, EXAMPLE_COLLECTION, k, store=store)


def test_bad_folders_and_images_are_refused(store, tmp_path):
    with pytest.raises(gr.Error, match="is not a folder"):
        search("a star", None, str(tmp_path / "missing"), 5, store=store)
    with pytest.raises(gr.Error, match="There are no images in"):
        search("a star", None, str(tmp_path), 5, store=store)
    (tmp_path / "broken.png").write_bytes(b"no image")
    with pytest.raises(gr.Error, match="Cannot read the query image"):
        search("", str(tmp_path / "broken.png"), EXAMPLE_COLLECTION, 5, store=store)
    with pytest.warns(UserWarning), pytest.raises(gr.Error, match="No image of the collection could be read"):
        search("a star", None, str(tmp_path), 5, store=store)
