"""`gradio_client` against `vitlm demo` launched on localhost: every tab's endpoint with the default models, the
errors a user sees, and the upload limits."""

import math
import re

import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from vitlm.demo.app import (
    DEFAULT_NMS_THRESHOLD,
    DEFAULT_THRESHOLD,
    DETECTION_EXAMPLES,
    INPAINTING_EXAMPLES,
    MAX_FILE_SIZE,
    SEGMENTATION_EXAMPLES,
    ZERO_SHOT_EXAMPLES,
)

LABELS = ["red circle", "pink star", "yellow triangle"]


@pytest.fixture
def client(demo_url, client_downloads):
    return Client(demo_url, verbose=False, download_files=str(client_downloads))


def test_classify(client):
    result, heatmap = client.predict(
        handle_file(ZERO_SHOT_EXAMPLES[1][0]), ", ".join(LABELS), "", "default", api_name="/classify"
    )
    confidences = result["confidences"]
    assert sorted(item["label"] for item in confidences) == sorted(LABELS)
    assert result["label"] == confidences[0]["label"]
    assert math.isclose(sum(item["confidence"] for item in confidences), 1.0, abs_tol=1e-5)
    assert PIL.Image.open(heatmap).size == PIL.Image.open(ZERO_SHOT_EXAMPLES[1][0]).size


def test_detect(client):
    image, queries = DETECTION_EXAMPLES[0]
    annotated, table = client.predict(handle_file(image), queries, 0.0, "", "default", api_name="/detect")
    width, height = PIL.Image.open(image).size
    assert PIL.Image.open(annotated["image"]).size == (width, height)
    assert table["headers"] == ["query", "score", "x0", "y0", "x1", "y1"]
    assert table["data"] and len(table["data"]) == len(annotated["annotations"])
    for query, score, x0, y0, x1, y1 in table["data"]:
        assert query in queries and 0 <= score <= 1
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height


def test_detect_iou_threshold(client):
    """The IoU slider's value reaches detection; a client that leaves it out gets the slider's default."""
    image, queries = DETECTION_EXAMPLES[1]
    inputs = (handle_file(image), queries, DEFAULT_THRESHOLD, "", "default")
    tables = {
        nms_threshold: client.predict(*inputs, *extra, api_name="/detect")[1]["data"]
        for nms_threshold, extra in [(None, ()), (DEFAULT_NMS_THRESHOLD, (DEFAULT_NMS_THRESHOLD,)), (1.0, (1.0,))]
    }
    assert tables[None] == tables[DEFAULT_NMS_THRESHOLD]
    queries = [row[0] for row in tables[DEFAULT_NMS_THRESHOLD]]
    assert len(set(queries)) == len(queries)  # one box per object here
    assert len(tables[1.0]) > len(tables[DEFAULT_NMS_THRESHOLD])  # 1 keeps the duplicates
    with pytest.raises(AppError, match="less than minimum value 0.05"):
        client.predict(*inputs, 0.0, api_name="/detect")


def test_the_terminal_shows_the_default_models_loading_before_the_url(demo_server):
    _, log = demo_server
    lines = log.read_text().splitlines()
    served = next(index for index, line in enumerate(lines) if "Running on local URL" in line)
    progress = [line for line in lines[:served] if line.startswith("vitlm demo:")]
    assert progress.pop(0) == "vitlm demo: starting (importing torch, transformers and gradio)..."
    tasks = (
        "zero-shot-image-classification",
        "zero-shot-object-detection",
        "masked-image-modeling",
        "image-segmentation",
    )
    assert progress[0].startswith(f"vitlm demo: loading the default models ({', '.join(tasks)}) on ")
    for task in tasks:
        assert f"vitlm demo: loading the {task} model 'default'..." in progress
        assert any(
            re.fullmatch(f"vitlm demo: loaded the {task} model 'default' in [0-9.]+ s", line) for line in progress
        )
    assert re.fullmatch("vitlm demo: 4 of 4 default models loaded in [0-9.]+ s; starting the server", progress[-1])


def test_segment(client):
    image, labels = SEGMENTATION_EXAMPLES[1]
    overlay, legend = client.predict(handle_file(image), labels, "", "default", api_name="/segment")
    assert PIL.Image.open(overlay).size == PIL.Image.open(image).size
    assert legend["headers"] == ["label", "colour", "area %"]
    assert [row[0] for row in legend["data"]] == [label.strip() for label in labels.split(",")]
    assert 0 < sum(row[2] for row in legend["data"]) <= 100
    with pytest.raises(AppError, match="at least one of the labels"):
        client.predict(handle_file(image), " , ", "", "default", api_name="/segment")
    with pytest.raises(AppError, match="could not be read|not an image|cannot identify"):
        client.predict(handle_file(__file__), "red circle", "", "default", api_name="/segment")


