"""The vitlm demo: zero-shot classification, open-vocabulary detection, segmentation, inpainting and image search in
one Gradio app.

    vitlm demo [--host 127.0.0.1] [--port 7860] [--share]        # or: python demos/app.py

Each tab calls one plain function, usable without a browser (the tests call them directly):

- `classify(image, labels, templates, source)` -> ({label: probability}, attention overlay)
- `detect(image, queries, threshold, template, source, nms_threshold)` -> ((image, [(box, "query score")]), table rows)
- `inpaint(editor, source, samples, seed)` -> (original, [(completion, caption)])
- `segment(image, labels, template, source)` -> (overlay, legend rows [label, colour, area %])
- `search(text, image, collection, k, source)` -> ([(thumbnail, "score · name")], ranking rows)
- `model_status(task, source)` -> (markdown status, the model's prompt templates)

`vitlm demo` loads the default models before it serves, one line each on the terminal; a model loading on first use
later shows gradio's progress in its tab.

Bad input raises `gr.Error` with a message for the user (shown in the app, logged as one line, never a traceback); a
repairable one (duplicate labels, too many boxes) warns with `gr.Warning` and goes on.

Served on 127.0.0.1 the model selectors also read local folders; served to other machines (`--host 0.0.0.0`,
`--share`) they take only the default models and models on the Hub (`ModelStore(allow_local=False)`), unless the
demo is started with `--allow-local-models`.
"""

import collections
import functools
import hashlib
import html
import io
import ipaddress
import logging
import math
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import torch
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData

from ..attention_maps import attention_map
from ..models import VitlmDualEncoderForImageClassification, VitlmViTForInpaintingSynthesis
from ..models.image_processing_vitlm import as_pil_image, as_rgb
from ..models.modeling_dual_encoder import check_templates, default_templates
from ..overlays import blend, label_colours
from ..retrieval import FolderSource, MemorySource, embed_source, query_embedding
from ..retrieval.checks import check_text
from ..retrieval.index import top_k
from ..retrieval.sources import Source, decode
from .models import DEFAULT_SOURCE, TASKS, Loaded, ModelLoadError, ModelStore

MAX_PIXELS = 40_000_000
MAX_FILE_SIZE = 25 * 1024 * 1024  # bytes, per upload
MAX_LABELS = 64  # labels, or detection queries
MAX_TEMPLATES = 16
MAX_TEXT_LENGTH = 200  # characters in a label, query or template: tokenizing a long one stalls the requests behind it
MAX_BOX_LENGTH = 100_000  # characters in a text box, refused before it is parsed
MAX_DETECTIONS = 50
HEATMAP_SIDE = 1024  # the attention overlay is drawn on a copy at most this large
CONCURRENCY = 2  # requests computed at once; the others wait in the queue
QUEUE_SIZE = 64
DEFAULT_THRESHOLD = 0.2
# a box overlapping a better one of the same query by more than this IoU is dropped (class-aware NMS): the detector
# can put a second box on one object, shifted (the second example's pink cross: IoU 0.36) or nearly the same (its red
# circle: 0.9)
DEFAULT_NMS_THRESHOLD = 0.3
MAX_SAMPLES = 8  # inpainting completions per request
DEFAULT_SAMPLES = 4

# small images (the shapes world is 64 pixels wide) are shown enlarged, inpainting results pixel by pixel
CSS = """
#zero-shot-image img, #detection-image img, #zero-shot-heatmap img, #inpainting-original img,
#inpainting-result img, #segmentation-image img, #segmentation-result img {
  width: 100%; height: 100%; object-fit: contain;
}
#inpainting-original img, #inpainting-result img, #segmentation-result img { image-rendering: pixelated; }
"""

EXAMPLES = Path(__file__).resolve().parent / "examples"
# shapes world test images (tests/demo/test_app_functions.py draws them again): the first object of each is
# a pair held out of training, so a right answer is compositional generalisation
HELD_OUT_LABELS = "red circle, orange square, yellow triangle, green star, cyan hexagon, blue cross, purple triangle, "
HELD_OUT_LABELS += "pink star"
ZERO_SHOT_EXAMPLES = [[str(EXAMPLES / f"zero-shot-{i}.png"), HELD_OUT_LABELS] for i in range(3)]
DETECTION_EXAMPLES = [
    [str(EXAMPLES / "detection-0.png"), "pink star, green cross, red circle"],
    [str(EXAMPLES / "detection-1.png"), "red circle, pink cross, blue square"],
]
# the detection examples, segmented: each label's pixels, the held-out pairs among them
SEGMENTATION_EXAMPLES = [[path, labels] for path, labels in DETECTION_EXAMPLES]
INPAINTING_EXAMPLES = [
    {
        "background": str(EXAMPLES / "detection-1.png"),
        "layers": [str(EXAMPLES / "inpainting-mask.png")],
        "composite": str(EXAMPLES / "inpainting-composite.png"),
    },
    {"background": str(EXAMPLES / "zero-shot-2.png"), "layers": [], "composite": None},
]

_default_store = ModelStore()
logger = logging.getLogger(__name__)


def _escaped(text) -> str:
    # gr.Error, gr.Warning and gr.Markdown render HTML: user text must not become markup
    return html.escape(str(text), quote=False)


