"""The demo's functions called directly, with the shipped default models: results, validation messages, model
sources (failing, of the wrong kind, converted once and cached), and the shipped examples."""

import json
import logging
import math
import pathlib
import re
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

import vitlm.convert
from vitlm.clip_bpe import clip_tokenizer
from vitlm.demo import app
from vitlm.demo.app import (
    DEFAULT_NMS_THRESHOLD,
    DEFAULT_THRESHOLD,
    DETECTION_EXAMPLES,
    INPAINTING_EXAMPLES,
    SEGMENTATION_ALPHA,
    SEGMENTATION_EXAMPLES,
    ZERO_SHOT_EXAMPLES,
    classify,
    detect,
    inpaint,
    load_image,
    model_status,
    segment,
)
from vitlm.demo.models import DEFAULT_MODELS, TASKS, ModelLoadError, ModelStore, cache_name
from vitlm.models import VitlmDualEncoderProcessor

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
LABELS = "red circle, pink star, yellow triangle, orange square"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ModelStore(cache_dir=tmp_path_factory.mktemp("converted"), device="cpu")


def shapes_image(index=0) -> PIL.Image.Image:
    return PIL.Image.open(ZERO_SHOT_EXAMPLES[index][0])


def painted_mask(size, box) -> PIL.Image.Image:
    """A brush layer as the image editor sends it: transparent, with opaque paint inside `box`."""
    layer = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), box)
    return layer


def test_classify_ranks_every_label(store):
    image = shapes_image()
    probabilities, overlay = classify(image, LABELS, "", store=store)
    assert sorted(probabilities) == sorted(name.strip() for name in LABELS.split(","))
    values = list(probabilities.values())
    assert values == sorted(values, reverse=True)
    assert math.isclose(sum(values), 1.0, abs_tol=1e-5)  # the default model is softmax-trained
    assert all(0 <= value <= 1 for value in values)
    assert isinstance(overlay, PIL.Image.Image) and overlay.size == image.size and overlay.mode == "RGB"


def test_classify_uses_the_templates(store):
    plain, _ = classify(shapes_image(), LABELS, "a photo of a {}.", store=store)
    ensemble, _ = classify(shapes_image(), LABELS, "a photo of a {}.\na drawing of a {}.", store=store)
    assert plain != ensemble


def test_detect_boxes_lie_inside_the_image(store):
    image = PIL.Image.open(DETECTION_EXAMPLES[0][0])
    queries = ["pink star", "green cross", "red circle"]
    (picture, annotations), rows = detect(image, ", ".join(queries), 0.0, store=store)
    assert picture.size == image.size
    assert rows, "threshold 0 keeps every box"
    assert len(annotations) == len(rows)
    scores = [row[1] for row in rows]
    assert scores == sorted(scores, reverse=True)
    for (box, label), (query, score, x0, y0, x1, y1) in zip(annotations, rows):
        assert query in queries and 0 <= score <= 1
        assert box == (x0, y0, x1, y1) and label == f"{query} {score:.2f}"
        assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height
    _, none = detect(image, ", ".join(queries), 1.0, store=store)
    assert none == []


def test_detect_caps_the_number_of_boxes(store, monkeypatch):
    monkeypatch.setattr(app, "MAX_DETECTIONS", 2)
    with pytest.warns(UserWarning, match="showing the best 2"):
        (_, annotations), rows = detect(shapes_image(), "pink star, red circle", 0.0, store=store)
    assert len(rows) == len(annotations) == 2


def same_query_overlaps(rows) -> list[float]:
    """The IoU of every two boxes of the same query among rows [query, score, x0, y0, x1, y1]."""
    overlaps = []
    for index, (query, _, *box) in enumerate(rows):
        for other_query, _, *other in rows[index + 1 :]:
            if query == other_query:
                width = max(0, min(box[2], other[2]) - max(box[0], other[0]))
                height = max(0, min(box[3], other[3]) - max(box[1], other[1]))
                areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (box, other)]
                overlaps.append(width * height / (sum(areas) - width * height))
    return overlaps