def test_inpaint(client):
    example = INPAINTING_EXAMPLES[0]
    editor = {
        "background": handle_file(example["background"]),
        "layers": [handle_file(example["layers"][0])],
        "composite": handle_file(example["composite"]),
        "id": None,
    }
    original, completions = client.predict(editor, "default", api_name="/inpaint")
    mask = np.asarray(PIL.Image.open(example["layers"][0]))[..., 3] > 0
    before = np.asarray(PIL.Image.open(original))
    assert (before == np.asarray(PIL.Image.open(example["background"]).convert("RGB"))).all()
    assert len(completions) == 4  # the samples slider's default
    for completion in completions:
        after = np.asarray(PIL.Image.open(completion["image"]))
        assert (after[~mask] == before[~mask]).all() and (after[mask] != before[mask]).any()
    # the slider and the seed reach the model: two samples, the same for the same seed
    _, two = client.predict(editor, "default", 2, 7, api_name="/inpaint")
    _, again = client.predict(editor, "default", 2, 7, api_name="/inpaint")
    assert [item["caption"] for item in two] == ["seed 7, sample 1", "seed 7, sample 2"]
    pixels = [[np.asarray(PIL.Image.open(item["image"])) for item in result] for result in (two, again)]
    assert all((a == b).all() for a, b in zip(*pixels)) and not (pixels[0][0] == pixels[0][1]).all()


def test_model_status(client):
    status, templates = client.predict("default", api_name="/zero_shot_image_classification_model")
    assert "VitlmDualEncoderModel" in status and "{}" in templates
    assert "VitlmViTForInpaintingSynthesis" in client.predict("default", api_name="/masked_image_modeling_model")
    status, _ = client.predict("default", api_name="/image_segmentation_model")
    assert "VitlmDualEncoderForSemanticSegmentation" in status


def test_errors_reach_the_user_and_the_app_keeps_serving(client):
    with pytest.raises(AppError, match="at least one of the labels"):
        client.predict(handle_file(ZERO_SHOT_EXAMPLES[0][0]), " , ", "", "default", api_name="/classify")
    # the slider refuses values outside its range before the function sees them
    with pytest.raises(AppError, match="1.5 is greater than maximum value 1"):
        client.predict(handle_file(DETECTION_EXAMPLES[0][0]), "red circle", 1.5, "", "default", api_name="/detect")
    # offline, a Hub repo that is not cached cannot load: the tab says so, the other tabs still answer
    with pytest.raises(AppError, match="could not load 'someone/missing-model'"):
        client.predict(
            handle_file(DETECTION_EXAMPLES[0][0]), "red circle", 0.2, "", "someone/missing-model", api_name="/detect"
        )
    status, _ = client.predict("someone/missing-model", api_name="/zero_shot_object_detection_model")
    assert status.startswith("**Model not loaded.**")
    result, _ = client.predict(handle_file(ZERO_SHOT_EXAMPLES[0][0]), "pink star", "", "default", api_name="/classify")
    assert result["label"] == "pink star"


def test_upload_limits(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_FILE_SIZE + 1))
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
        client.predict(handle_file(str(big)), "pink star", "", "default", api_name="/classify")
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (7000, 6000)).save(huge)  # 42 megapixels in a few kilobytes
    with pytest.raises(AppError, match="42,000,000 pixels; the limit is 40,000,000"):
        client.predict(handle_file(str(huge)), "pink star", "", "default", api_name="/classify")


def test_decompression_bombs_are_refused_before_decoding(client, tmp_path):
    """Above twice the limit PIL refuses to open the image, inside gradio's own preprocessing: the user still gets the
    app's message, in both kinds of image input."""
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("1", (9000, 9000)).save(bomb)  # 81 megapixels
    message = "more than 80,000,000 pixels; the limit is 40,000,000"
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(bomb)), "pink star", "", "default", api_name="/classify")
    editor = {"background": handle_file(str(bomb)), "layers": [], "composite": None, "id": None}
    with pytest.raises(AppError, match=message):
        client.predict(editor, "default", api_name="/inpaint")


def test_search(client):
    from vitlm.demo.app import EXAMPLE_COLLECTION, SEARCH_EXAMPLES, search

    gallery, table = client.predict(SEARCH_EXAMPLES[0], None, EXAMPLE_COLLECTION, 5, "default", api_name="/search")
    assert table["headers"] == ["rank", "score", "image"] and [row[0] for row in table["data"]] == [1, 2, 3, 4, 5]
    _, expected = search(SEARCH_EXAMPLES[0], None, EXAMPLE_COLLECTION, 5)  # the same default model, in this process
    assert [row[2] for row in table["data"]] == [row[2] for row in expected]
    assert [row[1] for row in table["data"]] == pytest.approx([row[1] for row in expected], abs=1e-4)
    assert [item["caption"] for item in gallery] == [f"{score:.3f} · {name}" for _, score, name in expected]
    assert all(PIL.Image.open(item["image"]).size == (64, 64) for item in gallery)
    with pytest.raises(AppError, match="Type a query text or upload a query image"):
        client.predict("", None, EXAMPLE_COLLECTION, 5, "default", api_name="/search")
