"""The converter framework: source parsing, strict state-dict loading, thread-safe building, atomic and
self-cleaning saving, sources without weights, the CLI's error path."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from tests.conftest import pixel_batch, tiny_config
from vitlm import VitlmDualEncoderModel, VitlmImageProcessor, VitlmViTModel
from vitlm.cli import main
from vitlm.convert import (
    Converted,
    UnsupportedSourceError,
    convert,
    load,
    load_converted_state_dict,
    parse_source,
    save,
    uninitialized,
)


def converted():
    torch.manual_seed(0)
    return Converted(VitlmViTModel(tiny_config("vit")).eval(), VitlmImageProcessor(size=32, crop_size=32))


@pytest.mark.parametrize("source", ["open_clip", "onnx:model", "hf:", "ViT-B-32"])
def test_bad_sources_name_the_known_prefixes(source):
    with pytest.raises(ValueError, match="open_clip"):
        parse_source(source)


def test_parse_source_keeps_the_rest_whole():
    assert parse_source("open_clip:hf-hub:laion/CLIP-ViT-B-32") == ("open_clip", "hf-hub:laion/CLIP-ViT-B-32")
    assert parse_source("hf:/tmp/my:model") == ("hf", "/tmp/my:model")


def test_partial_mappings_are_refused():
    model = converted().model
    state_dict = model.state_dict()
    extra = {**state_dict, "head.weight": torch.zeros(1)}
    with pytest.raises(UnsupportedSourceError, match="head.weight"):
        load_converted_state_dict(model, extra, "test")
    missing = {k: v for k, v in state_dict.items() if k != "layernorm.weight"}
    with pytest.raises(UnsupportedSourceError, match="layernorm.weight"):
        load_converted_state_dict(model, missing, "test")
    wrong = {**state_dict, "layernorm.weight": torch.zeros(3)}
    with pytest.raises(UnsupportedSourceError, match="layernorm.weight"):
        load_converted_state_dict(model, wrong, "test")


def test_save_writes_a_loadable_folder_in_the_requested_dtype(tmp_path):
    out = save(converted(), tmp_path / "out", dtype="float16")
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    assert all(t.dtype == torch.float16 for t in load_file(out / "model.safetensors").values())
    assert VitlmViTModel.from_pretrained(out).dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folders left behind


def test_a_saved_folder_has_the_umasks_permissions(tmp_path):
    """The folder is staged and renamed into place; it gets the permissions any new folder gets (a mkdtemp staging
    folder made it 0700 whatever the umask)."""
    previous = os.umask(0o022)
    try:
        out = save(converted(), tmp_path / "out")
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o755


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        save(converted(), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    save(converted(), out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_save_leaves_the_existing_folder_untouched(tmp_path):
    out = tmp_path / "out"
    first = save(converted(), out)
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    class BrokenProcessor(VitlmImageProcessor):
        def save_pretrained(self, *args, **kwargs):
            raise OSError("disk full")

    model = VitlmViTModel(tiny_config("vit"))
    with pytest.raises(OSError, match="disk full"):
        save(Converted(model, BrokenProcessor()), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    reloaded = VitlmViTModel.from_pretrained(out).eval()
    pixel_values = pixel_batch(reloaded.config)
    torch.testing.assert_close(
        reloaded(pixel_values).last_hidden_state, converted().model(pixel_values).last_hidden_state
    )


def test_bad_dtype_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        save(converted(), tmp_path / "out", dtype="float8")
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["convert", "onnx:model", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "open_clip" in error
    assert not (tmp_path / "out").exists()


def test_cli_exports_a_vitlm_folder_to_transformers(tmp_path, capsys):
    from transformers import ViTModel

    torch.manual_seed(0)
    model = VitlmViTModel(tiny_config("vit", representation_size=32)).eval()  # ViTModel always has a pooler
    vitlm_folder = save(Converted(model, VitlmImageProcessor(size=32, crop_size=32)), tmp_path / "vitlm")
    assert main(["export", str(vitlm_folder), str(tmp_path / "hf")]) == 0
    assert "wrote" in capsys.readouterr().out
    exported = ViTModel.from_pretrained(tmp_path / "hf").eval()
    pixel_values = pixel_batch(exported.config)
    with torch.no_grad():
        expected, outputs = model(pixel_values), exported(pixel_values)
        torch.testing.assert_close(outputs.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(outputs.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    assert main(["export", str(vitlm_folder), str(tmp_path / "hf")]) == 2  # exists: refused in one line


def test_building_a_model_to_convert_changes_no_global_state():
    """Converters build their model without random initialization; models built meanwhile in other threads must
    still be initialized (transformers' `no_init_weights` patched torch.nn.init and transformers process-wide)."""
    from transformers import PreTrainedModel

    seen = {}

    class Probe(VitlmViTModel):
        def __init__(self, config):
            seen["functions"] = (torch.nn.init.normal_, torch.nn.init.trunc_normal_, PreTrainedModel.init_weights)
            super().__init__(config)

    before = (torch.nn.init.normal_, torch.nn.init.trunc_normal_, PreTrainedModel.init_weights)
    model = uninitialized(Probe, tiny_config("vit"))
    assert seen["functions"] == before
    assert all(parameter.is_meta for parameter in model.parameters())  # no memory until the weights come


def test_converting_while_other_threads_build_models():
    config, source = tiny_config("vit"), converted().model
    state_dict = {key: tensor.clone() for key, tensor in source.state_dict().items()}
    built, conversions = [], []

    def build():
        for _ in range(8):
            built.append(VitlmViTModel(config))

    def convert_one():
        for _ in range(8):
            conversions.append(load_converted_state_dict(uninitialized(VitlmViTModel, config), state_dict, "test"))

    threads = [threading.Thread(target=target) for target in (build, convert_one) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == len(conversions) == 24  # no thread failed
    for model in built:  # initialized as configured: unit LayerNorms, weights of std initializer_range
        assert torch.equal(model.layernorm.weight, torch.ones_like(model.layernorm.weight))
        weight = model.encoder.layers[0].mlp.fc1.weight
        assert torch.isfinite(weight).all() and 0.7 < weight.std().item() / config.initializer_range < 1.3
    for model in conversions:
        assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in state_dict.items())


def test_computed_buffers_are_computed():
    """transformers' CLIPModel keeps position ids as a buffer no state dict holds: built on the meta device, it must
    still have them after loading."""
    from vitlm.convert.to_transformers import to_clip_model

    torch.manual_seed(0)
    clip = to_clip_model(VitlmDualEncoderModel(tiny_config("dual")))
    position_ids = clip.text_model.embeddings.position_ids
    assert not position_ids.is_meta and torch.equal(position_ids[0], torch.arange(position_ids.shape[1]))


def test_a_source_without_weights_is_refused_unless_random_weights_are_asked_for():
    with pytest.raises(ValueError, match=r"open_clip:ViT-B-32 names no pretrained weights: add a tag \(open_clip:ViT"):
        load("open_clip:ViT-B-32")
    with pytest.raises(ValueError, match="exclude each other"):
        load("open_clip:ViT-B-32", checkpoint="weights.safetensors", random_weights=True)


def test_random_weights_build_the_architecture_without_a_download():
    model = load("timm:test_vit", random_weights=True).model  # no network here: nothing may be downloaded
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 6)
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny transformers ViT folder: the quickest source to convert."""
    folder = tmp_path_factory.mktemp("hf") / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=32)).save_pretrained(
        folder
    )
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# `vitlm convert` whose processor, written last, waits: the process is stopped while its staging folder is half written
HANGING_CONVERT = """
import pathlib, sys, time
from vitlm.cli import main
from vitlm.models import VitlmImageProcessor