@pytest.fixture
def post_processed(monkeypatch):
    """Every call `detect` makes to post-processing: its IoU threshold and its boxes before rounding to pixels, as
    rows [label, score, x0, y0, x1, y1]."""
    calls, post_process = [], VitlmDualEncoderProcessor.post_process_object_detection

    def recorded(*args, **kwargs):
        [result] = post_process(*args, **kwargs)
        columns = (result[name].tolist() for name in ("labels", "scores", "boxes"))
        rows = [[label, score, *box] for label, score, box in zip(*columns)]
        calls.append((kwargs["nms_threshold"], rows))
        return [result]

    monkeypatch.setattr(VitlmDualEncoderProcessor, "post_process_object_detection", recorded)
    return calls


@pytest.mark.parametrize("example", [0, 1])
def test_detect_shows_one_box_per_object_of_the_examples(store, post_processed, example):
    """The demo's own second example showed two boxes on its red circle and two on its pink cross: by default (the
    slider's value) a box overlapping a better one of the same query by more than DEFAULT_NMS_THRESHOLD is dropped,
    which leaves one box per object, on it."""
    from vitlm.data.shapes import generate

    image, queries = DETECTION_EXAMPLES[example]
    objects = generate(4, seed=0, split="test", min_objects=2, max_objects=3)[2 + example]["objects"]
    truth = {
        f"{colour} {shape}": box for colour, shape, box in zip(*(objects[k] for k in ("colour", "shape", "bbox")))
    }
    _, shown = detect(image, queries, store=store)
    assert sorted(row[0] for row in shown) == sorted(truth), shown
    for query, _, x0, y0, x1, y1 in shown:  # each box centred on its object
        left, top, right, bottom = truth[query]
        assert left < (x0 + x1) / 2 < right and top < (y0 + y1) / 2 < bottom, (query, shown)
    for nms_threshold in (DEFAULT_NMS_THRESHOLD, 0.5, 0.8):  # every box above the score threshold
        detect(image, queries, 0.0, nms_threshold=nms_threshold, store=store)
        used, rows = post_processed[-1]
        assert used == nms_threshold and len(rows) > 10
        assert all(iou <= nms_threshold for iou in same_query_overlaps(rows))


def test_the_iou_slider_reaches_post_processing(store, post_processed):
    image, queries = DETECTION_EXAMPLES[1]
    _, everything = detect(image, queries, DEFAULT_THRESHOLD, nms_threshold=1.0, store=store)
    assert max(same_query_overlaps(everything)) > DEFAULT_NMS_THRESHOLD  # the duplicate the default drops
    _, default = detect(image, queries, DEFAULT_THRESHOLD, store=store)
    assert len(default) < len(everything) and all(row in everything for row in default)
    detect(image, queries, DEFAULT_THRESHOLD, "", "default", 0.35, store=store)  # as the app passes its inputs
    assert [used for used, _ in post_processed] == [1.0, DEFAULT_NMS_THRESHOLD, 0.35]


@pytest.mark.parametrize("nms_threshold", [0, -0.1, 1.5, "x", None, math.nan])
def test_detect_refuses_bad_iou_thresholds(store, nms_threshold):
    with pytest.raises(gr.Error, match="overlap \\(IoU\\) threshold must be above 0 and at most 1"):
        detect(shapes_image(), LABELS, 0.5, nms_threshold=nms_threshold, store=store)


def test_a_model_loading_on_first_use_shows_progress_in_the_app(tmp_path):
    """Each handler's `gr.Progress` says that the model is loading, and only while it is not in memory yet."""
    store, shown = ModelStore(cache_dir=tmp_path, device="cpu"), []

    def progress(value, desc=None):
        shown.append((value, desc))

    message = (0.0, "Loading the model 'default' (first use)...")
    model_status("zero-shot-image-classification", "default", store, progress)
    classify(shapes_image(), LABELS, "", progress=progress, store=store)  # loaded by the status line
    assert shown == [message]
    detect(shapes_image(), LABELS, progress=progress, store=store)
    model_status("zero-shot-object-detection", "default", store, progress)
    assert shown == [message] * 2
    editor = {"background": INPAINTING_EXAMPLES[0]["background"], "layers": INPAINTING_EXAMPLES[0]["layers"]}
    inpaint(editor, progress=progress, store=store)
    assert shown == [message] * 3
    with pytest.raises(gr.Error, match="no model folder"):
        detect(shapes_image(), LABELS, source=str(tmp_path / "missing"), progress=progress, store=store)
    assert shown[-1] == (0.0, f"Loading the model {str(tmp_path / 'missing')!r} (first use)...")


