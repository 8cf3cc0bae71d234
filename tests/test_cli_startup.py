"""The `vitlm` console script answers help, `vitlm presets` and argument errors without importing torch or
transformers (seconds): its entry point, as pyproject.toml declares it, loads `vitlm.cli` without the `vitlm` package,
whose import registers the models. Imports are read from `python -X importtime`, never timed."""

import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

import _vitlm_cli
from vitlm.presets import preset_names

REPO = pathlib.Path(__file__).resolve().parent.parent
ENTRY_POINT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["vitlm"]
HEAVY = {"torch", "transformers"}


def run_console_script(*args, cwd):
    """(exit status, stdout, stderr without the import-time lines, top-level names of every module imported) of the
    console script, run as pip's wrapper runs it."""
    module, function = ENTRY_POINT.split(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = 'vitlm'; sys.exit({function}())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return result.returncode, result.stdout, stderr, imported


def test_help_imports_neither_torch_nor_transformers(tmp_path):
    status, out, err, imported = run_console_script("--help", cwd=tmp_path)
    assert status == 0, err
    assert out.startswith("usage: vitlm") and all(f"    {name} " in out for name in ("presets", "convert", "train"))
    assert imported and not imported & HEAVY, sorted(imported & HEAVY)
    assert "vitlm" not in imported  # the package, whose import registers the models, was never imported


def test_presets_imports_neither_torch_nor_transformers(tmp_path):
    status, out, err, imported = run_console_script("presets", cwd=tmp_path)
    assert status == 0, err
    assert all(f"| {name} " in out for name in preset_names())
    row = next(line for line in out.splitlines() if line.startswith("| vit-base-patch16-224 "))
    cells = [cell.strip() for cell in row.split("|")[2:-1]]
    assert cells == ["vitlm_vit", "224", "16", "768", "12", "12", "86,567,656"]
    assert not imported & HEAVY, sorted(imported & HEAVY)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nope"], "invalid choice: 'nope'"),
        (["presets", "vit-tiny-test", "nope"], "vitlm presets: error: unknown preset 'nope'"),
        (["train", "no-such-task", "--model", "x", "--dataset", "shapes"], "invalid choice: 'no-such-task'"),
        (["export", "folder"], "required: out_dir"),
        (["demo", "--port", "70000"], "expected a port number from 0 to 65535, got '70000'"),
        (["convert", "timm:vit_tiny_patch16_224"], "required: out_dir"),
        (
            ["train", "image-classification", "--model", "x", "--dataset", "shapes", "--layer-decay", "0"],
            "layer_decay (--layer-decay) must be a number in (0, 1], got 0.0",
        ),
        (
            ["train", "masked-image-modeling", "--model", "x", "--dataset", "shapes", "--mixup", "0.2"],
            "mixup and cutmix (--mixup, --cutmix) apply to classification, not 'masked-image-modeling'",
        ),
    ],
)
def test_argument_errors_import_neither_torch_nor_transformers(args, fragment, tmp_path):
    status, out, err, imported = run_console_script(*args, cwd=tmp_path)
    assert status == 2 and fragment in err.splitlines()[-1] and "Traceback" not in err, err
    assert not imported & HEAVY, sorted(imported & HEAVY)


def test_a_model_command_imports_the_package_and_its_registrations(tmp_path):
    """`export` reads the folder through transformers' Auto classes, which know vitlm's types only once the package
    has registered them: the console script imports it for such a command."""
    from tests.conftest import tiny_config
    from vitlm import VitlmImageProcessor, VitlmViTModel

    VitlmViTModel(tiny_config("vit", representation_size=32)).save_pretrained(tmp_path / "vit")
    VitlmImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path / "vit")
    status, out, err, imported = run_console_script("export", "vit", "exported", cwd=tmp_path)
    assert status == 0, err
    assert out.strip() == "wrote exported" and (tmp_path / "exported" / "model.safetensors").is_file()
    assert {"vitlm", "torch", "transformers"} <= imported


def test_the_entry_point_in_a_process_that_imported_vitlm(monkeypatch, capsys):
    """Called where the package is already imported, the entry point uses its modules instead of loading copies."""
    import vitlm.cli

    monkeypatch.setattr(sys, "argv", ["vitlm", "presets", "vit-tiny-test"])
    assert _vitlm_cli.main() == 0
    assert "| vit-tiny-test " in capsys.readouterr().out
    assert sys.modules["vitlm.cli"] is vitlm.cli
