import pytest

from vitlm.data.shapes import generate
from vitlm.retrieval import load_model

NUM_IMAGES = 20


@pytest.fixture(scope="session")
def shapes():
    """Shapes-world images with one object each (captions known)."""
    return generate(NUM_IMAGES, seed=11, split="validation", max_objects=1)


@pytest.fixture(scope="session")
def collection(shapes, tmp_path_factory):
    """A folder of the shapes images, half in a subfolder, with a file that is no image, a truncated PNG and a text
    file (not an image by its name, so not part of the collection)."""
    folder = tmp_path_factory.mktemp("collection")
    (folder / "nested").mkdir()
    for index, row in enumerate(shapes):
        row["image"].save(folder / ("nested" if index % 2 else ".") / f"{index:03d}.png")
    (folder / "broken.png").write_bytes(b"this is not an image")
    (folder / "nested" / "truncated.png").write_bytes((folder / "000.png").read_bytes()[:100])
    (folder / "notes.txt").write_text("not part of the collection")
    return folder


@pytest.fixture(scope="session")
def model():
    return load_model("default", "cpu")


@pytest.fixture(scope="session")
def embedded(collection, model, tmp_path_factory):
    """The collection embedded by the single-process engine, in shards of 8 with batches of 3."""
    from vitlm.retrieval import embed

    out = tmp_path_factory.mktemp("embedded") / "out"
    return embed(collection, out, shard_size=8, batch_size=3, num_workers=1, progress=False)