# a quoted path or an object's repr inside an error message
QUOTED_PATH = re.compile(r"\s*('[^']*[/\\][^']*'|\"[^\"]*[/\\][^\"]*\"|<[^<>]*>)")


def unreadable(name: str, error: Exception) -> gr.Error:
    """The refusal of an image PIL cannot read, saying why without the path PIL quotes: where the server keeps
    uploads is none of a remote user's business."""
    return refusal(f"Cannot read the {name}: {_escaped(QUOTED_PATH.sub('', str(error)))}")


def refusal(message: str) -> gr.Error:
    """The error that refuses a request, shown to the user; the server logs it as one line (gradio would print its
    traceback, as for a bug)."""
    logger.warning("vitlm demo: refused a request: %s", " ".join(message.split()))
    return gr.Error(message, print_exception=False)


def too_many_pixels(name: str = "image") -> gr.Error:
    """PIL refuses to open an image of more than twice `PIL.Image.MAX_IMAGE_PIXELS` (its decompression-bomb guard)."""
    return refusal(f"The {name} has more than {2 * PIL.Image.MAX_IMAGE_PIXELS:,} pixels; the limit is {MAX_PIXELS:,}.")


def open_image(image, name: str = "image") -> PIL.Image.Image | np.ndarray:
    """`image` (a file path, PIL image or array), opened without decoding, refusing missing, unreadable, oversized and
    huge ones."""
    if image is None:
        raise refusal(f"Upload an {name} first.")
    if isinstance(image, (str, os.PathLike)):
        if os.path.getsize(image) > MAX_FILE_SIZE:
            raise refusal(f"The {name} file has {os.path.getsize(image):,} bytes; the limit is {MAX_FILE_SIZE:,}.")
        try:
            with warnings.catch_warnings():  # PIL warns above its own limit; ours, below, refuses
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                image = PIL.Image.open(image)  # reads the header only: the size is known before decoding
        except PIL.Image.DecompressionBombError as error:
            raise too_many_pixels(name) from error
        except OSError as error:
            raise unreadable(name, error) from error
    size = image.size if isinstance(image, PIL.Image.Image) else np.shape(image)[:2]
    if math.prod(size) > MAX_PIXELS:
        raise refusal(f"The {name} has {math.prod(size):,} pixels; the limit is {MAX_PIXELS:,}.")
    return image


def load_image(image, name: str = "image") -> PIL.Image.Image:
    """An RGB copy of `image`, in any mode: transparency is composited on white, 16-bit and float images are mapped
    to 8 bits (see `open_image` for what is refused)."""
    image = open_image(image, name)
    try:
        if isinstance(image, PIL.Image.Image):
            image.load()
            image = PIL.ImageOps.exif_transpose(image)
        return as_rgb(as_pil_image(image))
    except (OSError, ValueError) as error:
        raise unreadable(name, error) from error


def check_length(text: str, what: str, limit: int = MAX_TEXT_LENGTH):
    """Refuse `text` longer than `limit` characters, before any work on it."""
    if len(text) > limit:
        raise refusal(f"{what} has {len(text):,} characters ({_escaped(repr(text[:30]))}...); the limit is {limit:,}.")


def parse_names(text, what: str, limit: int) -> list[str]:
    """Comma-separated names: blanks ignored, duplicates dropped with a warning, at least one and at most `limit`,
    each at most `MAX_TEXT_LENGTH` characters."""
    text = str(text or "")
    check_length(text, f"The box of {what}", MAX_BOX_LENGTH)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise refusal(f"Enter at least one of the {what}, separated by commas.")
    unique = list(dict.fromkeys(names))
    if len(unique) < len(names):
        repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
        gr.Warning(f"Duplicate {what} ignored: {_escaped(', '.join(repeated))}.")
    if len(unique) > limit:
        raise refusal(f"Too many {what}: {len(unique)}; the limit is {limit}.")
    for name in unique:
        check_length(name, f"One of the {what}")
    return unique


def parse_templates(text, model_config) -> list[str]:
    """One prompt template per line, each with a `{}` where the label goes; blank: the model's own."""
    text = str(text or "")
    check_length(text, "The box of prompt templates", MAX_BOX_LENGTH)
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    templates = list(dict.fromkeys(templates)) or default_templates(model_config)
    if len(templates) > MAX_TEMPLATES:
        raise refusal(f"Too many prompt templates: {len(templates)}; the limit is {MAX_TEMPLATES}.")
    for template in templates:
        check_length(template, "A prompt template")
        try:
            check_templates([template])
        except ValueError:
            raise refusal(
                f"The prompt template {_escaped(repr(template))} must contain {{}} where the label goes "
                "(and no other braces)."
            ) from None
    return templates


def check_threshold(threshold, what: str = "score threshold", above_zero: bool = False) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not (0.0 < value <= 1.0 if above_zero else 0.0 <= value <= 1.0):  # also refuses NaN
        interval = "above 0 and at most 1" if above_zero else "between 0 and 1"
        raise refusal(f"The {what} must be {interval}, got {_escaped(threshold)}.")
    return value


def get_model(task: str, source, store: ModelStore | None = None, progress=None) -> Loaded:
    """The tab's model; while it loads on first use, `progress` (the handler's `gr.Progress`) says so in the app."""
    try:
        return (store or _default_store).get(task, source, on_load=loading_status(progress))
    except ModelLoadError as error:
        raise refusal(_escaped(error)) from error


