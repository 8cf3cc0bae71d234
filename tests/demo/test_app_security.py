"""The demo served beyond this machine and to many users at once: the model box never reaches the server's files
unless the demo serves this machine alone, text inputs are bounded, the per-source lock table stays small, a refused
request logs one line, and concurrent responses come back whole."""

import fnmatch
import logging
import threading

import gradio as gr
import huggingface_hub
import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from vitlm.demo import app
from vitlm.demo.app import (
    DEFAULT_THRESHOLD,
    DETECTION_EXAMPLES,
    EXAMPLE_COLLECTION,
    ZERO_SHOT_EXAMPLES,
    classify,
    detect,
)
from vitlm.demo.models import DEFAULT_MODELS, ModelLoadError, ModelStore
from vitlm.models import VitlmDualEncoderModel

LABELS = "red circle, pink star, yellow triangle"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ModelStore(cache_dir=tmp_path_factory.mktemp("converted"), device="cpu")


def shapes_image() -> PIL.Image.Image:
    return PIL.Image.open(ZERO_SHOT_EXAMPLES[0][0])


def refusal(store: ModelStore, source: str) -> str:
    """The message `store` refuses `source` with, the source itself replaced by a placeholder."""
    with pytest.raises(ModelLoadError) as error:
        store.get("zero-shot-image-classification", source)
    return str(error.value).replace(repr(source), "<source>")


def test_a_public_demo_refuses_local_paths_and_never_tells_whether_they_exist(tmp_path):
    upload = tmp_path / "gradio" / "3f2a9c" / "weights.pt"  # where gradio keeps an upload
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"not weights")
    existing = [str(DEFAULT_MODELS / "zero-shot"), "/root", "/etc/passwd", str(upload), str(upload.parent)]
    missing = ["/no/such/folder", "/etc/no-such-file", str(upload.parent / "missing.pt")]
    paths = existing + missing
    sources = [
        *paths,
        *(f"hf:{path}" for path in paths),
        *(f"open_clip:ViT-B-32/{path}" for path in paths),
        *(f"open_clip:local-dir:{path}" for path in paths),
        *(f"timm:local-dir:{path}" for path in paths),
        # relative paths and escapes, bare or behind a converter prefix
        "../../etc",
        "./vitlm",
        "~/.cache",
        "~root",
        "org/../../etc",
        "hf:../../etc/passwd",
        "hf:./vitlm",
        "hf:org/../../etc",
        "timm:../vit_base_patch16_224",
        "timm:hf-hub:../etc",
        "open_clip:ViT-B-32/../../etc/passwd",
        "open_clip:ViT-B-32/weights.pt",  # a file of the working directory is read where a tag is not known
        "open_clip:hf-hub:org/../x",
    ]
    store = ModelStore(cache_dir=tmp_path / "cache", device="cpu", allow_local=False)
    messages = {source: refusal(store, source) for source in sources}
    assert len(set(messages.values())) == 1, messages
    message = messages[sources[0]]
    assert "not a model this public demo loads" in message and "--allow-local-models" in message
    assert not (tmp_path / "cache").exists()  # nothing was converted, nothing cached
    with pytest.raises(gr.Error, match="not a model this public demo loads"):
        classify(shapes_image(), LABELS, "", str(DEFAULT_MODELS / "zero-shot"), store=store)
    assert app.model_status("zero-shot-object-detection", "/root", store)[0].startswith("**Model not loaded.**")


