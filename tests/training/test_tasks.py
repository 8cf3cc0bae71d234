"""The task table: every task is one complete entry of `vitlm.training.tasks.TASKS`, nothing else in the package
switches on a task's name, and the table's names and aliases are the `vitlm train` vocabulary."""

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest
import transformers

import vitlm
from vitlm.data.shapes import SPLITS
from vitlm.training.run import train
from vitlm.training.tasks import ALIASES, TASK_OPTIONS, TASKS, TrainingTask, get_task

PACKAGE = Path(vitlm.__file__).parent
TABLE = PACKAGE / "training" / "tasks.py"
# every spelling of a task: names, aliases, and the demo's older tab names
SPELLINGS = sorted({*TASKS, *ALIASES, "zero-shot", "detection", "inpainting", "classification"}, key=len)
QUOTED = "|".join(re.escape(name) for name in SPELLINGS)
SWITCHES = [
    re.compile(rf"\btask\w*\s*(?:==|!=)\s*[\"'](?:{QUOTED})[\"']"),  # task == "classify"
    re.compile(rf"[\"'](?:{QUOTED})[\"']\s*(?:==|!=)\s*\w*task"),  # "classify" == task
    re.compile(rf"\btask\w*\s+(?:not\s+)?in\s*[(\[{{]\s*[\"'](?:{QUOTED})[\"']"),  # task in ("classify", ...)
    re.compile(rf"^\s*[\"'](?:{QUOTED})[\"']\s*:", re.MULTILINE),  # {"classify": ...}, a table keyed by task
]


# tables keyed by names that are not training tasks, though they spell alike
OTHER_TABLES = {
    "convert/__init__.py": "AUTO_CLASS_NAMES, keyed by a model class's `pipeline_tag` (the Hub's task of the model)",
    "deploy/onnx.py": "GRAPHS, keyed by a model class's `pipeline_tag`: what each kind of model exports to ONNX",
    "demo/models.py": "the demo's tabs (the class and shipped folder each tab loads), not training tasks",
    "convert/from_transformers.py": "DEFAULT_ARCHITECTURES, keyed by transformers' model types (BEiT's is 'beit')",
}


def task_switches(text: str) -> list[str]:
    return [match.group(0) for pattern in SWITCHES for match in pattern.finditer(text)]


def test_the_switch_finder_finds_the_switches_the_table_replaced():
    old = 'if task == "classify":\n    pass\nDESCRIPTIONS = {\n    "classify": "an image classifier",\n}\n'
    old += 'if (task in ("contrastive", "detect")) != dual:\n    pass\nif "inpainting" == demo_task:\n    pass\n'
    assert len(task_switches(old)) == 4
    assert task_switches('task = get_task(task)\nprint(f"{task!r}")\nname="classify"\n') == []


def test_no_task_switch_outside_the_table():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path == TABLE:
            continue
        switches = task_switches(path.read_text(encoding="utf-8"))
        if str(path.relative_to(PACKAGE)) in OTHER_TABLES:  # their keys, but no comparison either
            switches = [switch for switch in switches if not SWITCHES[-1].fullmatch(switch)]
        if switches:
            found[str(path.relative_to(PACKAGE))] = switches
    assert not found, f"switch on a task name outside {TABLE.name}: {found}"


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_entry_is_complete(name):
    task = TASKS[name]
    assert task.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name)
    for field in fields(TrainingTask):
        value = getattr(task, field.name)
        optional = ("dual_encoder", "needs_classes", "sized_head", "class_column", "evaluation_inputs", "model_config")
        optional += ("training_model", "saved_models", "default_head", "settings")
        if field.name not in optional:
            assert value is not None and value != "", field.name
    assert isinstance(getattr(transformers, task.auto_class), type) and task.auto_class.startswith("AutoModel")
    assert task.shapes_eval_split in SPLITS and task.class_column in (None, "label", "objects", "masks")
    assert not task.needs_classes or task.class_column is not None
    assert task.options <= set(TASK_OPTIONS)
    assert callable(task.transform) and callable(task.parts)
    assert task.evaluation_inputs is None or callable(task.evaluation_inputs)
    assert task.model_config is None or callable(task.model_config)
    assert task.settings is None or callable(task.settings)
    assert task.description[0].islower() and task.title[0].islower()  # both go inside sentences
    assert get_task(task.alias) is task and get_task(name) is task and get_task(task) is task


def test_names_aliases_and_options_are_one_vocabulary():
    assert not set(TASKS) & set(ALIASES) and len(ALIASES) == len(TASKS)
    train_keywords = inspect.signature(train).parameters
    for keyword in TASK_OPTIONS:  # every task-specific option is a `train` keyword of some task, off by default
        assert keyword in train_keywords and train_keywords[keyword].default == TASK_OPTIONS[keyword][1]
        assert any(keyword in task.options for task in TASKS.values()), keyword
    with pytest.raises(ValueError, match="task must be one of .*'image-classification'.* got 'depth'"):
        get_task("depth")


def test_cli_takes_every_name_and_alias():
    from vitlm.cli import build_parser

    parser = build_parser()
    common = ["--model", "m", "--dataset", "d"]
    for spelling in [*TASKS, *ALIASES]:
        assert get_task(parser.parse_args(["train", spelling, *common]).task) is get_task(spelling)


def test_an_option_of_another_task_is_refused_before_any_work(tmp_path, capsys):
    from vitlm.cli import main

    # the box format used to be ignored silently outside detection
    argv = ["train", "image-classification", "--model", "vit-tiny-test", "--dataset", "shapes", "--shapes-train", "8"]
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--bbox-format", "xywh"]) == 2
    assert "the box format (--bbox-format) applies to detection, not 'image-classification'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