def loading_status(progress):
    """`ModelStore.get`'s `on_load` for a handler's `gr.Progress`: gradio shows the message over the handler's
    outputs until it returns (a model converted or downloaded on first use can take minutes)."""
    if progress is None:
        return None
    return lambda message: progress(0.0, desc=message)  # shown as text, not markup


def model_status(task: str, source, store: ModelStore | None = None, progress=None) -> tuple[str, list[str]]:
    """A markdown line saying which model the tab runs (or why it cannot load), and the model's prompt templates
    (empty for inpainting or when it failed)."""
    try:
        loaded = (store or _default_store).get(task, source, on_load=loading_status(progress))
    except ModelLoadError as error:
        return f"**Model not loaded.** {_escaped(error)}", []
    model = loaded.model
    count = sum(parameter.numel() for parameter in model.parameters())
    vision = getattr(model.config, "vision_config", model.config)
    size = vision.image_size if isinstance(vision.image_size, int) else "x".join(map(str, vision.image_size))
    status = f"Model: {_escaped(loaded.source)} — {type(model).__name__}, {count / 1e6:.1f}M parameters, {size}px"
    templates = default_templates(model.config) if hasattr(model.config, "text_config") else []
    return status, templates


# gradio passes a handler the event's progress tracker in the parameter that defaults to a `gr.Progress`: this one, put
# before `store`, since gradio fills only parameters it can pass positionally and `functools.partial(handler,
# store=...)` makes `store` and every later parameter keyword-only. Called outside an event, it does nothing.
PROGRESS = gr.Progress()


@torch.no_grad()
def classify(
    image, labels, templates=None, source=DEFAULT_SOURCE, progress=PROGRESS, store: ModelStore | None = None
) -> tuple[dict[str, float], PIL.Image.Image]:
    """Zero-shot classification: every label's probability, best first (softmax over the labels, or independent
    sigmoids for a sigmoid-loss model), and the image with the attention rollout of the image tower over it."""
    picture = load_image(image)
    labels = parse_names(labels, "labels", MAX_LABELS)
    loaded = get_model("zero-shot-image-classification", source, store, progress)
    templates = parse_templates(templates, loaded.model.config)
    classifier = (store or _default_store).cached(
        ("zero-shot classifier", loaded.source, tuple(labels), tuple(templates)),
        loaded.model,
        lambda: VitlmDualEncoderForImageClassification.from_dual_encoder(
            loaded.model, loaded.processor.tokenizer, labels, templates
        ),
    )
    image_processor = loaded.processor.image_processor
    pixel_values = image_processor(picture, return_tensors="pt")["pixel_values"]
    logits = classifier(pixel_values.to(classifier.device, classifier.dtype)).logits[0].float()
    probabilities = logits.sigmoid() if classifier.config.loss_type == "sigmoid" else logits.softmax(dim=-1)
    ranked = sorted(zip(labels, probabilities.tolist()), key=lambda pair: -pair[1])
    thumbnail = picture.copy()
    thumbnail.thumbnail((HEATMAP_SIDE, HEATMAP_SIDE))
    return dict(ranked), attention_map(classifier, thumbnail, image_processor).overlay


def run_text_queries(task: str, image, names, kind: str, template, source, store, progress):
    """The checked image and names (`kind` says which in messages), the task's model, and its outputs for the image
    queried with each name in the prompt template: what detection and segmentation share."""
    picture = load_image(image)
    names = parse_names(names, kind, MAX_LABELS)
    loaded = get_model(task, source, store, progress)
    template = parse_templates(template, loaded.model.config)[0]
    inputs = loaded.processor(
        images=picture,
        text=[template.format(name) for name in names],
        padding=True,
        truncation=True,
        return_tensors="pt",
    ).to(loaded.model.device)
    return picture, names, loaded, loaded.model(**inputs)


@torch.no_grad()
def detect(
    image,
    queries,
    threshold=DEFAULT_THRESHOLD,
    template=None,
    source=DEFAULT_SOURCE,
    nms_threshold=DEFAULT_NMS_THRESHOLD,
    progress=PROGRESS,
    store: ModelStore | None = None,
) -> tuple[tuple[PIL.Image.Image, list], list[list]]:
    """Open-vocabulary detection: the image with its boxes labelled "query score" (as `gr.AnnotatedImage` takes
    them, boxes (x0, y0, x1, y1) in the image's pixels), and one row per box [query, score, x0, y0, x1, y1], best
    first, at most `MAX_DETECTIONS`. A box overlapping a better box of the same query with an IoU above
    `nms_threshold` is dropped (1 keeps every box)."""
    threshold = check_threshold(threshold)
    nms_threshold = check_threshold(nms_threshold, "overlap (IoU) threshold", above_zero=True)
    picture, queries, loaded, outputs = run_text_queries(
        "zero-shot-object-detection", image, queries, "queries", template, source, store, progress
    )
    found = loaded.processor.post_process_object_detection(
        outputs, threshold, target_sizes=[(picture.height, picture.width)], nms_threshold=nms_threshold
    )[0]
    if len(found["scores"]) > MAX_DETECTIONS:
        gr.Warning(f"{len(found['scores'])} boxes score above {threshold:g}; showing the best {MAX_DETECTIONS}.")
    annotations, rows = [], []
    for score, label, box in list(zip(found["scores"], found["labels"], found["boxes"]))[:MAX_DETECTIONS]:
        x0, y0, x1, y1 = (round(value) for value in box.tolist())
        query, score = queries[int(label)], round(float(score), 3)
        annotations.append(((x0, y0, x1, y1), f"{query} {score:.2f}"))
        rows.append([query, score, x0, y0, x1, y1])
    return (picture, annotations), rows