def test_a_public_demo_reads_repo_ids_from_the_hub_never_from_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").symlink_to(DEFAULT_MODELS / "zero-shot")  # a folder named like a repo id
    monkeypatch.chdir(tmp_path)
    requested = []

    def snapshot_download(repo_id, allow_patterns):
        requested.append(repo_id)
        assert not any(fnmatch.fnmatch(name, pattern) for name in ["x.bin", "x.py"] for pattern in allow_patterns)
        if repo_id == "org/on-the-hub":
            return str(DEFAULT_MODELS / "zero-shot")
        raise OSError("not on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    public = ModelStore(cache_dir=tmp_path / "cache", device="cpu", allow_local=False)
    assert isinstance(public.get("zero-shot-image-classification", "org/on-the-hub").model, VitlmDualEncoderModel)
    assert refusal(public, "org/model") == refusal(public, "org/absent")
    assert refusal(public, "hf:org/model") == refusal(public, "hf:org/absent")
    assert requested == ["org/on-the-hub", "org/model", "org/absent", "org/model", "org/absent"]
    # served on loopback, the same name is the local folder
    local = ModelStore(cache_dir=tmp_path / "cache", device="cpu")
    assert isinstance(local.get("zero-shot-image-classification", "org/model").model, VitlmDualEncoderModel)
    assert requested == ["org/on-the-hub", "org/model", "org/absent", "org/model", "org/absent"]


@pytest.mark.parametrize(
    "options, local",
    [
        ({}, True),
        ({"host": "localhost"}, True),
        ({"host": "::1"}, True),
        ({"host": "0.0.0.0"}, False),
        ({"host": "192.168.1.20"}, False),
        ({"host": "demo.example.org"}, False),
        ({"share": True}, False),
        ({"host": "0.0.0.0", "allow_local_models": True}, True),
        ({"share": True, "allow_local_models": True}, True),
    ],
)
def test_local_models_only_when_serving_this_machine_or_allowed(monkeypatch, options, local):
    stores = []
    monkeypatch.setattr(app, "build_app", lambda store: stores.append(store) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.setattr(app, "load_default_models", lambda store: None)  # tested in test_app_functions.py
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", PIL.Image.MAX_IMAGE_PIXELS)  # launch sets it
    app.launch(**options)
    (store,) = stores
    with pytest.raises(ModelLoadError) as error:
        store.get("zero-shot-image-classification", "/no/such/model")
    if local:
        assert str(error.value) == "no model folder at '/no/such/model'"
    else:
        assert "not a model this public demo loads" in str(error.value)


def test_labels_queries_and_templates_are_bounded(store):
    image = shapes_image()
    many = ", ".join(f"label {i}" for i in range(65))
    with pytest.raises(gr.Error, match="Too many labels: 65; the limit is 64"):
        classify(image, many, "", store=store)
    with pytest.raises(gr.Error, match="Too many queries: 65; the limit is 64"):
        detect(image, many, 0.5, store=store)
    long = "b" * 201
    with pytest.raises(gr.Error, match="One of the labels has 201 characters .*; the limit is 200"):
        classify(image, f"red circle, {long}", "", store=store)
    with pytest.raises(gr.Error, match="One of the labels has 80,000 characters .*; the limit is 200"):
        classify(image, "x" * 80_000, "", store=store)
    with pytest.raises(gr.Error, match="One of the queries has 201 characters"):
        detect(image, long, 0.5, store=store)
    with pytest.raises(gr.Error, match="A prompt template has 215 characters"):
        classify(image, LABELS, "a photo of a {}" + " " + "c" * 199, store=store)
    with pytest.raises(gr.Error, match="A prompt template has 215 characters"):
        detect(image, LABELS, 0.5, "a photo of a {}" + " " + "c" * 199, store=store)
    with pytest.raises(gr.Error, match="The box of labels has 120,000 characters .*; the limit is 100,000"):
        classify(image, "a," * 60_000, "", store=store)
    # at the limits, every label is ranked
    at_limit = [f"{i} {'d' * (200 - len(str(i)) - 1)}" for i in range(64)]
    probabilities, _ = classify(image, ", ".join(at_limit), "a {}", store=store)
    assert sorted(probabilities) == sorted(at_limit)


def test_the_lock_table_holds_only_the_sources_being_loaded(tmp_path):
    store = ModelStore(cache_dir=tmp_path, device="cpu")
    errors = []

    def load(start):
        for i in range(start, start + 100):
            try:
                store.get("zero-shot-image-classification", f"/no/such/model-{i % 150}")
            except ModelLoadError as error:
                errors.append(error)

    threads = [threading.Thread(target=load, args=(start,)) for start in range(0, 400, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 400
    assert store._loading == {}


def test_a_refused_request_logs_one_line(store, caplog):
    caplog.set_level(logging.WARNING, logger="vitlm.demo")
    with pytest.raises(gr.Error) as error:
        classify(shapes_image(), "red circle", "", "/no/such/model", store=store)
    assert not error.value.print_exception  # gradio prints the traceback of an error that asks for it
    (record,) = [record for record in caplog.records if record.name.startswith("vitlm.demo")]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "vitlm demo: refused a request: no model folder at '/no/such/model'"
    app.refusal("a message\n  on two lines")
    assert caplog.records[-1].getMessage() == "vitlm demo: refused a request: a message on two lines"


def test_refused_requests_log_one_line_each_and_no_traceback(demo_server, client_downloads, tmp_path):
    url, log = demo_server
    client = Client(url, verbose=False, download_files=str(client_downloads))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    image = handle_file(ZERO_SHOT_EXAMPLES[0][0])
    start = log.stat().st_size
    with pytest.raises(AppError, match="Cannot read the image: cannot identify image file$") as unreadable:
        client.predict(handle_file(str(broken)), "pink star", "", "default", api_name="/classify")
    assert "broken.png" not in str(unreadable.value)  # where the server keeps uploads is not the user's business
    with pytest.raises(AppError, match="at least one of the labels"):
        client.predict(image, " , ", "", "default", api_name="/classify")
    with pytest.raises(AppError, match="One of the labels has 80,000 characters"):
        client.predict(image, "x" * 80_000, "", "default", api_name="/classify")
    with pytest.raises(AppError, match="could not load 'someone/missing-model'"):
        client.predict(image, "pink star", "", "someone/missing-model", api_name="/classify")
    # gradio's own checks of a value (a slider's range, a dropdown's choices), refused as the app's own are
    with pytest.raises(AppError, match=r"^Score threshold: Value 1.5 is greater than maximum value 1"):
        client.predict(image, "pink star", 1.5, "", "default", api_name="/detect")
    with pytest.raises(AppError, match=r"^Overlap \(IoU\) threshold: Value 0.0 is less than minimum value 0.05"):
        client.predict(image, "pink star", 0.3, "", "default", 0.0, api_name="/detect")
    with pytest.raises(AppError, match=r"^Results: Value 0 is less than minimum value 1"):
        client.predict("a star", None, EXAMPLE_COLLECTION, 0, "default", api_name="/search")
    with log.open() as file:
        file.seek(start)
        output = file.read()
    assert "Traceback" not in output, output
    refused = [line for line in output.splitlines() if "refused a request" in line]
    assert len(refused) == 7, output


def test_concurrent_detections_all_come_back_whole(demo_url, store, client_downloads):
    """Requests with the same image give the same output files: none may be cut while another request writes it
    (it was: "Too little data for declared Content-Length")."""
    image, queries = DETECTION_EXAMPLES[0]
    (_, boxes), rows = detect(image, queries, DEFAULT_THRESHOLD, store=store)
    assert rows
    client = Client(demo_url, verbose=False, download_files=str(client_downloads), max_workers=16)
    jobs = [
        client.submit(handle_file(image), queries, DEFAULT_THRESHOLD, "", "default", api_name="/detect")
        for _ in range(32)
    ]
    original = np.asarray(PIL.Image.open(image).convert("RGB"))
    first = None
    for job in jobs:
        annotated, table = job.result()
        assert (np.asarray(PIL.Image.open(annotated["image"]).convert("RGB")) == original).all()
        masks = [np.asarray(PIL.Image.open(item["image"]))[..., 3] for item in annotated["annotations"]]
        for alpha, ((x0, y0, x1, y1), _) in zip(masks, boxes, strict=True):
            assert alpha.shape == original.shape[:2]
            assert alpha[y0:y1, x0:x1].all() and alpha.sum() == alpha[y0:y1, x0:x1].sum()
        labels = [item["label"] for item in annotated["annotations"]]
        first = first or (labels, table["data"])
        assert (labels, table["data"]) == first
    # the same answer as in this process
    assert [row[0] for row in first[1]] == [row[0] for row in rows]
    assert np.allclose([row[1:] for row in first[1]], [row[1:] for row in rows], atol=2e-3)
