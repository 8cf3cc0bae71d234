"""The synthetic shapes world: coloured shapes on textured backgrounds, with captions, labels, boxes and masks.

One generator feeds every task vitlm has a head for: classification (`label`, the first object's category),
contrastive image-text training (`caption`), open-vocabulary detection (`objects`) and segmentation-style checks
(`masks`). A fixed set of (shape, colour) pairs, `HELD_OUT`, never appears in the "train" split, while the first
object of every "test" image is one of them: a model trained on "train" sees every shape and every colour, only
never these combinations, so test accuracy measures compositional zero-shot generalisation. A classifier, whose
labels are the categories it trains on, is evaluated on "validation" instead: new images of the same pairs.

    >>> from vitlm.data.shapes import generate
    >>> train = generate(10_000, seed=0, split="train")
    >>> train[0]["caption"]  # e.g. 'a blue star and an orange hexagon'

The result is a plain `datasets.Dataset` (images stored as PNG bytes), so `push_to_hub`, `save_to_disk`, `map`
and `with_transform` work as for any data set; `to_imagefolder` writes it as an imagefolder directory.
"""

import io
import json
import math
import pathlib

import numpy as np
from datasets import ClassLabel, Dataset, DatasetInfo, Features, Image, List, Value
from datasets.utils.tqdm import tqdm
from PIL import Image as PILImage
from PIL import ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")

# Saturated colours, at least ~95 apart in RGB. Backgrounds are kept near grey (see `_background`), so no
# background pixel can ever take one of these colours.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 130, 20),
    "yellow": (235, 225, 45),
    "green": (40, 170, 60),
    "cyan": (40, 205, 215),
    "blue": (35, 65, 220),
    "purple": (140, 45, 190),
    "pink": (240, 110, 190),
}

CATEGORIES: list[str] = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]

# Every colour is held out exactly once and every shape at least once, so each shape and each colour still appears
# in training with other partners: 8 of the 48 combinations are never drawn in the "train" split.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "red"),
        ("square", "orange"),
        ("triangle", "yellow"),
        ("star", "green"),
        ("hexagon", "cyan"),
        ("cross", "blue"),
        ("triangle", "purple"),
        ("star", "pink"),
    }
)

# "validation" is drawn like "train" (no held-out pair) from its own random stream: the evaluation set of tasks that
# only know the classes they trained on (`vitlm train image-classification`).
SPLITS: tuple[str, ...] = ("train", "validation", "test")

MAX_IMAGE_SIZE = 1024
MIN_IMAGE_SIZE = 32  # below this a star or a cross is a handful of pixels that no longer reads as its shape
MAX_OBJECTS = 8
MAX_HIDDEN = 0.7  # a placement that would hide more than this share of an earlier object is redrawn elsewhere
BRIGHTNESS_JITTER = 12  # per object, so a colour is a region of RGB space rather than one exact value
BACKGROUND_SPREAD = 25  # background channels stay within this of the pixel's grey level
_PLACEMENT_TRIES = 1000

FEATURES = Features(
    {
        "image": Image(mode="RGB"),
        "caption": Value("string"),
        "captions": List(Value("string")),
        "label": ClassLabel(names=CATEGORIES),
        "objects": {
            "bbox": List(List(Value("int32"), length=4)),
            "category": List(ClassLabel(names=CATEGORIES)),
            "shape": List(Value("string")),
            "colour": List(Value("string")),
        },
        "masks": List(Image(mode="1")),
    }
)
TWIN_FEATURES = Features(
    {**FEATURES, "twins": List(Image(mode="RGB"), length=2), "twin_captions": List(List(Value("string")), length=2)}
)