def hang(self, folder, *args, **kwargs):
    pathlib.Path(folder, "started").touch()
    time.sleep(120)

VitlmImageProcessor.save_pretrained = hang
sys.argv = ["vitlm", *sys.argv[1:]]
sys.exit(main())
"""


def interrupted_convert(source: str, out_dir, signum: int) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", HANGING_CONVERT, "convert", source, str(out_dir), "--overwrite"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(out_dir.parent.glob(f".{out_dir.name}.partial-*/started")):
        assert process.poll() is None and time.monotonic() < deadline, "the convert never started writing"
        time.sleep(0.1)
    process.send_signal(signum)
    return process.wait(timeout=60)


def test_an_interrupted_convert_loses_nothing_and_leaves_nothing(hf_folder, tmp_path, caplog):
    out = tmp_path / "out"
    first = save(converted(), out)
    before = {path.name: path.read_bytes() for path in first.iterdir()}

    # SIGTERM: the command removes its staging folder as it exits
    assert interrupted_convert(f"hf:{hf_folder}", out, signal.SIGTERM) == 128 + signal.SIGTERM
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    # SIGKILL runs no cleanup: the next save to the same place removes the dead process's staging folder
    assert interrupted_convert(f"hf:{hf_folder}", out, signal.SIGKILL) == -signal.SIGKILL
    leftovers = [path.name for path in tmp_path.iterdir() if path.name != "out"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.partial-")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    with caplog.at_level(logging.WARNING, logger="vitlm.convert"):
        save(converted(), out, overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert any(leftovers[0] in record.getMessage() for record in caplog.records)


def test_a_folder_moved_aside_by_a_killed_save_is_put_back(tmp_path, caplog):
    """Killed between moving the old folder aside and renaming the new one into place, a save leaves the user's
    folder in `.out.old-<pid>-*`: the next save to that place puts it back before anything else."""
    out = tmp_path / "out"
    save(converted(), out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".out.old-{dead.pid}-x"
    aside.mkdir()
    out.rename(aside / "out")
    (tmp_path / f".out.partial-{dead.pid}-y").mkdir()
    with caplog.at_level(logging.WARNING, logger="vitlm.convert"), pytest.raises(FileExistsError, match="overwrite"):
        save(converted(), out)  # the folder is back, and it is not replaced without overwrite
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert VitlmViTModel.from_pretrained(out) is not None
    assert any("put back" in record.getMessage() for record in caplog.records)


def test_a_live_process_staging_folder_is_left_alone(tmp_path):
    out = tmp_path / "out"
    (tmp_path / f".out.partial-{os.getpid()}-z").mkdir()  # another save of this very process, still writing
    save(converted(), out)
    assert sorted(path.name for path in tmp_path.iterdir()) == [f".out.partial-{os.getpid()}-z", "out"]


@pytest.mark.parametrize("name", [".", "", "..", "sub/.."])
def test_the_current_folder_and_its_parents_are_never_replaced(name, tmp_path, monkeypatch, hf_folder):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(ValueError, match="is the current folder or one above it"):
        convert(f"hf:{hf_folder}", name, overwrite=True)
    assert (tmp_path / "sub" / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sub"]
