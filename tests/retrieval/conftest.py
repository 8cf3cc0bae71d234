import pytest

from vitlm.data.shapes import generate
from vitlm.retrieval import load_model

NUM_IMAGES = 20
# the caption file of nested/001.png: NUL, an escape sequence, a bell and two bytes that are no UTF-8
HOSTILE_CAPTION_FILE = b"a \x00red\x1b[31m circle\x07 \xff\xfe"
CAPTIONED = 6  # images (of those that decode) with a caption: 000, 004, 008, 012, 016 and nested/001


@pytest.fixture(scope="session")
def shapes():
    """Shapes-world images with one object each (captions known)."""
    return generate(NUM_IMAGES, seed=11, split="validation", max_objects=1)


@pytest.fixture(scope="session")
def collection(shapes, tmp_path_factory):
    """A folder of the shapes images, half in a subfolder, with a file that is no image, a truncated PNG and a text
    file (not an image by its name, so not part of the collection). Caption files beside some images (`CAPTIONED`):
    every fourth image's caption, a hostile one (control characters, bytes that are no UTF-8), a blank one, and
    one beside the file that is no image."""
    folder = tmp_path_factory.mktemp("collection")
    (folder / "nested").mkdir()
    for index, row in enumerate(shapes):
        row["image"].save(folder / ("nested" if index % 2 else ".") / f"{index:03d}.png")
        if index % 4 == 0:
            (folder / f"{index:03d}.txt").write_text(row["caption"])
    (folder / "nested" / "001.txt").write_bytes(HOSTILE_CAPTION_FILE)
    (folder / "nested" / "003.txt").write_text("  \n\t ")
    (folder / "broken.txt").write_text("a caption whose image cannot be decoded")
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


@pytest.fixture(scope="session")
def embedded_captions(collection, tmp_path_factory):
    """The job of `embedded`, with the caption files beside the images (`captions="txt"`)."""
    from vitlm.retrieval import embed

    out = tmp_path_factory.mktemp("embedded-captions") / "out"
    return embed(collection, out, shard_size=8, batch_size=3, num_workers=1, captions="txt", progress=False)
