"""Damaged checkpoints, loaded every way vitlm offers: each ends in one error naming the file and the problem, or in a
model with a warning naming what is wrong with it (missing or unused weights, NaN / inf values). Never a traceback
from deep inside torch or safetensors, never a silently broken model, and never an unpickled weights file.

Weights of the wrong shape are refused (transformers raises a RuntimeError pointing at a logged table), and so are
weights missing from a checkpoint the loaded class itself saved (they would be random); keys left over, and a base
model's weights loaded into a head model, keep transformers' load report, a warning; NaN / inf weights are reported,
not refused (a diverged run is sometimes loaded on purpose)."""

import logging
import shutil

import open_clip
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageClassification

import vitlm
from tests.conftest import tiny_config
from vitlm import VitlmDualEncoderModel, VitlmHybridModel, VitlmViTForImageClassification

FAMILIES = {  # family: (saved class, the Auto class that loads it)
    "vit": (VitlmViTForImageClassification, AutoModelForImageClassification),
    "hybrid": (VitlmHybridModel, AutoModel),
    "dual": (VitlmDualEncoderModel, AutoModel),
}
WEIGHTS = "model.safetensors"


def damaged_key(state_dict) -> str:
    """An encoder weight, present whichever head loads the folder."""
    return next(key for key in sorted(state_dict) if key.endswith("layers.0.mlp.fc1.weight"))


def edit_weights(change):
    def damage(folder):
        state_dict = load_file(folder / WEIGHTS)
        change(state_dict, damaged_key(state_dict))
        save_file(state_dict, folder / WEIGHTS, metadata={"format": "pt"})

    return damage


def cut(fraction=None, size=None):
    def damage(folder):
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(data[: size if size is not None else int(len(data) * fraction)])

    return damage


def edit_config(change):
    def damage(folder):
        (folder / "config.json").write_text(change((folder / "config.json").read_text()))

    return damage


def set_value(value):
    def change(state_dict, key):
        state_dict[key][0, 0] = value

    return change


def pickle_only(folder):
    torch.save(load_file(folder / WEIGHTS), folder / "pytorch_model.bin")
    (folder / WEIGHTS).unlink()