def test_gradio_tracks_the_progress_of_every_handler(store):
    demo = app.build_app(store)
    untracked = {fn.name for fn in demo.fns.values() if not fn.tracks_progress}
    assert untracked == {"load_example"}  # gr.Examples filling the inputs
    tracked = {fn.api_name for fn in demo.fns.values() if fn.tracks_progress}
    models = [
        "zero_shot_image_classification_model",
        "zero_shot_object_detection_model",
        "masked_image_modeling_model",
    ]
    assert {"classify", "detect", "inpaint", *models} <= tracked


def test_the_default_models_load_before_serving_saying_so(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="vitlm.demo")
    detection = "zero-shot-object-detection"
    monkeypatch.setitem(TASKS, detection, TASKS[detection]._replace(folder="missing"))  # one fails to load
    store = ModelStore(cache_dir=tmp_path, device="cpu")
    app.load_default_models(store)
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("vitlm.demo")]
    expected = [
        "vitlm demo: loading the default models \\(zero-shot-image-classification, zero-shot-object-detection, "
        "masked-image-modeling, image-segmentation\\) on cpu before serving",
        "vitlm demo: loading the zero-shot-image-classification model 'default'\\.\\.\\.",
        "vitlm demo: loaded the zero-shot-image-classification model 'default' in [0-9.]+ s",
        "vitlm demo: loading the zero-shot-object-detection model 'default'\\.\\.\\.",
        f"vitlm demo: the default zero-shot-object-detection model did not load: no model folder at "
        f"'{DEFAULT_MODELS}/missing'",
        "vitlm demo: loading the masked-image-modeling model 'default'\\.\\.\\.",
        "vitlm demo: loaded the masked-image-modeling model 'default' in [0-9.]+ s",
        "vitlm demo: loading the image-segmentation model 'default'\\.\\.\\.",
        "vitlm demo: loaded the image-segmentation model 'default' in [0-9.]+ s",
        "vitlm demo: 3 of 4 default models loaded in [0-9.]+ s; starting the server",
    ]
    assert len(lines) == len(expected) and all(re.fullmatch(*pair) for pair in zip(expected, lines)), lines
    assert len(store._loaded) == 3


