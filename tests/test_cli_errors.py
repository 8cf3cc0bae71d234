"""Misusing `vitlm`: every subcommand, given missing or wrong arguments, nonexistent or damaged files, numbers out of
range, unknown models or tags, or an output folder it must not replace, exits with status 2 and one error line naming
the problem, before any slow work, writing nothing. No traceback, no silently wrong result."""

import os
import subprocess
import sys

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from tests.conftest import tiny_config
from vitlm import VitlmHybridModel, VitlmImageProcessor, VitlmViTModel
from vitlm.cli import main

TINY_CLIP = {  # an open_clip architecture small enough to build in milliseconds
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# the smallest preset world: every `train` case below is refused before it is generated
TRAIN = ["train", "classify", "--model", "vit-tiny-test", "--dataset", "shapes", "--shapes-train", "8"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints for open_clip ("tiny-clip", registered while the module runs) and timm (test_vit), sound and
    damaged, a transformers and two vitlm folders, and things in the way of an output folder."""
    root = tmp_path_factory.mktemp("cli")
    open_clip.factory._MODEL_CONFIGS["tiny-clip"] = TINY_CLIP
    torch.manual_seed(0)
    clip = open_clip.create_model("tiny-clip").state_dict()
    save_file(clip, root / "clip.safetensors")
    save_file({**clip, "visual.proj": torch.zeros(3, 3)}, root / "clip_shape.safetensors")
    save_file({**clip, "visual.proj": clip["visual.proj"].long()}, root / "clip_int.safetensors")
    save_file({k: v for k, v in clip.items() if k != "visual.proj"}, root / "clip_missing.safetensors")
    save_file({**clip, "bogus": torch.zeros(2)}, root / "clip_extra.safetensors")
    save_file({}, root / "clip_empty.safetensors")
    (root / "clip_truncated.safetensors").write_bytes((root / "clip.safetensors").read_bytes()[:5000])
    (root / "garbage.safetensors").write_bytes(b"hello, this is not a safetensors file")
    (root / "zero.safetensors").write_bytes(b"")
    torch.save(clip, root / "clip.pt")
    vit = timm.create_model("test_vit", pretrained=False).state_dict()
    save_file(vit, root / "timm.safetensors")
    save_file({**vit, "head.weight": torch.zeros(2, 2)}, root / "timm_shape.safetensors")
    (root / "timm_truncated.safetensors").write_bytes((root / "timm.safetensors").read_bytes()[:9000])
    hf = root / "hf-vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=32)).save_pretrained(hf)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(hf)
    vitlm_vit = root / "vitlm-vit"
    VitlmViTModel(tiny_config("vit", representation_size=32)).save_pretrained(vitlm_vit)
    VitlmImageProcessor(size=32, crop_size=32).save_pretrained(vitlm_vit)
    VitlmHybridModel(tiny_config("hybrid")).save_pretrained(root / "vitlm-hybrid")
    VitlmImageProcessor(size=32, crop_size=32).save_pretrained(root / "vitlm-hybrid")
    (root / "a-file").write_text("not a folder")
    (root / "kept").mkdir()
    (root / "kept" / "notes.txt").write_text("mine")
    (root / "empty-dir").mkdir()
    yield root
    del open_clip.factory._MODEL_CONFIGS["tiny-clip"]


def ckpt(name):
    return ["--checkpoint", f"{{root}}/{name}"]


# (argv with {root} and {out} placeholders, a fragment of the one error line); {out} is a fresh folder
CASES = {
    # the command line itself (argparse)
    "no command": ([], "the following arguments are required: COMMAND"),
    "unknown command": (["nope"], "invalid choice: 'nope'"),
    "unknown option": (["presets", "--nope"], "unrecognized arguments: --nope"),
    # presets
    "unknown preset": (["presets", "nope"], "unknown preset 'nope'; known presets: "),
    "one unknown preset among known": (["presets", "vit-tiny-test", "nope"], "unknown preset 'nope'"),
    # convert: the command line
    "convert without arguments": (["convert"], "required: source, out_dir"),
    "convert without out_dir": (["convert", "open_clip:tiny-clip"], "required: out_dir"),
    "unknown source prefix": (["convert", "onnx:model", "{out}"], "a prefix among ['hf', 'open_clip', 'timm']"),
    "source without name": (["convert", "timm:", "{out}"], "must look like '<prefix>:<name>'"),
    "source without prefix": (["convert", "ViT-B-32", "{out}"], "must look like '<prefix>:<name>'"),
    "unknown dtype": (["convert", "open_clip:tiny-clip", "{out}", "--dtype", "float8"], "invalid choice: 'float8'"),
    # convert: weights that are not there
    "open_clip without weights": (["convert", "open_clip:tiny-clip", "{out}"], "names no pretrained weights"),
    "random weights with a checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", "--random-weights", *ckpt("clip.safetensors")],
        "random weights and a checkpoint exclude each other",
    ),
    "random weights with a tag": (
        ["convert", "open_clip:ViT-B-32/openai", "{out}", "--random-weights"],
        "random weights and the pretrained tag 'openai' exclude each other",
    ),
    "random weights for hf": (
        ["convert", "hf:{root}/hf-vit", "{out}", "--random-weights"],
        "an hf: source names its weights itself",
    ),
    "checkpoint for hf": (
        ["convert", "hf:{root}/hf-vit", "{out}", *ckpt("clip.safetensors")],
        "an hf: source names its weights itself",
    ),
    "checkpoint for a named open_clip repo": (
        ["convert", "open_clip:hf-hub:org/repo", "{out}", *ckpt("clip.safetensors")],
        "names its weights itself",
    ),
    # convert: unknown models and tags
    "unknown open_clip model": (["convert", "open_clip:no-such-model/openai", "{out}"], "no model 'no-such-model'"),
    "unknown open_clip model, checkpoint": (
        ["convert", "open_clip:no-such-model", "{out}", *ckpt("clip.safetensors")],
        "open_clip has no model 'no-such-model'",
    ),
    "unknown open_clip tag": (
        ["convert", "open_clip:ViT-B-32/no-such-tag", "{out}"],
        "'no-such-tag' is not one of open_clip's pretrained tags for 'ViT-B-32' (openai, ",
    ),
    "unknown timm model": (["convert", "timm:no_such_model", "{out}"], "timm:no_such_model: Unknown model"),
    "unknown timm tag": (
        ["convert", "timm:test_vit.no_such_tag", "{out}", *ckpt("timm.safetensors")],
        "Invalid pretrained tag (no_such_tag)",
    ),
    "hf folder that is not there": (["convert", "hf:{root}/nowhere", "{out}"], "nowhere: no such folder"),
    "hf folder without a model": (["convert", "hf:{root}/empty-dir", "{out}"], "empty-dir"),
    "hf folder of a vitlm model": (["convert", "hf:{root}/vitlm-vit", "{out}"], "is a 'vitlm_vit' model"),
    # convert: checkpoints that are missing, pickled or damaged
    "missing open_clip checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("missing.safetensors")],
        "missing.safetensors: no such file",
    ),
    "missing timm checkpoint": (  # printed an empty message before
        ["convert", "timm:test_vit", "{out}", *ckpt("missing.safetensors")],
        "missing.safetensors: no such file",
    ),
    "a folder as checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", "--checkpoint", "{root}"],
        "must be a .safetensors file",
    ),
    "pickled open_clip checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip.pt")],
        "never unpickles weight files",
    ),
    "pickled timm checkpoint": (["convert", "timm:test_vit", "{out}", *ckpt("clip.pt")], "must be a .safetensors"),
    "pickled weights as an open_clip tag": (
        ["convert", "open_clip:tiny-clip/{root}/clip.pt", "{out}"],
        "never unpickles weight files",
    ),
    "truncated open_clip checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip_truncated.safetensors")],
        "clip_truncated.safetensors is not a readable safetensors file",
    ),
    "truncated timm checkpoint": (
        ["convert", "timm:test_vit", "{out}", *ckpt("timm_truncated.safetensors")],
        "timm_truncated.safetensors is not a readable safetensors file",
    ),
    "garbage checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("garbage.safetensors")],
        "not a readable safetensors file (Error while deserializing header",
    ),
    "empty file as checkpoint": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("zero.safetensors")],
        "zero.safetensors is not a readable safetensors file",
    ),
    "checkpoint without tensors": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip_empty.safetensors")],
        "clip_empty.safetensors holds no tensors",
    ),
    "integer weights": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip_int.safetensors")],
        "holds 1 tensors that are not floating-point weights: visual.proj (I64)",
    ),
    "weights of the wrong shape": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip_shape.safetensors")],
        "does not fit open_clip's tiny-clip: Error(s) in loading state_dict for CLIP: size mismatch for visual.proj",
    ),
    "a weight missing": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip_missing.safetensors")],
        'Missing key(s) in state_dict: "visual.proj"',
    ),
    "an unknown weight": (
        ["convert", "open_clip:tiny-clip", "{out}", *ckpt("clip_extra.safetensors")],
        'Unexpected key(s) in state_dict: "bogus"',
    ),
    "timm weights of the wrong shape": (
        ["convert", "timm:test_vit", "{out}", *ckpt("timm_shape.safetensors")],
        "does not fit timm's test_vit: Error(s) in loading state_dict for VisionTransformer: size mismatch for head",
    ),
    "another model's weights": (
        ["convert", "timm:test_vit", "{out}", *ckpt("clip.safetensors")],
        "does not fit timm's test_vit",
    ),
    # convert: output folders it must not write
    "output is a file": (
        ["convert", "open_clip:tiny-clip", "{root}/a-file", *ckpt("clip.safetensors")],
        "a-file exists and is not a folder",
    ),
    "output inside a file": (
        ["convert", "open_clip:tiny-clip", "{root}/a-file/model", *ckpt("clip.safetensors")],
        "a-file is a file, not a folder",
    ),
    "output holds files": (
        ["convert", "open_clip:tiny-clip", "{root}/kept", *ckpt("clip.safetensors")],
        "kept already holds files; pass overwrite=True (--overwrite)",
    ),
    "output is the current folder": (
        ["convert", "open_clip:tiny-clip", ".", "--overwrite", *ckpt("clip.safetensors")],
        "'.' is the current folder or one above it",
    ),
    "output is empty": (["convert", "open_clip:tiny-clip", "", *ckpt("clip.safetensors")], "the current folder"),
    "output is the parent folder": (
        ["convert", "open_clip:tiny-clip", "..", "--overwrite", *ckpt("clip.safetensors")],
        "'..' is the current folder or one above it",
    ),
    "output is the root": (
        ["convert", "open_clip:tiny-clip", "/", "--overwrite", *ckpt("clip.safetensors")],
        "'/' is the current folder or one above it",
    ),
    # export
    "export without arguments": (["export"], "required: folder, out_dir"),
    "export a folder that is not there": (["export", "{root}/nowhere", "{out}"], "nowhere: no such model folder"),
    "export a file": (["export", "{root}/a-file", "{out}"], "a-file: no such model folder"),
    "export a folder without model": (["export", "{root}/empty-dir", "{out}"], "empty-dir"),
    "export a transformers model": (["export", "{root}/hf-vit", "{out}"], "holds a ViTModel, not vitlm's"),
    "export a hybrid": (["export", "{root}/vitlm-hybrid", "{out}"], "cannot represent a hybrid CNN stem"),
    "export over its own folder": (
        ["export", "{root}/vitlm-vit", "{root}/vitlm-vit", "--overwrite"],
        "vitlm-vit, which writing it would replace: name another folder",
    ),
    "export to ONNX over its own folder": (
        ["export", "{root}/vitlm-vit", "{root}/vitlm-vit", "--onnx", "--overwrite"],
        "vitlm-vit, which writing it would replace: name another folder",
    ),
    "export onto a file": (["export", "{root}/vitlm-vit", "{root}/a-file"], "a-file exists and is not a folder"),
    "export onto files": (["export", "{root}/vitlm-vit", "{root}/kept"], "kept already holds files"),
    "export onto the current folder": (["export", "{root}/vitlm-vit", ".", "--overwrite"], "the current folder"),
    # train: the command line
    "train without arguments": (["train"], "required: task, --model, --dataset"),
    "train without model": (["train", "classify", "--dataset", "shapes"], "required: --model"),
    "unknown task": (["train", "depth", "--model", "x", "--dataset", "shapes"], "invalid choice: 'depth'"),
    "batch size not a number": ([*TRAIN, "--batch-size", "many"], "invalid int value: 'many'"),
    "caption weights not numbers": ([*TRAIN, "--caption-weights", "a,b"], "expected comma-separated numbers"),
    "unknown save dtype": ([*TRAIN, "--save-dtype", "int8"], "invalid choice: 'int8'"),
    "unknown box format": ([*TRAIN, "--bbox-format", "cxcywh"], "invalid choice: 'cxcywh'"),
    # train: numbers out of range
    "layer decay 0": ([*TRAIN, "--layer-decay", "0"], "layer_decay (--layer-decay) must be a number in (0, 1], got"),
    "layer decay -1": ([*TRAIN, "--layer-decay", "-1"], "layer_decay (--layer-decay) must be a number in (0, 1]"),
    "layer decay above 1": ([*TRAIN, "--layer-decay", "1.5"], "must be a number in (0, 1], got 1.5"),
    "layer decay nan": ([*TRAIN, "--layer-decay", "nan"], "must be a number in (0, 1], got nan"),
    "mixup -1": ([*TRAIN, "--mixup", "-1"], "mixup_alpha (--mixup) must be a number >= 0, got -1.0"),
    "mixup nan": ([*TRAIN, "--mixup", "nan"], "mixup_alpha (--mixup) must be a number >= 0, got nan"),
    "cutmix -1": ([*TRAIN, "--cutmix", "-1"], "cutmix_alpha (--cutmix) must be a number >= 0"),
    "cutmix inf": ([*TRAIN, "--cutmix", "inf"], "cutmix_alpha (--cutmix) must be a number >= 0, got inf"),
    "epochs 0": ([*TRAIN, "--epochs", "0"], "epochs (--epochs) must be a number > 0, got 0.0"),
    "epochs -1": ([*TRAIN, "--epochs", "-1"], "epochs (--epochs) must be a number > 0"),
    "epochs nan": ([*TRAIN, "--epochs", "nan"], "epochs (--epochs) must be a number > 0, got nan"),
    "learning rate 0": ([*TRAIN, "--lr", "0"], "lr (--lr) must be a number > 0, got 0.0"),
    "learning rate -1": ([*TRAIN, "--lr", "-1"], "lr (--lr) must be a number > 0"),
    "learning rate nan": ([*TRAIN, "--lr", "nan"], "lr (--lr) must be a number > 0, got nan"),
    "batch size 0": ([*TRAIN, "--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    "batch size -3": ([*TRAIN, "--batch-size", "-3"], "batch_size (--batch-size) must be an integer >= 1"),
    "eval steps 0": ([*TRAIN, "--eval-steps", "0"], "eval_steps (--eval-steps) must be an integer >= 1, got 0"),
    "eval steps -2": ([*TRAIN, "--eval-steps", "-2"], "eval_steps (--eval-steps) must be an integer >= 1"),
    "logging steps 0": ([*TRAIN, "--logging-steps", "0"], "logging_steps (--logging-steps) must be an integer >= 1"),
    "max steps 0": ([*TRAIN, "--max-steps", "0"], "max_steps (--max-steps) must be an integer >= 1, or -1"),
    "max steps -7": ([*TRAIN, "--max-steps", "-7"], "max_steps (--max-steps) must be an integer >= 1, or -1"),
    "seed -1": ([*TRAIN, "--seed", "-1"], "seed (--seed) must be an integer from 0 to 2**32 - 1, got -1"),
    "twin weight -1": ([*TRAIN, "--twin-weight", "-1"], "twin_weight must be a finite number >= 0"),
    # train: options of another task
    "mixup for contrastive training": (
        ["train", "contrastive", "--model", "clip-tiny-test", "--dataset", "shapes", "--mixup", "0.5"],
        "mixup and cutmix (--mixup, --cutmix) apply to classification, not 'contrastive'",
    ),
    "block masking for classification": ([*TRAIN, "--block-masking"], "applies to inpainting, not 'classify'"),
    "caption weights for classification": ([*TRAIN, "--caption-weights", "1,2"], "apply to contrastive training"),
    "twin loss for classification": ([*TRAIN, "--twin-weight", "1"], "applies to contrastive training"),
    "unparsable config override": ([*TRAIN, "--config-overrides", "nonsense"], "'nonsense' is not key=value"),
    # train: paths
    "output dir is a file": ([*TRAIN, "--output-dir", "{root}/a-file"], "a-file exists and is not a folder"),
    "dataset folder that is not there": (
        ["train", "classify", "--model", "vit-tiny-test", "--dataset", "{root}/nowhere", "--output-dir", "{out}"],
        "nowhere",
    ),
    "an image-only model for contrastive training": (
        ["train", "contrastive", "--model", "vit-tiny-test", "--dataset", "shapes", "--shapes-train", "4"],
        "task 'contrastive' needs a dual encoder model",
    ),
    "too few generated images": ([*TRAIN[:-1], "0"], "num_images must be at least 1, got 0"),
    "generated images too small": ([*TRAIN, "--shapes-size", "8"], "image_size must be at least 32"),
    "generated images too large": ([*TRAIN, "--shapes-size", "100000"], "image_size must be at most 1024"),
    "a transformers model to train": (
        ["train", "classify", "--model", "{root}/hf-vit", "--dataset", "shapes", "--shapes-train", "4"],
        "hf-vit holds a transformers 'vit' model, not a vitlm one: train from the converter source 'hf:",
    ),
    "a dual encoder for an image-only task": (
        ["train", "classify", "--model", "clip-tiny-test", "--dataset", "shapes", "--shapes-train", "4"],
        "task 'classify' needs an image-only model, not a dual encoder",
    ),
    "a Hub repo id that cannot be": ([*TRAIN, "--push-to-hub", "bad id!!"], "Repo id must use alphanumeric chars"),
    "a Hub repo id that cannot be, converting": (
        ["convert", "timm:test_vit", "{out}", "--random-weights", "--push-to-hub", "bad id!!"],
        "Repo id must use alphanumeric chars",
    ),
    "no objects per image": ([*TRAIN, "--shapes-max-objects", "0"], "max_objects=0"),
    # demo
    "port out of range": (["demo", "--port", "70000"], "expected a port number from 0 to 65535, got '70000'"),
    "negative port": (["demo", "--port", "-1"], "expected a port number from 0 to 65535"),
    "port not a number": (["demo", "--port", "http"], "expected a port number from 0 to 65535, got 'http'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_misuse_exits_2_with_one_error_line(case, files, tmp_path, capsys, monkeypatch):
    argv_template, fragment = CASES[case]
    out = tmp_path / "out"
    monkeypatch.chdir(files / "empty-dir")  # a current folder to refuse, ".." then its parent
    before = sorted(files.rglob("*"))
    argv = [arg.format(root=files, out=out) for arg in argv_template]
    if "--output-dir" not in argv and argv[:1] == ["train"]:
        argv += ["--output-dir", str(out)]
    try:
        status = main(argv)
    except SystemExit as error:  # argparse's own refusals
        status = error.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("vitlm")]
    assert status == 2, captured
    assert len(lines) == 1 and fragment.format(root=files) in lines[0], (lines, fragment)
    assert "Traceback" not in captured.err
    assert not out.exists() and sorted(files.rglob("*")) == before  # nothing written, nothing left behind


def test_asked_for_random_weights_says_so_in_the_card(files, tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["convert", "open_clip:tiny-clip", str(out), "--random-weights"]) == 0
    card = (out / "README.md").read_text()
    assert "**Random weights.**" in card and "no pretrained weights were converted" in card
    assert "random-weights" in card and "converted by" not in card and "keep the license" not in card


def test_nan_weights_are_reported_when_converted(files, tmp_path, caplog):
    weights = open_clip.create_model("tiny-clip").state_dict()
    weights["visual.proj"][0, 0] = float("nan")
    save_file(weights, tmp_path / "nan.safetensors")
    out = tmp_path / "out"
    assert main(["convert", "open_clip:tiny-clip", str(out), "--checkpoint", str(tmp_path / "nan.safetensors")]) == 0
    warnings = [record.getMessage() for record in caplog.records if "NaN or inf" in record.getMessage()]
    assert len(warnings) == 1 and "nan.safetensors" in warnings[0] and "visual_projection.weight" in warnings[0]


def run_vitlm(*args, cwd):
    script = "import sys; from vitlm.cli import main; sys.argv[0] = 'vitlm'; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["convert", "timm:test_vit", "out", "--checkpoint", "missing.safetensors"], "no such file"),
        (["train", "classify", "--model", "vit-tiny-test", "--dataset", "shapes", "--layer-decay", "0"], "(0, 1]"),
    ],
)
def test_the_command_prints_one_line_and_no_traceback(args, fragment, tmp_path):
    result = run_vitlm(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and fragment in result.stderr
    assert result.stderr.startswith(f"vitlm {args[0]}: error: ") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_is_one_line_and_exit_status_130(monkeypatch, capsys):
    import vitlm.cli
    from vitlm.cli import SUBCOMMANDS

    def interrupted(args):
        raise KeyboardInterrupt

    commands = [(name, text, add, interrupted if name == "presets" else run) for name, text, add, run in SUBCOMMANDS]
    monkeypatch.setattr(vitlm.cli, "SUBCOMMANDS", commands)
    assert main(["presets"]) == 130
    assert capsys.readouterr().err == "vitlm presets: interrupted\n"