def _outline(shape: str) -> np.ndarray:
    """The shape's polygon around the origin, (points, 2), scaled so that all shapes have similar visual size."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return 0.9 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = np.linspace(0, 2 * math.pi, 10, endpoint=False) - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.15, 0.5)
        return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "cross":
        arm = np.array([(0.33, 1), (-0.33, 1), (-0.33, 0.33)])  # one arm, then the same turned by 90° three times
        quarter_turn = np.array([[0, 1], [-1, 0]])  # (x, y) @ quarter_turn = (-y, x)
        return np.concatenate([arm @ np.linalg.matrix_power(quarter_turn, k) for k in range(4)])
    corners, scale = {"square": (4, 1.0), "triangle": (3, 1.15), "hexagon": (6, 1.0)}[shape]
    angles = np.linspace(0, 2 * math.pi, corners, endpoint=False) - math.pi / 2
    return scale * np.stack([np.cos(angles), np.sin(angles)], axis=1)


_OUTLINES = {shape: _outline(shape) for shape in SHAPES}
_EXTENTS = {shape: float(np.linalg.norm(outline, axis=1).max()) for shape, outline in _OUTLINES.items()}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted noise, gradient or stripe texture, (size, size, 3) float, with every pixel kept near grey."""
    base = (rng.uniform(40, 215, size=2)[:, None] + rng.uniform(-20, 20, size=(2, 3))).astype(np.float32)  # muted
    kind = rng.integers(3)
    if kind == 0:  # smooth blobs: coarse noise upsampled
        coarse = rng.uniform(0, 1, size=(int(rng.integers(2, 7)),) * 2)
        weight = np.asarray(
            PILImage.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), PILImage.BICUBIC), np.float32
        )
        weight = weight[..., None] / 255
    else:
        angle = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        along = xs * math.cos(angle) + ys * math.sin(angle)
        if kind == 1:  # linear gradient
            weight = ((along - along.min()) / (along.max() - along.min()))[..., None]
        else:  # stripes, hard or soft
            wave = np.sin(2 * math.pi * along * size / rng.uniform(4, 16) + rng.uniform(0, 2 * math.pi))
            weight = ((wave > 0) if rng.random() < 0.5 else (wave + 1) / 2)[..., None]
    texture = (
        base[0] * (1 - weight)
        + base[1] * weight
        + rng.uniform(2, 12) * rng.standard_normal((size, size, 3), dtype=np.float32)
    )
    grey = texture.mean(axis=-1, keepdims=True)
    return grey + np.clip(texture - grey, -BACKGROUND_SPREAD, BACKGROUND_SPREAD)


def _polygon_mask(shape: str, centre: np.ndarray, radius: float, angle: float, size: int) -> np.ndarray:
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = _OUTLINES[shape] @ rotation.T * radius + centre
    canvas = PILImage.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(point) for point in points.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def _png(image: PILImage.Image) -> dict:
    # Encoded here rather than by `datasets`, so that the bytes only depend on the pixels: no file name, no metadata.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return {"bytes": buffer.getvalue(), "path": None}


def _phrase_list(descriptions: list[str]) -> str:
    phrases = [f"{'an' if text[0] in 'aeiou' else 'a'} {text}" for text in descriptions]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_variants(objects: list[tuple[str, str]]) -> list[str]:
    """The captions of (shape, colour) `objects`: the full one, then by shape only and by colour only ("a red
    circle", "a circle", "a red shape"). Training on the partial ones too teaches a dual encoder colour and shape
    words apart, which is what lets it name pairs it never saw."""
    return [
        _phrase_list([f"{colour} {shape}" for shape, colour in objects]),
        _phrase_list([shape for shape, _ in objects]),
        _phrase_list([f"{colour} shape" for _, colour in objects]),
    ]


def _allowed(split: str) -> list[tuple[str, str]]:
    return [(s, c) for s in SHAPES for c in COLOURS if split == "test" or (s, c) not in HELD_OUT]


def _render(background: np.ndarray, objects: list[dict]) -> PILImage.Image:
    """The image with `objects` ({shape, colour, centre, radius, angle, jitter}) painted bottom to top."""
    image = background.copy()
    for drawn in objects:
        mask = _polygon_mask(drawn["shape"], drawn["centre"], drawn["radius"], drawn["angle"], background.shape[0])
        image[mask] = np.array(COLOURS[drawn["colour"]]) + drawn["jitter"]
    return PILImage.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def _twins(rng: np.random.Generator, split: str, background: np.ndarray, objects: list[dict]) -> dict:
    """The scene again with the first object recoloured, then with it reshaped (to partners `split` allows; all else
    unchanged), and for each the captions whose match with the image the change must leave alone: recolouring keeps
    every shape-only caption's, reshaping every colour-only caption's."""
    allowed = _allowed(split)
    shape, colour = objects[0]["shape"], objects[0]["colour"]
    colours = [c for s, c in allowed if s == shape and c != colour]
    shapes = [s for s, c in allowed if c == colour and s != shape]
    recoloured = {**objects[0], "colour": colours[rng.integers(len(colours))]}
    reshaped = {**objects[0], "shape": shapes[rng.integers(len(shapes))]}
    rest = [(drawn["shape"], drawn["colour"]) for drawn in objects[1:]]
    return {
        "twins": [_png(_render(background, [changed, *objects[1:]])) for changed in (recoloured, reshaped)],
        "twin_captions": [
            [caption_variants([(s, colour), *rest])[1] for s in SHAPES],
            [caption_variants([(shape, c), *rest])[2] for c in COLOURS],
        ],
    }