@pytest.mark.parametrize("example", SEGMENTATION_EXAMPLES)
def test_segment_colours_each_labels_pixels_and_measures_their_area(store, example):
    """The overlay is the image with each label's colour (from `vitlm.overlays`, the attention maps' scale) blended
    over the pixels the post-processed label map gives it, and nothing elsewhere; the legend's areas are those
    pixels' shares."""
    from vitlm.overlays import blend, label_colours

    path, labels = example
    picture = PIL.Image.open(path).convert("RGB")
    overlay, rows = segment(path, labels, store=store)
    names = [name.strip() for name in labels.split(",")]
    assert [row[0] for row in rows] == names
    colours = label_colours(len(names))
    assert [row[1] for row in rows] == ["#{:02x}{:02x}{:02x}".format(*colour) for colour in colours.tolist()]
    loaded = store.get("image-segmentation", "default")
    inputs = loaded.processor(images=picture, text=[f"a {name}" for name in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = loaded.model(**inputs)
    label_map = loaded.processor.image_processor.post_process_semantic_segmentation(
        outputs, target_sizes=[picture.size[::-1]]
    )[0].numpy()
    expected = blend(picture, colours[np.clip(label_map - 1, 0, None)], SEGMENTATION_ALPHA, where=label_map > 0)
    assert overlay.size == picture.size and (np.asarray(overlay) == np.asarray(expected)).all()
    for index, row in enumerate(rows, start=1):
        assert row[2] == round(100 * float((label_map == index).mean()), 2)
    assert sum(row[2] for row in rows) > 0  # the examples' objects are found


def test_attention_maps_and_segmentation_share_one_colour_convention(store):
    from vitlm.attention_maps import attention_map
    from vitlm.overlays import blend, jet, label_colours

    assert (label_colours(4) == jet(np.array([0.125, 0.375, 0.625, 0.875]))).all()
    loaded = store.get("zero-shot-image-classification", "default")
    picture = shapes_image().convert("RGB")
    maps = attention_map(loaded.model, picture, loaded.processor.image_processor)
    assert (np.asarray(maps.overlay) == np.asarray(blend(picture, jet(maps.heatmap), SEGMENTATION_ALPHA))).all()


@pytest.mark.parametrize(
    "labels,message", [(" , ", "Enter at least one of the labels"), ("a" * 201, "the limit is 200")]
)
def test_segment_refuses_bad_labels(store, labels, message):
    with pytest.raises(gr.Error, match=message):
        segment(SEGMENTATION_EXAMPLES[0][0], labels, store=store)


def test_segment_refuses_a_missing_image(store):
    with pytest.raises(gr.Error):
        segment(None, "red circle", store=store)


def test_inpaint_changes_only_the_masked_pixels(store):
    image = PIL.Image.open(INPAINTING_EXAMPLES[0]["background"]).convert("RGB")
    layer = painted_mask(image.size, (10, 12, 40, 30))
    editor = {"background": image, "layers": [layer], "composite": None}
    original, completions = inpaint(editor, samples=3, seed=5, store=store)
    mask = np.asarray(layer)[..., 3] > 0
    before = np.asarray(original)
    assert (before == np.asarray(image)).all() and len(completions) == 3
    for (filled, caption), number in zip(completions, (1, 2, 3)):
        after = np.asarray(filled)
        assert filled.size == image.size and filled.mode == "RGB" and caption == f"seed 5, sample {number}"
        assert (after[~mask] == before[~mask]).all()
        assert (after[mask] != before[mask]).any()
    # the samples differ where the mask hides the image, and a seed gives the same ones again
    assert not (np.asarray(completions[0][0]) == np.asarray(completions[1][0])).all()
    _, again = inpaint(editor, samples=3, seed=5, store=store)
    assert all((np.asarray(a) == np.asarray(b)).all() for (a, _), (b, _) in zip(completions, again))


def test_inpaint_with_a_masked_autoencoder_gives_its_one_reconstruction(store):
    editor = {**INPAINTING_EXAMPLES[0], "composite": None}
    original, completions = inpaint(editor, str(DEFAULT_MODELS / "inpainting"), samples=4, store=store)
    assert len(completions) == 1 and completions[0][0].size == original.size
    assert completions[0][1].startswith("reconstruction")


def test_inpaint_example_runs(store):
    example = INPAINTING_EXAMPLES[0]
    editor = {"background": example["background"], "layers": example["layers"], "composite": None}
    original, completions = inpaint(editor, store=store)
    assert len(completions) == app.DEFAULT_SAMPLES
    assert all(filled.size == original.size for filled, _ in completions)


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("RGBA", lambda rgb: rgb.convert("RGBA")),
        ("LA", lambda rgb: rgb.convert("LA")),
        ("P", lambda rgb: rgb.convert("P")),
        ("L", lambda rgb: rgb.convert("L")),
        ("1", lambda rgb: rgb.convert("1")),
        ("CMYK", lambda rgb: rgb.convert("CMYK")),
        ("I;16", lambda rgb: PIL.Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)),
        ("I", lambda rgb: rgb.convert("I")),
    ],
)
def test_any_image_mode_is_classified(store, mode, make):
    image = make(shapes_image())
    assert image.mode == mode
    probabilities, overlay = classify(image, LABELS, "", store=store)
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-5) and overlay.mode == "RGB"