@torch.no_grad()
def inpaint(
    editor,
    source=DEFAULT_SOURCE,
    samples=DEFAULT_SAMPLES,
    seed=0,
    progress=PROGRESS,
    store: ModelStore | None = None,
) -> tuple[PIL.Image.Image, list[tuple[PIL.Image.Image, str]]]:
    """Fill what the user painted: `editor` is `gr.ImageEditor`'s value, a dict with the `background` image and the
    painted `layers` (any pixel with alpha > 0 is masked). Returns the original and the completions, each equal to
    the original outside the mask, with a caption: `samples` of them, drawn from `seed` on, for a synthesis model
    (the default); one for a masked autoencoder, whose fill has nothing to draw."""
    if (
        isinstance(samples, bool)
        or not isinstance(samples, (int, float))
        or samples != int(samples)
        or not 1 <= samples <= MAX_SAMPLES
    ):
        raise refusal(f"The number of samples must be from 1 to {MAX_SAMPLES}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or seed != int(seed) or not 0 <= seed < 2**31:
        raise refusal(f"The seed must be a whole number from 0 to {2**31 - 1}.")
    editor = editor or {}
    picture = load_image(editor.get("background"))
    mask = np.zeros((picture.height, picture.width), dtype=bool)
    for layer in editor.get("layers") or []:
        alpha = load_alpha(layer)
        if alpha.size != picture.size:
            alpha = alpha.resize(picture.size, PIL.Image.Resampling.NEAREST)
        mask |= np.asarray(alpha) > 0
    if not mask.any():
        raise refusal("The mask is empty: paint over the area to fill with the brush first.")
    loaded = get_model("masked-image-modeling", source, store, progress)
    try:
        if isinstance(loaded.model, VitlmViTForInpaintingSynthesis):
            completions = loaded.model.inpaint(
                picture, mask, loaded.processor, num_samples=int(samples), seed=int(seed)
            )
            return picture, [(image, f"seed {int(seed)}, sample {i + 1}") for i, image in enumerate(completions)]
        inputs = loaded.processor.prepare_inpainting(picture, mask, loaded.model.config)
        inputs = inputs.to(loaded.model.device, loaded.model.dtype)
        outputs = loaded.model(**inputs)
        filled = loaded.processor.post_process_inpainting(outputs, inputs["pixel_values"], picture, mask)
        return picture, [(filled, "reconstruction (a masked autoencoder draws no samples)")]
    except ValueError as error:  # e.g. a model that predicts normalized pixels
        raise refusal(_escaped(error)) from error


SEGMENTATION_ALPHA = 0.5  # the overlay's weight over the image, as the attention maps'


@torch.no_grad()
def segment(
    image, labels, template=None, source=DEFAULT_SOURCE, progress=PROGRESS, store: ModelStore | None = None
) -> tuple[PIL.Image.Image, list[list]]:
    """Open-vocabulary segmentation: the image with each label's pixels coloured (the labels' colours spread along
    the attention maps' jet colour map, `vitlm.overlays`; pixels of none of the labels left as they are), and one
    legend row per label [label, colour (hex), share of the image's pixels in %], in the labels' order."""
    picture, labels, loaded, outputs = run_text_queries(
        "image-segmentation", image, labels, "labels", template, source, store, progress
    )
    image_processor = loaded.processor.image_processor
    label_map = (
        image_processor.post_process_semantic_segmentation(outputs, target_sizes=[(picture.height, picture.width)])[0]
        .cpu()
        .numpy()
    )  # 0: none of the labels, k: labels[k - 1]
    colours = label_colours(len(labels))
    painted = colours[np.clip(label_map - 1, 0, None)]
    overlay = blend(picture, painted, SEGMENTATION_ALPHA, where=label_map > 0)
    rows = [
        [label, "#{:02x}{:02x}{:02x}".format(*colour), round(100 * float((label_map == index).mean()), 2)]
        for index, (label, colour) in enumerate(zip(labels, colours.tolist()), start=1)
    ]
    return overlay, rows


def load_alpha(layer) -> PIL.Image.Image:
    """A painted layer's coverage: its alpha channel, or the image itself when it has none."""
    layer = open_image(layer, "painted mask")
    try:
        layer = layer if isinstance(layer, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(layer))
        return layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
    except (OSError, TypeError, ValueError) as error:
        raise refusal(f"Cannot read the painted mask: {_escaped(error)}") from error


# the Search tab: the shipped example collection is drawn from the shapes world on first use (the same images on
# every machine, nothing shipped), a folder is embedded inside the request
EXAMPLE_COLLECTION = "shapes world examples (256 images)"
EXAMPLE_COLLECTION_SIZE = 256
EXAMPLE_COLLECTION_SEED = 2026
MAX_COLLECTION_IMAGES = 2000  # in a folder; `vitlm embed` takes larger ones
MAX_RESULTS = 50
DEFAULT_RESULTS = 8
THUMBNAIL_SIDE = 256
# pairs the default model saw in training (the example images are drawn from the validation split, which has
# none of the held-out pairs), then a shape and a colour alone
SEARCH_EXAMPLES = ["a blue star", "a green circle", "a yellow square", "a triangle", "a red shape"]


@functools.cache
def example_collection() -> MemorySource:
    """The example collection: shapes-world images with one object each, named by number and caption."""
    from datasets import Image

    from ..data.shapes import generate

    shapes = generate(EXAMPLE_COLLECTION_SIZE, seed=EXAMPLE_COLLECTION_SEED, split="validation", max_objects=1)
    images = shapes.cast_column("image", Image(decode=False))["image"]
    ids = [f"{index:03d} {caption}" for index, caption in enumerate(shapes["caption"])]
    return MemorySource(ids, [image["bytes"] for image in images], {"kind": "example"})


def collection_source(collection, store: ModelStore) -> tuple[Source, tuple]:
    """The collection to search and its cache key: the example collection, or (served to this machine alone) the
    images of a local folder, keyed by their names and modification times so that a changed folder is embedded
    again."""
    name = str(collection or "").strip()
    if not name or name == EXAMPLE_COLLECTION:
        return example_collection(), ("example",)
    if not store.allow_local:
        # one message whatever the string is: it must not tell whether a path exists on the server
        raise refusal(
            "This public demo searches the example collection only. Folders are read only when the demo serves on "
            "127.0.0.1 (or is started with --allow-local-models)."
        )
    check_length(name, "The folder name", 4096)
    try:
        source = FolderSource(Path(name).expanduser())
    except ValueError as error:
        raise refusal(_escaped(error)) from error
    if not len(source):
        raise refusal(f"There are no images in {_escaped(name)}.")
    if len(source) > MAX_COLLECTION_IMAGES:
        raise refusal(
            f"{_escaped(name)} holds {len(source):,} images; the demo embeds at most {MAX_COLLECTION_IMAGES:,}. Index "
            "a larger collection with `vitlm embed` and search it with `vitlm search`."
        )
    modified = [os.stat(source.read(position)).st_mtime_ns for position in range(len(source))]
    return source, ("folder", str(source.root), tuple(source.ids), tuple(modified))


@torch.no_grad()
def search(
    text,
    image=None,
    collection=EXAMPLE_COLLECTION,
    k=DEFAULT_RESULTS,
    source=DEFAULT_SOURCE,
    progress=PROGRESS,
    store: ModelStore | None = None,
) -> tuple[list[tuple[PIL.Image.Image, str]], list[list]]:
    """The `k` images of `collection` (the example collection or a local folder) closest to the query text, the query
    image, or both (their embeddings' normalized sum): thumbnails captioned "score · name", and one row per image
    [rank, score, name], best first. Scores are cosine similarities."""
    store = store or _default_store
    text = str(text or "").strip() or None
    try:
        k = int(k)
    except (TypeError, ValueError):
        k = 0
    if not 1 <= k <= MAX_RESULTS:
        raise refusal(f"The number of results must be from 1 to {MAX_RESULTS}.")
    picture = load_image(image, "query image") if image is not None else None
    if text is None and picture is None:
        raise refusal("Type a query text or upload a query image (or both).")
    if text is not None:
        check_length(text, "The query")
        try:
            check_text(text)
        except ValueError as error:
            raise refusal(_escaped(error)) from error
    items, key = collection_source(collection, store)
    loaded = get_model("zero-shot-image-classification", source, store, progress)
    positions, embeddings, errors = store.cached(
        ("search collection", loaded.source, *key),
        loaded.model,
        lambda: embed_source(loaded.model, loaded.processor.image_processor, items),
    )
    if errors:
        gr.Warning(f"{len(errors)} images of the collection could not be read and are left out.")
    if not len(positions):
        raise refusal("No image of the collection could be read.")
    query = query_embedding(loaded.model, loaded.processor, text, picture)
    scores, rows = top_k(embeddings, query[None], k)
    gallery, table = [], []
    for rank, (score, row) in enumerate(zip(scores[0].tolist(), rows[0].tolist()), start=1):
        position = int(positions[row])
        thumbnail = decode(items.read(position))
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        gallery.append((thumbnail, f"{score:.3f} · {items.ids[position]}"))
        table.append([rank, round(score, 4), items.ids[position]])
    return gallery, table


def gallery_output(**options) -> gr.Gallery:
    """`gr.Gallery` for [(image, caption)], its images written by `cached_png` (see `image_output`)."""
    gallery = gr.Gallery(format="png", **options)
    postprocess = gallery.postprocess
    gallery.postprocess = lambda value: postprocess(
        [(cached_png(picture, gallery.GRADIO_CACHE), caption) for picture, caption in value] if value else value
    )
    return gallery


def _status_handler(task: str, store: ModelStore, show_templates=None):
    """The model selector's event handler: the status line, and for the text tabs (`show_templates`: the model's
    templates as the tab's templates box shows them) that box filled with the model's own (left as it is when the
    model failed to load)."""

    def update(source, progress=PROGRESS):
        status, templates = model_status(task, source, store, progress)
        if show_templates is None:
            return status
        if not templates:
            return status, gr.skip()
        return status, show_templates(templates)

    return update


def refusing_bad_input(component):
    """`component` whose own handling of a request's value, run by gradio before the handler, refuses what it cannot
    take with the app's messages and one line in the log (gradio logs a traceback, as for a bug, and answers with a
    processing error quoting the raw request): uploads PIL cannot read or its decompression-bomb guard trips on, a
    slider's or number's value out of its range, a dropdown's value not among its choices. Wrapped on the instance:
    gradio writes a stub file next to the module of any component subclass."""
    preprocess = component.preprocess

    def guarded(payload):
        try:
            return preprocess(payload)
        except PIL.Image.DecompressionBombError as error:
            raise too_many_pixels() from error
        except OSError as error:  # not an image, or a truncated one
            raise unreadable("image", error) from error
        except gr.Error as error:  # gradio's own checks: a range, the choices
            raise refusal(f"{component.label}: {error.message}") from None
        except (TypeError, ValueError):  # a value of the wrong type, e.g. text for a number
            raise refusal(f"{component.label}: {_escaped(repr(payload)[:80])} is not a valid value.") from None

    component.preprocess = guarded
    return component


def cached_png(image: PIL.Image.Image, cache_dir: str, name: str = "image") -> str:
    """`image` as a PNG file in gradio's cache, in a folder named by its content as gradio names its own, but never
    rewritten: the file is written under a temporary name and renamed into place, and left alone when it exists."""
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    path = Path(cache_dir) / hashlib.sha256(buffer.getvalue()).hexdigest() / f"{name}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{name}.", delete=False) as staging:
            staging.write(buffer.getvalue())
        os.replace(staging.name, path)
    return str(path)