def _draw_example(
    rng: np.random.Generator,
    split: str,
    size: int,
    min_objects: int,
    max_objects: int,
    twin_rng: np.random.Generator | None = None,
) -> dict:
    allowed = _allowed(split)
    held_out = sorted(HELD_OUT)
    background = _background(rng, size)
    count = int(rng.integers(min_objects, max_objects + 1))
    # crowded images get smaller objects, so that every one of them can stay mostly visible
    max_radius = size * min(0.25, 0.45 / math.sqrt(count))
    min_radius = max(4.0, min(0.1 * size, 0.6 * max_radius))
    objects, full_areas, visible = [], [], []
    for index in range(count):
        pool = held_out if split == "test" and index == 0 else allowed
        shape, colour = pool[rng.integers(len(pool))]
        for _ in range(_PLACEMENT_TRIES):
            radius = rng.uniform(min_radius, max_radius)
            extent = radius * _EXTENTS[shape]  # whole shape inside the image
            centre = rng.uniform(extent, size - extent, size=2)
            angle = rng.uniform(0, 2 * math.pi)
            mask = _polygon_mask(shape, centre, radius, angle, size)
            # later objects are drawn over earlier ones; redraw this one elsewhere if it would bury one of them
            covered = [seen & ~mask for seen in visible]
            if all(kept.sum() >= (1 - MAX_HIDDEN) * area for kept, area in zip(covered, full_areas)):
                break
        else:
            raise RuntimeError(f"could not place {count} objects in a {size}x{size} image; use fewer objects")
        visible = covered + [mask]
        full_areas.append(int(mask.sum()))
        jitter = rng.integers(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER + 1)
        objects.append(dict(shape=shape, colour=colour, centre=centre, radius=radius, angle=angle, jitter=jitter))

    image = _render(background, objects)
    pairs = [(drawn["shape"], drawn["colour"]) for drawn in objects]
    boxes = []
    for mask in visible:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes.append([int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1])
    categories = [CATEGORIES.index(f"{colour} {shape}") for shape, colour in pairs]
    captions = caption_variants(pairs)
    twins = {} if twin_rng is None else _twins(twin_rng, split, background, objects)
    return {
        "image": _png(image),
        "caption": captions[0],
        "captions": captions,
        "label": categories[0],
        "objects": {
            "bbox": boxes,
            "category": categories,
            "shape": [shape for shape, _ in pairs],
            "colour": [colour for _, colour in pairs],
        },
        "masks": [_png(PILImage.fromarray(mask).convert("1")) for mask in visible],
        **twins,
    }