def test_transparency_is_composited_on_white_and_16_bit_is_scaled():
    rgba = PIL.Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # red, fully transparent
    assert np.asarray(load_image(rgba)).tolist() == [[[255, 255, 255]] * 4] * 4
    sixteen = PIL.Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert (np.asarray(load_image(sixteen)) == 255).all()


def test_image_validation_messages(tmp_path, monkeypatch):
    with pytest.raises(gr.Error, match="Upload an image"):
        load_image(None)
    with pytest.raises(gr.Error, match="42,000,000 pixels; the limit is 40,000,000"):
        load_image(PIL.Image.new("1", (7000, 6000)))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(gr.Error, match="Cannot read the image") as unreadable:
        load_image(str(not_an_image))
    assert str(tmp_path) not in str(unreadable.value)  # the server's paths stay on the server
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pathlib.Path(ZERO_SHOT_EXAMPLES[0][0]).read_bytes()[:300])
    with pytest.raises(gr.Error, match="Cannot read the image: image file is truncated"):
        load_image(str(truncated))
    monkeypatch.setattr(app, "MAX_FILE_SIZE", 1000)
    with pytest.raises(gr.Error, match="the limit is 1,000"):
        load_image(ZERO_SHOT_EXAMPLES[0][0])


def test_decompression_bomb_is_refused_with_a_message(tmp_path):
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("1", (14_000, 13_000)).save(bomb)  # 182 megapixels in a few kilobytes: PIL refuses it
    with pytest.raises(gr.Error, match="more than 178,956,970 pixels; the limit is 40,000,000"):
        load_image(str(bomb))


@pytest.mark.parametrize("labels", ["", "  ", " , ,, ", None])
def test_empty_labels_are_refused(store, labels):
    with pytest.raises(gr.Error, match="at least one of the labels"):
        classify(shapes_image(), labels, "", store=store)
    with pytest.raises(gr.Error, match="at least one of the queries"):
        detect(shapes_image(), labels, 0.5, store=store)


def test_duplicate_and_blank_labels_are_dropped_with_a_warning(store):
    with pytest.warns(UserWarning, match="Duplicate labels ignored: pink star"):
        probabilities, _ = classify(shapes_image(), "pink star, , red circle,pink star ,", "", store=store)
    assert sorted(probabilities) == ["pink star", "red circle"]


def test_too_many_labels_are_refused(store):
    with pytest.raises(gr.Error, match="Too many labels: 101"):
        classify(shapes_image(), ", ".join(f"label {i}" for i in range(101)), "", store=store)


@pytest.mark.parametrize("template", ["a photo", "a {0} photo", "a {} of {x}"])
def test_bad_templates_are_refused(store, template):
    with pytest.raises(gr.Error, match="must contain {}"):
        classify(shapes_image(), LABELS, template, store=store)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), float("inf"), None, "high"])
def test_absurd_thresholds_are_refused(store, threshold):
    with pytest.raises(gr.Error, match="threshold must be between 0 and 1"):
        detect(shapes_image(), LABELS, threshold, store=store)


def test_inpaint_validation_messages(store):
    image = shapes_image()
    with pytest.raises(gr.Error, match="Upload an image"):
        inpaint(None, store=store)
    with pytest.raises(gr.Error, match="mask is empty"):
        inpaint({"background": image, "layers": [], "composite": None}, store=store)
    blank = PIL.Image.new("RGBA", image.size, (255, 0, 255, 0))
    with pytest.raises(gr.Error, match="mask is empty"):
        inpaint({"background": image, "layers": [blank], "composite": None}, store=store)
    everything = PIL.Image.new("RGBA", image.size, (255, 0, 255, 255))
    with pytest.raises(gr.Error, match="covers every pixel"):
        inpaint({"background": image, "layers": [everything], "composite": None}, store=store)
    for samples in (0, 9, 2.5):
        with pytest.raises(gr.Error, match="number of samples must be from 1 to 8"):
            inpaint(INPAINTING_EXAMPLES[0], samples=samples, store=store)
    for seed in (-1, 0.5, 2**31):
        with pytest.raises(gr.Error, match="seed must be a whole number"):
            inpaint(INPAINTING_EXAMPLES[0], seed=seed, store=store)