# gradio writes an output image to a cache file named by its content, rewriting the file in place when it already
# exists: two requests with the same result (the same image, the same box) then cut each other's downloads, and 8 of
# 80 concurrent detections came back short ("Too little data for declared Content-Length"). The app's image outputs
# are written by `cached_png` instead, wrapped on the instance as in `refusing_bad_input`.


def image_output(**options) -> gr.Image:
    image = gr.Image(format="png", height=300, **options)
    postprocess = image.postprocess
    image.postprocess = lambda value: postprocess(
        cached_png(value, image.GRADIO_CACHE) if isinstance(value, PIL.Image.Image) else value
    )
    return image


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> PIL.Image.Image:
    """How `gr.AnnotatedImage` draws a box: a translucent red rectangle with an opaque 3-pixel frame."""
    mask = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:  # PIL's rectangle includes its far corner
        corners = (x0, y0, x1 - 1, y1 - 1)
        PIL.ImageDraw.Draw(mask).rectangle(corners, fill=(255, 0, 0, 127), outline=(255, 0, 0), width=3)
    return mask


def annotated_output(**options) -> gr.AnnotatedImage:
    """`gr.AnnotatedImage` for (image, [(box, label)]), its image and box masks written by `cached_png`."""
    annotated = gr.AnnotatedImage(format="png", **options)

    def postprocess(value) -> AnnotatedImageData | None:
        if value is None:
            return None
        picture, boxes = value
        cache = annotated.GRADIO_CACHE
        annotations = [
            Annotation(image=FileData(path=cached_png(box_mask(picture.size, box), cache, "mask")), label=label)
            for box, label in boxes
        ]
        return AnnotatedImageData(image=FileData(path=cached_png(picture, cache)), annotations=annotations)

    annotated.postprocess = postprocess
    return annotated