def generate(
    num_images: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    twins: bool = False,
) -> Dataset:
    """Draw `num_images` images of the shapes world as a `datasets.Dataset`.

    Columns:
        image: RGB, `image_size` x `image_size`.
        caption: every object, in drawing order: "a red circle, a blue star and an orange cross".
        captions: the caption, then by shape only ("a circle, a star and a cross") and by colour only ("a red
            shape, a blue shape and an orange shape"); `vitlm train zero-shot-image-classification` samples one per
            step.
        label: `ClassLabel` over `CATEGORIES`, the first object's category (the one for single-object classification).
        objects: `bbox` ([x0, y0, x1, y1] pixel corners of the visible part, x1 and y1 exclusive), `category`
            (`ClassLabel` over `CATEGORIES`), `shape` and `colour` (names), one entry per object in drawing order.
        masks: per object, a 1-bit image of its visible part (what later objects leave uncovered).
        twins (with `twins=True`): the same scene with the first object in another colour, then in another shape
            (pairs the split allows; background, centre, size, angle and shading unchanged, so a reshaped object
            with a longer reach, a star for a circle, can cross the image's edge or lose more to later objects).
        twin_captions (with `twins=True`): per twin, the captions whose match with the image the change must leave
            alone: all six shape-only captions for the recoloured twin (first object's shape varied), all eight
            colour-only ones for the reshaped twin. `vitlm train zero-shot-image-classification --twin-weight`
            trains on them.

    Objects are drawn bottom to top, each placed so that none of the earlier ones is hidden by more than
    `MAX_HIDDEN`. In "train" and "validation" no object is a `HELD_OUT` pair; in "test" the first object of every
    image is one (the others are any pair). Image `i` only depends on (`seed`, `split`, `i`, sizes, object counts),
    so the output is byte-for-byte reproducible and a larger `num_images` extends a smaller one.
    """
    for name, value in (("num_images", num_images), ("seed", seed), ("image_size", image_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} to draw recognisable shapes, got {image_size}")
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at most {MAX_IMAGE_SIZE} (the images are drawn in memory), got {image_size}"
        )
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )

    split_index = SPLITS.index(split)
    rows = []
    for index in tqdm(range(num_images), desc=f"Drawing shapes ({split})", disable=num_images < 1000):
        # one stream per image, keyed by a stable split index (never `hash(split)`, which is salted per process)
        rng = np.random.default_rng([int(seed), split_index, index])
        # the twins' own stream, so that asking for them leaves every other column as it was
        twin_rng = np.random.default_rng([int(seed), split_index, index, 1]) if twins else None
        rows.append(_draw_example(rng, split, int(image_size), min_objects, max_objects, twin_rng))

    features = TWIN_FEATURES if twins else FEATURES
    columns = {name: [row[name] for row in rows] for name in features}
    info = DatasetInfo(
        description=(
            f"vitlm shapes world, split {split!r}, seed {seed}, {image_size}px, {min_objects}-{max_objects} objects "
            f"per image; held-out pairs: {sorted(HELD_OUT)}"
        ),
        features=features,
    )
    return Dataset.from_dict(columns, features=features, info=info, split=split)


def to_imagefolder(dataset: Dataset, folder) -> pathlib.Path:
    """Write a `generate` data set as a folder that `load_dataset("imagefolder", data_dir=folder)` reads back.

    Images go to class subfolders named after the first object's category (`<folder>/red circle/000000.png`),
    masks to `<folder>/masks/`, and every other column to `metadata.jsonl`, which imagefolder joins back:
    `caption`, `label` and `objects` (class labels written as category names, since JSON has no class-label type;
    `ds.cast_column("label", ClassLabel(names=CATEGORIES))` restores them), and `masks` as a list of images.
    Images and masks are copied as the exact PNG bytes of `dataset`. `folder` must be new or empty.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} already exists and is not an empty directory")
    missing = {"image", "label"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"dataset lacks the columns {sorted(missing)}; expected one made by `generate`")

    image_columns = [name for name in ("image", "masks") if name in dataset.column_names]
    raw = dataset.cast_column("image", Image(decode=False))  # raw PNG bytes: written as they are, not re-encoded
    if "masks" in image_columns:
        raw = raw.cast_column("masks", List(Image(decode=False)))
    label_names = dataset.features["label"]
    category_names = dataset.features["objects"]["category"].feature if "objects" in dataset.column_names else None

    folder.mkdir(parents=True, exist_ok=True)
    if "masks" in image_columns:
        (folder / "masks").mkdir()
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index, row in enumerate(raw):
            name = label_names.int2str(row["label"])
            (folder / name).mkdir(exist_ok=True)
            record = {"file_name": f"{name}/{index:06d}.png"}
            (folder / record["file_name"]).write_bytes(row["image"]["bytes"])
            if "masks" in image_columns:
                record["masks_file_names"] = [f"masks/{index:06d}_{k}.png" for k in range(len(row["masks"]))]
                for path, mask in zip(record["masks_file_names"], row["masks"]):
                    (folder / path).write_bytes(mask["bytes"])
            for column, value in row.items():
                if column in image_columns:
                    continue
                if column == "label":
                    value = name
                elif column == "objects" and category_names is not None:
                    value = {**value, "category": [category_names.int2str(c) for c in value["category"]]}
                record[column] = value
            metadata.write(json.dumps(record) + "\n")
    return folder