def test_a_failing_source_errors_in_its_tab_only(store):
    with pytest.raises(gr.Error, match="no model folder at '/no/such/model'"):
        classify(shapes_image(), LABELS, "", "/no/such/model", store=store)
    status, templates = model_status("zero-shot-image-classification", "/no/such/model", store)
    assert status.startswith("**Model not loaded.**") and templates == []
    (_, _), rows = detect(shapes_image(), LABELS, 0.0, store=store)  # the other tabs keep working
    assert rows
    assert inpaint(INPAINTING_EXAMPLES[0], store=store)[1][0][0].size == shapes_image().size


def test_a_model_of_the_wrong_kind_is_named(store):
    inpainting_folder = str(DEFAULT_MODELS / "inpainting")
    with pytest.raises(
        gr.Error,
        match="is a VitlmViTForMaskedImageModeling; the zero-shot-image-classification tab needs a dual encoder",
    ):
        classify(shapes_image(), LABELS, "", inpainting_folder, store=store)
    with pytest.raises(gr.Error, match="the masked-image-modeling tab needs a masked-image model"):
        inpaint(INPAINTING_EXAMPLES[0], str(DEFAULT_MODELS / "zero-shot"), store=store)


def test_a_broken_model_folder_is_reported(store, tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(gr.Error, match="could not load"):
        detect(shapes_image(), LABELS, 0.5, source=str(tmp_path), store=store)


def test_a_slow_source_does_not_hold_up_the_others(tmp_path):
    store = ModelStore(cache_dir=tmp_path, device="cpu")
    release, errors = threading.Event(), []
    real_load = store._load

    def load(location, source):
        if source == "slow/model":  # e.g. a large converter source, downloading
            release.wait()
            raise ModelLoadError("gave up")
        return real_load(location, source)

    store._load = load

    def get_slow():
        try:
            store.get("zero-shot-image-classification", "slow/model")
        except ModelLoadError as error:
            errors.append(error)

    slow = threading.Thread(target=get_slow)
    slow.start()
    served = threading.Event()
    other = threading.Thread(target=lambda: store.get("zero-shot-object-detection", "default") and served.set())
    other.start()
    assert served.wait(timeout=120), "the default detector waited for the slow source"
    assert slow.is_alive()
    release.set()
    slow.join()
    other.join()
    assert [str(error) for error in errors] == ["gave up"]


def test_model_status_names_the_model(store):
    for task, spec in TASKS.items():
        status, templates = model_status(task, "default", store)
        assert spec.model_class.__name__ in status
        assert bool(templates) == (task != "masked-image-modeling")


def tiny_transformers_clip(folder: Path) -> str:
    """transformers' own CLIPModel with random weights and CLIP's vocabulary, saved by transformers."""
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16
    )
    bpe = json.loads(clip_tokenizer().backend_tokenizer.to_str())["model"]
    tokenizer = CLIPTokenizer(vocab=bpe["vocab"], merges=[tuple(merge) for merge in bpe["merges"]])
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), tokenizer).save_pretrained(folder)
    return str(folder)


def test_a_converter_source_is_converted_once_and_cached(tmp_path, monkeypatch):
    folder = tiny_transformers_clip(tmp_path / "clip")
    with pytest.raises(
        gr.Error, match=f"holds a CLIPModel, not a vitlm model; convert it with the source 'hf:{folder}'"
    ):
        classify(shapes_image(), LABELS, "", folder, store=ModelStore(cache_dir=tmp_path / "unused", device="cpu"))
    source = "hf:" + folder
    conversions = []
    real_load = vitlm.convert.load
    monkeypatch.setattr(vitlm.convert, "load", lambda *args, **kwargs: conversions.append(args) or real_load(*args))
    cache = tmp_path / "cache"

    first, _ = classify(shapes_image(), LABELS, "", source, store=ModelStore(cache_dir=cache, device="cpu"))
    assert len(conversions) == 1
    assert (cache / cache_name(source) / "config.json").is_file()
    # a new store (a later launch) reads the converted folder instead of converting again
    later = ModelStore(cache_dir=cache, device="cpu")
    again, _ = classify(shapes_image(), LABELS, "", source, store=later)
    assert len(conversions) == 1
    assert list(again) == list(first)
    assert all(math.isclose(again[k], first[k], abs_tol=1e-6) for k in first)
    with pytest.raises(gr.Error, match="the zero-shot-object-detection tab needs an open-vocabulary detector"):
        detect(shapes_image(), LABELS, 0.5, "", source, store=later)