NOT_READABLE = (OSError, "cannot be read (Error while deserializing header")
NOT_JSON = (OSError, "is not a valid JSON file")
# damage: (what it does to a saved folder, (exception, message fragment) or ("warning", fragment))
DAMAGES = {
    "empty weights file": (cut(size=0), NOT_READABLE),
    "weights cut in the header length": (cut(size=4), NOT_READABLE),
    "weights cut in the header": (cut(size=40), NOT_READABLE),
    "weights cut in half": (cut(fraction=0.5), NOT_READABLE),
    "weights missing their last bytes": (cut(fraction=0.99), NOT_READABLE),
    "weights header not JSON": (
        lambda folder: (folder / WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64)),
        NOT_READABLE,
    ),
    "weights file of random bytes": (
        lambda folder: (folder / WEIGHTS).write_bytes(torch.randint(0, 256, (999,), dtype=torch.uint8).numpy()),
        NOT_READABLE,
    ),
    "a weight of the wrong shape": (
        edit_weights(lambda state_dict, key: state_dict.update({key: torch.zeros(3, 3)})),
        (ValueError, "do not fit its config: 1 of the wrong shape, {key} (3, 3) (model: "),
    ),
    "a weight of the wrong rank": (
        edit_weights(lambda state_dict, key: state_dict.update({key: torch.zeros(7)})),
        (ValueError, "1 of the wrong shape, {key} (7,)"),
    ),
    "a weight missing": (
        edit_weights(lambda state_dict, key: state_dict.pop(key)),
        (ValueError, "lack 1 of its weights ({key}): the file is incomplete"),
    ),
    "an unknown weight": (
        edit_weights(lambda state_dict, key: state_dict.update({"bogus.weight": torch.zeros(2)})),
        ("warning", "UNEXPECTED"),
    ),
    "no weights at all in the file": (
        edit_weights(lambda state_dict, key: state_dict.clear()),
        (ValueError, "of its weights ("),
    ),
    "a NaN weight": (edit_weights(set_value(float("nan"))), ("warning", "1 weights hold NaN or inf values ({key})")),
    "an inf weight": (edit_weights(set_value(float("-inf"))), ("warning", "1 weights hold NaN or inf values ({key})")),
    "no weights file": (
        lambda folder: (folder / WEIGHTS).unlink(),
        (OSError, "has no model.safetensors: vitlm reads weights from safetensors files only"),
    ),
    "weights file is a folder": (
        lambda folder: ((folder / WEIGHTS).unlink(), (folder / WEIGHTS).mkdir()),
        (OSError, "has no model.safetensors: vitlm reads weights from safetensors files only"),
    ),
    "pickled weights only": (pickle_only, (OSError, "vitlm reads weights from safetensors files only")),
    "config.json empty": (edit_config(lambda text: ""), NOT_JSON),
    "config.json not JSON": (edit_config(lambda text: "{'hidden_size': 32,}"), NOT_JSON),
    "config.json truncated": (edit_config(lambda text: text[:40]), NOT_JSON),
    "config.json binary": (lambda folder: (folder / "config.json").write_bytes(b"\xff\xfe\x00\x01"), NOT_JSON),
}
# damages whose error depends on the loader: (the model class's, the Auto class's)
LOADER_DAMAGES = {
    "config.json missing": (
        lambda folder: (folder / "config.json").unlink(),
        (OSError, "has no config.json holding a JSON object"),
        (ValueError, "Should have a `model_type` key in its config.json"),
    ),
    "config.json a folder": (
        lambda folder: ((folder / "config.json").unlink(), (folder / "config.json").mkdir()),
        (OSError, "has no config.json holding a JSON object"),
        (ValueError, "Should have a `model_type` key in its config.json"),
    ),
    "config.json a list": (
        edit_config(lambda text: "[1, 2]"),
        (OSError, "has no config.json holding a JSON object"),
        (ValueError, "Should have a `model_type` key in its config.json"),
    ),
}
CASES = [
    (family, damage, loader)
    for family in FAMILIES
    for damage in [*DAMAGES, *LOADER_DAMAGES]
    for loader in ("class", "auto")
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A sound saved folder per family, and its damaged-weight key."""
    folders = {}
    for family, (model_class, _) in FAMILIES.items():
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(family)
        model_class(tiny_config(family)).save_pretrained(folder)
        folders[family] = (folder, damaged_key(load_file(folder / WEIGHTS)))
    return folders


@pytest.fixture
def warnings_logged():
    """Warnings of transformers (which does not propagate to the root logger) and of vitlm."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger("transformers"), logging.getLogger("vitlm")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.parametrize(("family", "damage", "loader"), CASES)
def test_damaged_folder(family, damage, loader, saved, tmp_path, warnings_logged, monkeypatch):
    source, key = saved[family]
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    if damage in DAMAGES:
        make, expected = DAMAGES[damage]
    else:
        make, *by_loader = LOADER_DAMAGES[damage]
        expected = by_loader[loader == "auto"]
    make(folder)

    def never_unpickle(*args, **kwargs):
        raise AssertionError("a pickled weights file was unpickled")

    monkeypatch.setattr(torch, "load", never_unpickle)
    model_class, auto_class = FAMILIES[family]
    load = (model_class if loader == "class" else auto_class).from_pretrained
    kind, fragment = expected
    if kind == "warning":
        model = load(folder)
        logged = "\n".join(record.getMessage() for record in warnings_logged)
        assert fragment.format(key=key) in logged
        finite = all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())
        assert finite == ("NaN" not in fragment)  # every warning but that one leaves a finite model
    else:
        with pytest.raises(kind) as error:
            load(folder)
        assert fragment.format(key=key) in str(error.value)
        assert str(folder) in str(error.value)  # names the folder (or the file in it)


def test_a_base_models_weights_load_into_a_head_model_with_transformers_report(tmp_path, warnings_logged):
    """Weights a plain encoder saved lack the head a classifier adds: ordinary, so a warning, not an error."""
    from vitlm import VitlmViTModel

    torch.manual_seed(0)
    base = VitlmViTModel(tiny_config("vit"))
    base.save_pretrained(tmp_path)
    model = VitlmViTForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(model.vit.embeddings.cls_token, base.embeddings.cls_token)
    assert "classifier.weight" in "\n".join(record.getMessage() for record in warnings_logged)


def test_saving_into_a_file_is_refused_and_leaves_it(tmp_path):
    target = tmp_path / "weights.txt"
    target.write_text("mine")
    with pytest.raises(NotADirectoryError, match="weights.txt is a file: `save_pretrained` writes a folder"):
        VitlmHybridModel(tiny_config("hybrid")).save_pretrained(target)
    assert target.read_text() == "mine"


def test_a_pickle_loads_only_when_asked_for(saved, tmp_path):
    source, key = saved["hybrid"]
    shutil.copytree(source, tmp_path / "model")
    pickle_only(tmp_path / "model")
    with pytest.raises(OSError, match="pass use_safetensors=False to read one you trust"):
        VitlmHybridModel.from_pretrained(tmp_path / "model")
    model = VitlmHybridModel.from_pretrained(tmp_path / "model", use_safetensors=False)
    assert torch.equal(model.state_dict()[key], load_file(source / WEIGHTS)[key])