def image_input(elem_id: str) -> gr.Image:
    # the uploaded file as it is (any mode): `load_image` checks its size before decoding it
    return gr.Image(
        type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Image", height=300, elem_id=elem_id
    )


def model_selector(task: str, choices: list[str], store: ModelStore) -> gr.Dropdown:
    local = "a local folder, " if store.allow_local else ""
    return gr.Dropdown(
        [DEFAULT_SOURCE, *choices],
        value=DEFAULT_SOURCE,
        allow_custom_value=True,
        label="Model",
        info=f"default (shapes world), {local}a vitlm Hub repo id, or a converter source "
        "(open_clip:..., hf:..., timm:...), converted on first use and cached",
        elem_id=f"{task}-model",
    )


def build_app(store: ModelStore | None = None) -> gr.Blocks:
    """The three-tab app; `store` loads and caches the models (default: one shared by every app of the process,
    which reads local folders: pass `ModelStore(allow_local=False)` to serve the app beyond this machine)."""
    store = store or _default_store
    with gr.Blocks(title="vitlm demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# vitlm demo\nZero-shot classification, open-vocabulary detection, segmentation, inpainting and image "
            "search with vitlm models. The default models are small and were trained on the synthetic *shapes world* "
            "(coloured shapes on textured backgrounds): try them on its images, or pick a pretrained model."
        )
        with gr.Tab("Zero-shot classification", id="zero-shot-image-classification"):
            with gr.Row():
                with gr.Column():
                    image = image_input("zero-shot-image")
                    labels = gr.Textbox(HELD_OUT_LABELS, label="Labels (comma-separated)", elem_id="zero-shot-labels")
                    templates = gr.Textbox(
                        label="Prompt templates (one per line, {} stands for the label)",
                        lines=2,
                        elem_id="zero-shot-templates",
                    )
                    source = model_selector(
                        "zero-shot-image-classification",
                        ["open_clip:ViT-B-32/laion2b_s34b_b79k", "hf:openai/clip-vit-base-patch32"],
                        store,
                    )
                    status = gr.Markdown(label="Model status", elem_id="zero-shot-status")
                    button = gr.Button("Classify", variant="primary", elem_id="zero-shot-button")
                with gr.Column():
                    probabilities = gr.Label(num_top_classes=10, label="Probabilities", elem_id="zero-shot-result")
                    heatmap = image_output(label="Attention rollout", elem_id="zero-shot-heatmap")
            gr.Examples(ZERO_SHOT_EXAMPLES, [image, labels])
            button.click(
                functools.partial(classify, store=store),
                [image, labels, templates, source],
                [probabilities, heatmap],
                api_name="classify",
            )
            # (tab, its model selector, what a model change updates, how the templates box shows the model's)
            selectors = [("zero-shot-image-classification", source, [status, templates], "\n".join)]

        with gr.Tab("Open-vocabulary detection", id="zero-shot-object-detection"):
            with gr.Row():
                with gr.Column():
                    image = image_input("detection-image")
                    queries = gr.Textbox(
                        DETECTION_EXAMPLES[0][1], label="Text queries (comma-separated)", elem_id="detection-queries"
                    )
                    with gr.Row():
                        threshold = gr.Slider(
                            0, 1, DEFAULT_THRESHOLD, step=0.01, label="Score threshold", elem_id="detection-threshold"
                        )
                        nms_threshold = gr.Slider(
                            0.05,
                            1,
                            DEFAULT_NMS_THRESHOLD,
                            step=0.05,
                            label="Overlap (IoU) threshold",
                            info="a box overlapping a better one of the same query by more than this is dropped; "
                            "1 keeps them all",
                            elem_id="detection-nms-threshold",
                        )
                    template = gr.Textbox(
                        label="Prompt template ({} stands for the query)", elem_id="detection-template"
                    )
                    source = model_selector("zero-shot-object-detection", ["hf:google/owlvit-base-patch32"], store)
                    status = gr.Markdown(label="Model status", elem_id="detection-status")
                    button = gr.Button("Detect", variant="primary", elem_id="detection-button")
                with gr.Column():
                    boxes = annotated_output(label="Detections", elem_id="detection-result")
                    table = gr.Dataframe(
                        headers=["query", "score", "x0", "y0", "x1", "y1"],
                        label="Boxes (pixels)",
                        interactive=False,
                        elem_id="detection-table",
                    )
            gr.Examples(DETECTION_EXAMPLES, [image, queries])
            # the IoU threshold last: API clients that pass the five other inputs get its default
            inputs, outputs = [image, queries, threshold, template, source, nms_threshold], [boxes, table]
            handler = functools.partial(detect, store=store)
            button.click(handler, inputs, outputs, api_name="detect")
            for slider in (threshold, nms_threshold):
                slider.release(handler, inputs, outputs, api_visibility="private")
            selectors.append(
                ("zero-shot-object-detection", source, [status, template], lambda templates: templates[0])
            )

        with gr.Tab("Segmentation", id="image-segmentation"):
            with gr.Row():
                with gr.Column():
                    image = image_input("segmentation-image")
                    labels = gr.Textbox(
                        SEGMENTATION_EXAMPLES[0][1], label="Labels (comma-separated)", elem_id="segmentation-labels"
                    )
                    template = gr.Textbox(
                        label="Prompt template ({} stands for the label)", elem_id="segmentation-template"
                    )
                    source = model_selector("image-segmentation", [], store)
                    status = gr.Markdown(label="Model status", elem_id="segmentation-status")
                    button = gr.Button("Segment", variant="primary", elem_id="segmentation-button")
                with gr.Column():
                    overlay = image_output(label="Segmentation", elem_id="segmentation-result")
                    legend = gr.Dataframe(
                        headers=["label", "colour", "area %"],
                        label="Legend",
                        interactive=False,
                        elem_id="segmentation-legend",
                    )
            gr.Examples(SEGMENTATION_EXAMPLES, [image, labels])
            button.click(
                functools.partial(segment, store=store),
                [image, labels, template, source],
                [overlay, legend],
                api_name="segment",
            )
            selectors.append(("image-segmentation", source, [status, template], lambda templates: templates[0]))

        with gr.Tab("Inpainting", id="masked-image-modeling"):
            with gr.Row():
                editor = gr.ImageEditor(
                    type="pil",
                    image_mode="RGBA",
                    sources=["upload", "clipboard"],
                    transforms=(),
                    layers=False,
                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=6),
                    label="Image: paint over what to fill",
                    height=400,
                    elem_id="inpainting-editor",
                )
                with gr.Column():
                    original = image_output(label="Original", elem_id="inpainting-original")
                    filled = gallery_output(
                        label="Completions (one per sample)", columns=4, height=300, elem_id="inpainting-result"
                    )
                    with gr.Row():
                        samples = gr.Slider(
                            1, MAX_SAMPLES, DEFAULT_SAMPLES, step=1, label="Samples", elem_id="inpainting-samples"
                        )
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="inpainting-seed")
                    source = model_selector("masked-image-modeling", ["hf:facebook/vit-mae-base"], store)
                    status = gr.Markdown(label="Model status", elem_id="inpainting-status")
                    button = gr.Button("Inpaint", variant="primary", elem_id="inpainting-button")
            gr.Examples([[example] for example in INPAINTING_EXAMPLES], [editor])
            button.click(
                functools.partial(inpaint, store=store),
                [editor, source, samples, seed],
                [original, filled],
                api_name="inpaint",
            )
            selectors.append(("masked-image-modeling", source, [status], None))

        with gr.Tab("Search", id="search"):
            with gr.Row():
                with gr.Column():
                    query = gr.Textbox(SEARCH_EXAMPLES[0], label="Query text", elem_id="search-text")
                    query_image = image_input("search-image")
                    query_image.label = "Query image (optional; with a text, both count)"
                    collection = gr.Dropdown(
                        [EXAMPLE_COLLECTION],
                        value=EXAMPLE_COLLECTION,
                        allow_custom_value=store.allow_local,
                        label="Collection",
                        info="the example collection"
                        + (
                            f", or a folder of this machine (up to {MAX_COLLECTION_IMAGES:,} images)"
                            if store.allow_local
                            else ""
                        ),
                        elem_id="search-collection",
                    )
                    count = gr.Slider(1, MAX_RESULTS, DEFAULT_RESULTS, step=1, label="Results", elem_id="search-k")
                    source = model_selector(
                        "search", ["open_clip:ViT-B-32/laion2b_s34b_b79k", "hf:openai/clip-vit-base-patch32"], store
                    )
                    status = gr.Markdown(label="Model status", elem_id="search-status")
                    button = gr.Button("Search", variant="primary", elem_id="search-button")
                with gr.Column():
                    results = gallery_output(label="Closest images", columns=4, elem_id="search-results")
                    ranking = gr.Dataframe(
                        headers=["rank", "score", "image"], label="Ranking", interactive=False, elem_id="search-table"
                    )
            gr.Examples([[example] for example in SEARCH_EXAMPLES], [query])
            button.click(
                functools.partial(search, store=store),
                [query, query_image, collection, count, source],
                [results, ranking],
                api_name="search",
            )
            # the Search tab runs the zero-shot tab's kind of model (a dual encoder); its own status endpoint
            handler = _status_handler("zero-shot-image-classification", store)
            source.change(handler, source, status, api_name="search_model")
            demo.load(handler, source, status, api_visibility="private")

        for task, source, outputs, show_templates in selectors:
            handler = _status_handler(task, store, show_templates)
            source.change(handler, source, outputs, api_name=f"{task.replace('-', '_')}_model")
            demo.load(handler, source, outputs, api_visibility="private")
        for block in demo.blocks.values():  # every control a request's values pass through
            if isinstance(block, (gr.Image, gr.ImageEditor, gr.Slider, gr.Number, gr.Dropdown)):
                refusing_bad_input(block)
    return demo