def test_cache_names_are_safe_and_distinct():
    names = {cache_name(source) for source in ["hf:a/b", "hf:a:b", "hf:a--b", "open_clip:ViT-B-32/laion2b_s34b_b79k"]}
    assert len(names) == 4
    assert all(name.replace("-", "").replace(".", "").replace("_", "").isalnum() for name in names)


def test_examples_are_shapes_world_test_images():
    """The shipped example images are what `generate` draws (and so stay under 100 KB in all)."""
    from vitlm.data.shapes import generate

    single = generate(3, seed=0, split="test", min_objects=1, max_objects=1)
    multi = generate(4, seed=0, split="test", min_objects=2, max_objects=3)
    expected = [row["image"] for row in single] + [multi[2]["image"], multi[3]["image"]]
    shipped = [path for path, _ in ZERO_SHOT_EXAMPLES + DETECTION_EXAMPLES]
    for path, image in zip(shipped, expected, strict=True):
        assert (np.asarray(PIL.Image.open(path)) == np.asarray(image)).all(), path
    files = list((REPO / "vitlm" / "demo" / "examples").iterdir())
    assert sum(path.stat().st_size for path in files) < 100_000


def test_default_models_and_examples_are_package_data():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["vitlm.demo"]
    package = REPO / "vitlm" / "demo"
    for spec in TASKS.values():
        assert (DEFAULT_MODELS / spec.folder / "config.json").is_file()
    data = [path for path in package.rglob("*") if path.is_file() and path.parent != package]
    assert data
    for path in data:
        if "__pycache__" not in path.parts:
            assert any(path.relative_to(package).match(pattern) for pattern in patterns), path


def test_default_models_hold_no_copies_of_the_model_code():
    """The shipped folders are data (weights, configs, tokenizer and processor files, cards, training curves): with
    vitlm installed they load on its classes, and the code for `trust_remote_code` is written when a folder is saved
    or pushed (tests/hub/test_default_models.py pushes them and loads them back without vitlm)."""
    assert not sorted(DEFAULT_MODELS.rglob("*.py"))
    for spec in TASKS.values():
        config = json.loads((DEFAULT_MODELS / spec.folder / "config.json").read_text())
        assert config["architectures"] == [spec.model_class.__name__]


def test_cli_and_launcher_pass_the_options(monkeypatch):
    import runpy
    import sys

    import vitlm.demo
    from vitlm.cli import main

    calls = []
    monkeypatch.setattr(vitlm.demo, "launch", lambda **options: calls.append(options))
    assert main(["demo"]) == 0
    assert main(["demo", "--host", "0.0.0.0", "--port", "8080", "--share"]) == 0
    assert main(["demo", "--host", "0.0.0.0", "--allow-local-models"]) == 0
    monkeypatch.setattr(sys, "argv", ["demos/app.py", "--port", "7000"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(REPO / "demos" / "app.py"), run_name="__main__")
    assert exit_status.value.code == 0
    assert calls == [
        {"host": "127.0.0.1", "port": 7860, "share": False, "allow_local_models": False},
        {"host": "0.0.0.0", "port": 8080, "share": True, "allow_local_models": False},
        {"host": "0.0.0.0", "port": 7860, "share": False, "allow_local_models": True},
        {"host": "127.0.0.1", "port": 7000, "share": False, "allow_local_models": False},
    ]