def test_wrong_shapes_load_afresh_when_asked_for(saved, tmp_path):
    source, key = saved["dual"]
    shutil.copytree(source, tmp_path / "model")
    edit_weights(lambda state_dict, key: state_dict.update({key: torch.zeros(3, 3)}))(tmp_path / "model")
    model, info = VitlmDualEncoderModel.from_pretrained(
        tmp_path / "model", ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert [mismatch[0] for mismatch in info["mismatched_keys"]] == [key]
    assert model.state_dict()[key].shape != (3, 3) and torch.isfinite(model.state_dict()[key]).all()


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def source_checkpoints(tmp_path_factory):
    """Weights for the converters: open_clip's "tiny-clip" (registered while the module runs), timm's test_vit."""
    root = tmp_path_factory.mktemp("checkpoints")
    open_clip.factory._MODEL_CONFIGS["tiny-clip"] = TINY_CLIP
    torch.manual_seed(0)
    weights = {
        "open_clip:tiny-clip": open_clip.create_model("tiny-clip").state_dict(),
        "timm:test_vit": timm.create_model("test_vit", pretrained=False).state_dict(),
    }
    yield root, weights
    del open_clip.factory._MODEL_CONFIGS["tiny-clip"]


def first_matrix(state_dict) -> str:
    return next(key for key in sorted(state_dict) if state_dict[key].dim() == 2)


CONVERTER_DAMAGES = {  # damage: (write the file from the sound weights, error fragment)
    "truncated": (lambda path, w: (save_file(w, path), path.write_bytes(path.read_bytes()[:3000])), "not a readable"),
    "empty": (lambda path, w: path.write_bytes(b""), "is not a readable safetensors file"),
    "garbage": (lambda path, w: path.write_bytes(b"not safetensors at all"), "is not a readable safetensors file"),
    "no tensors": (lambda path, w: save_file({}, path), "holds no tensors"),
    "integer weights": (
        lambda path, w: save_file({**w, first_matrix(w): w[first_matrix(w)].int()}, path),
        "tensors that are not floating-point weights",
    ),
    "a weight of the wrong shape": (
        lambda path, w: save_file({**w, first_matrix(w): torch.zeros(3, 3)}, path),
        "does not fit",  # open_clip's own check of a position table, or torch's size mismatch
    ),
    "a weight missing": (
        lambda path, w: save_file({k: v for k, v in w.items() if k != first_matrix(w)}, path),
        "Missing key(s)",
    ),
    "an unknown weight": (lambda path, w: save_file({**w, "bogus": torch.zeros(1)}, path), "Unexpected key(s)"),
    "not there": (lambda path, w: None, "no such file"),
}


@pytest.mark.parametrize("source", ["open_clip:tiny-clip", "timm:test_vit"])
@pytest.mark.parametrize("damage", sorted(CONVERTER_DAMAGES))
def test_damaged_converter_checkpoint(source, damage, source_checkpoints):
    root, weights = source_checkpoints
    path = root / f"{source.partition(':')[2]}-{damage.replace(' ', '-')}.safetensors"
    write, fragment = CONVERTER_DAMAGES[damage]
    write(path, weights[source])
    with pytest.raises((ValueError, OSError)) as error:
        vitlm.load(source, checkpoint=path)
    assert fragment in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("source", ["open_clip:tiny-clip", "timm:test_vit"])
def test_pickled_converter_checkpoint_is_never_unpickled(source, source_checkpoints, monkeypatch):
    root, weights = source_checkpoints
    torch.save(weights[source], root / "weights.bin")
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("unpickled"))
    with pytest.raises(ValueError, match="must be a .safetensors file.*never unpickles"):
        vitlm.load(source, checkpoint=root / "weights.bin")


@pytest.mark.parametrize("source", ["open_clip:tiny-clip", "timm:test_vit"])
def test_nan_converter_checkpoint_is_reported(source, source_checkpoints, caplog):
    root, weights = source_checkpoints
    weights = {key: tensor.clone() for key, tensor in weights[source].items()}
    weights[first_matrix(weights)][0, 0] = float("nan")
    save_file(weights, root / "nan.safetensors")
    model = vitlm.load(source, checkpoint=root / "nan.safetensors").model
    assert not all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())
    reports = [record.getMessage() for record in caplog.records if "NaN or inf" in record.getMessage()]
    assert len(reports) == 1 and "nan.safetensors" in reports[0]