def is_loopback(host: str) -> bool:
    """Whether `host` serves this machine only (127.0.0.1, ::1, localhost)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, which other machines may reach
        return False


def log_to_terminal():
    """Show the demo's log lines (model loads, refused requests) on the terminal, unless logging is configured
    already (by the user, or by pytest): Python shows no INFO lines by default."""
    demo_logger = logging.getLogger("vitlm.demo")
    if not demo_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        demo_logger.addHandler(handler)
        demo_logger.setLevel(logging.INFO)


def load_default_models(store: ModelStore):
    """Load the default models before the app serves, saying so on the terminal (on a first start, with torch's
    libraries still to be read from disk and CUDA to be started, the demo was silent for tens of seconds). A model
    that fails to load is reported here and again in its tab; the other tabs serve."""
    start, loaded = time.perf_counter(), 0
    logger.info("vitlm demo: loading the default models (%s) on %s before serving", ", ".join(TASKS), store.device)
    for task in TASKS:
        try:
            store.get(task, DEFAULT_SOURCE)
            loaded += 1
        except ModelLoadError as error:
            logger.warning("vitlm demo: the default %s model did not load: %s", task, error)
    seconds = time.perf_counter() - start
    logger.info(
        "vitlm demo: %d of %d default models loaded in %.1f s; starting the server", loaded, len(TASKS), seconds
    )


def launch(
    host: str = "127.0.0.1", port: int = 7860, share: bool = False, allow_local_models: bool = False, **launch_kwargs
) -> gr.Blocks:
    """Load the default models, build the app, queue its requests and serve it (blocking, unless
    `prevent_thread_lock=True` is passed). The model selectors read local folders only when the app serves this
    machine alone (`host` a loopback address and no `share`), or with `allow_local_models`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the demo runs offline
    log_to_terminal()
    # gradio decodes the image editor's uploads before the handler can look at their size: PIL then refuses any
    # image of more than twice MAX_PIXELS (between once and twice, `load_image` refuses it undecoded)
    PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    store = ModelStore(allow_local=allow_local_models or (is_loopback(host) and not share))
    load_default_models(store)
    demo = build_app(store).queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        show_error=True,
        max_file_size=MAX_FILE_SIZE,
        css=CSS,
        **launch_kwargs,
    )
    return demo
