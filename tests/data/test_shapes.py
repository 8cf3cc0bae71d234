import itertools
import math

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Image, List, load_dataset

from vitlm.data import CATEGORIES, COLOURS, HELD_OUT, SHAPES, generate, to_imagefolder
from vitlm.data.shapes import BACKGROUND_SPREAD, BRIGHTNESS_JITTER, MAX_OBJECTS


def raw(dataset):
    """Rows with the PNG bytes of images and masks instead of decoded images."""
    dataset = dataset.cast_column("image", Image(decode=False)).cast_column("masks", List(Image(decode=False)))
    return [
        {**row, "image": row["image"]["bytes"], "masks": [mask["bytes"] for mask in row["masks"]]} for row in dataset
    ]


@pytest.fixture(scope="module")
def train():
    return generate(300, seed=0, split="train")


@pytest.fixture(scope="module")
def test_split():
    return generate(100, seed=0, split="test")


def test_vocabulary_and_held_out_pairs():
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8
    assert CATEGORIES == [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
    assert len(set(CATEGORIES)) == len(SHAPES) * len(COLOURS)
    # named colours stay apart even after each object's brightness jitter
    closest = min(math.dist(a, b) for a, b in itertools.combinations(COLOURS.values(), 2))
    assert closest > 2 * BRIGHTNESS_JITTER * math.sqrt(3) + 40
    assert HELD_OUT <= set(itertools.product(SHAPES, COLOURS))
    assert {shape for shape, _ in HELD_OUT} == set(SHAPES)
    assert {colour for _, colour in HELD_OUT} == set(COLOURS)
    # and each shape and colour keeps other partners for training
    for shape in SHAPES:
        assert sum((shape, colour) not in HELD_OUT for colour in COLOURS) >= len(COLOURS) // 2
    for colour in COLOURS:
        assert sum((shape, colour) not in HELD_OUT for shape in SHAPES) >= len(SHAPES) // 2


def test_features_and_sizes():
    dataset = generate(4, seed=1, image_size=48, min_objects=2, max_objects=2)
    assert isinstance(dataset, Dataset) and len(dataset) == 4
    assert dataset.features["label"].names == CATEGORIES
    assert dataset.features["objects"]["category"].feature.names == CATEGORIES
    for row in dataset:
        assert row["image"].mode == "RGB" and row["image"].size == (48, 48)
        assert len(row["objects"]["shape"]) == len(row["masks"]) == 2
        assert all(mask.mode == "1" and mask.size == (48, 48) for mask in row["masks"])


def test_deterministic(train):
    first = raw(generate(5, seed=7, split="train"))
    assert raw(generate(5, seed=7, split="train")) == first
    # image i depends on (seed, split, i) only: a longer run extends a shorter one
    assert raw(train.select(range(5))) == raw(generate(5, seed=0, split="train"))
    for other in (generate(5, seed=8, split="train"), generate(5, seed=7, split="validation")):
        assert all(a["image"] != b["image"] for a, b in zip(first, raw(other)))


def test_train_never_shows_held_out_pairs(train):
    pairs = [pair for objects in train["objects"] for pair in zip(objects["shape"], objects["colour"])]
    assert len(pairs) > len(train)  # several objects per image
    assert not set(pairs) & HELD_OUT
    # every shape and colour is still trained on
    assert {shape for shape, _ in pairs} == set(SHAPES) and {colour for _, colour in pairs} == set(COLOURS)


def test_test_split_leads_with_held_out_pairs(test_split):
    firsts = [(objects["shape"][0], objects["colour"][0]) for objects in test_split["objects"]]
    assert set(firsts) == HELD_OUT  # all of them, and only them
    others = {pair for objects in test_split["objects"] for pair in zip(objects["shape"][1:], objects["colour"][1:])}
    assert others - HELD_OUT  # later objects are drawn from every pair


def test_object_counts():
    counts = [len(objects["shape"]) for objects in generate(40, min_objects=2, max_objects=4)["objects"]]
    assert set(counts) == {2, 3, 4}
    # the most crowded small images still place every object
    crowded = generate(3, image_size=32, min_objects=MAX_OBJECTS, max_objects=MAX_OBJECTS)
    assert [len(objects["shape"]) for objects in crowded["objects"]] == [MAX_OBJECTS] * 3


def test_labels_and_captions_match_objects(train):
    for row in train:
        objects = row["objects"]
        assert objects["category"] == [
            CATEGORIES.index(f"{c} {s}") for s, c in zip(objects["shape"], objects["colour"])
        ]
        assert row["label"] == objects["category"][0]
        # every object named, in drawing order
        position = 0
        for shape, colour in zip(objects["shape"], objects["colour"]):
            position = row["caption"].find(f"{colour} {shape}", position)
            assert position != -1, (row["caption"], objects)
            position += 1
    assert train[0]["caption"].startswith(("a ", "an "))
    assert any(" and " in caption for caption in train["caption"])


def test_masks_are_the_visible_parts_and_boxes_are_tight(train):
    overlapping_boxes = 0
    for row in train.select(range(100)):
        masks = [np.asarray(mask) for mask in row["masks"]]
        boxes = row["objects"]["bbox"]
        for mask, (x0, y0, x1, y1) in zip(masks, boxes):
            assert mask.dtype == bool and mask.any()
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [x0, y0, x1, y1]
        # visible parts never overlap: what a later object covers is taken out of the earlier masks
        assert (np.sum(masks, axis=0) <= 1).all()
        for a, b in itertools.combinations(boxes, 2):
            overlapping_boxes += a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
    assert overlapping_boxes > 5  # occlusion does happen


def test_object_pixels_have_the_object_colour(train):
    colours = np.array(list(COLOURS.values()))
    for row in train.select(range(100)):
        image = np.asarray(row["image"]).astype(int)
        covered = np.zeros(image.shape[:2], bool)
        for mask, colour in zip(row["masks"], row["objects"]["colour"]):
            mask = np.asarray(mask)
            pixels = image[mask]
            assert (pixels == pixels[0]).all()  # flat fill, no background bleeding in
            assert np.abs(pixels[0] - COLOURS[colour]).max() <= BRIGHTNESS_JITTER
            nearest = np.linalg.norm(colours - pixels[0], axis=1).argmin()
            assert list(COLOURS)[nearest] == colour
            covered |= mask
        # backgrounds stay near grey, so a background pixel is never mistaken for a shape colour
        background = image[~covered]
        assert (background.max(axis=1) - background.min(axis=1)).max() <= 2 * BACKGROUND_SPREAD + 1
        assert np.linalg.norm(background[:, None] - colours[None], axis=-1).min() > 50
        assert background.std() > 1  # textured, not flat


def test_twins_change_the_first_object_only_and_leave_the_data_as_it_was():
    plain = generate(30, seed=4, split="train", max_objects=2)
    twinned = generate(30, seed=4, split="train", max_objects=2, twins=True)
    assert raw(twinned.remove_columns(["twins", "twin_captions"])) == raw(plain)
    palette = np.array(list(COLOURS.values()))
    for row in twinned:
        shape, colour = row["objects"]["shape"][0], row["objects"]["colour"][0]
        image, first = np.asarray(row["image"]).astype(int), np.asarray(row["masks"][0])
        recoloured, reshaped = (np.asarray(twin).astype(int) for twin in row["twins"])
        # recoloured: exactly the first object's visible pixels change, to another colour the split allows with it
        assert ((recoloured != image).any(axis=-1) == first).all()
        new_colour = list(COLOURS)[np.linalg.norm(palette - recoloured[first][0], axis=1).argmin()]
        assert new_colour != colour and (shape, new_colour) not in HELD_OUT
        # reshaped: the object's shade moves onto some background, and uncovers background where it leaves
        changed = (reshaped != image).any(axis=-1)
        assert changed.any()
        shade = image[first][0]
        assert (reshaped[changed & ~first] == shade).all()
        assert (reshaped[changed & first] != shade).any(axis=-1).all()
        by_shape, by_colour = row["twin_captions"]
        assert len(by_shape) == len(SHAPES) and row["captions"][1] in by_shape
        assert len(by_colour) == len(COLOURS) and row["captions"][2] in by_colour
        # only the first object's word varies
        assert len({caption.partition(" and ")[2] for caption in by_shape + by_colour}) <= 2
    assert twinned.features["twins"].feature == Image(mode="RGB")


def test_imagefolder_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = generate(12, seed=3, max_objects=3)
    folder = to_imagefolder(dataset, tmp_path / "shapes")
    assert (folder / "metadata.jsonl").is_file()
    assert (folder / dataset.features["label"].int2str(dataset[0]["label"])).is_dir()  # class subfolders

    loaded = load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == len(dataset)
    assert loaded["label"] == dataset.features["label"].int2str(dataset["label"])
    assert loaded.cast_column("label", ClassLabel(names=CATEGORIES))["label"] == dataset["label"]
    assert loaded["caption"] == dataset["caption"]
    for before, after in zip(dataset, loaded):
        assert np.array_equal(np.asarray(before["image"]), np.asarray(after["image"].convert("RGB")))
        assert after["objects"]["bbox"] == before["objects"]["bbox"]
        assert after["objects"]["category"] == [CATEGORIES[c] for c in before["objects"]["category"]]
        assert len(after["masks"]) == len(before["masks"])
        for mask_before, mask_after in zip(before["masks"], after["masks"]):
            assert np.array_equal(np.asarray(mask_before), np.asarray(mask_after.convert("1")))

    with pytest.raises(ValueError, match="not an empty directory"):
        to_imagefolder(dataset, folder)


def test_parquet_round_trip_as_push_to_hub_uploads(tmp_path):
    # push_to_hub uploads parquet shards with the image bytes embedded and the features in the schema metadata
    dataset = generate(6, seed=4)
    dataset.to_parquet(tmp_path / "shard.parquet")
    reloaded = Dataset.from_parquet(str(tmp_path / "shard.parquet"), cache_dir=str(tmp_path / "cache"))
    assert reloaded.features == dataset.features
    assert raw(reloaded) == raw(dataset)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 2.5}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"split": "dev"}, "split"),
        ({"image_size": 16}, "image_size"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": MAX_OBJECTS + 1}, "max_objects"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**{"num_images": 2, **kwargs})
