"""The checks of `vitlm train`'s settings that need no data, model or torch: `vitlm train` runs them before importing
anything heavy, so that a setting out of range is refused at once, and `vitlm.training.run.train` runs them for
callers of the Python API. Standard library only at module level (`_vitlm_cli` loads this module by itself)."""

import math
from pathlib import Path

from .tasks import check_task_options, get_task


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_arguments(
    task,
    output_dir,
    *,
    epochs,
    max_steps,
    batch_size,
    lr,
    seed,
    eval_steps,
    logging_steps,
    layer_decay,
    twin_weight=0.0,
    lora_rank=None,
    lora_targets=None,
    merge_lora=False,
    resume=False,
    overwrite=False,
    reads=(),
    **task_options,
):
    """Refuse a training setting out of its range, naming it and its `vitlm train` option, or an option of another
    task (`TASK_OPTIONS`: mixup on a task without labels to mix, ...), before any data is generated or model built:
    Trainer would otherwise fail late, or train silently with no effect (a learning rate or layer decay of 0)."""
    get_task(task)
    check_output_dir(output_dir, resume, overwrite, reads)
    mixup_alpha, cutmix_alpha = task_options.get("mixup_alpha", 0.0), task_options.get("cutmix_alpha", 0.0)
    ranges = [  # (name, option, value, valid, what it must be)
        ("epochs", "--epochs", epochs, _number(epochs) and epochs > 0, "a number > 0"),
        (
            "max_steps",
            "--max-steps",
            max_steps,
            _integer(max_steps) and (max_steps >= 1 or max_steps == -1),
            "an integer >= 1, or -1 (no limit)",
        ),
        ("batch_size", "--batch-size", batch_size, _integer(batch_size) and batch_size >= 1, "an integer >= 1"),
        ("lr", "--lr", lr, _number(lr) and lr > 0, "a number > 0"),
        ("seed", "--seed", seed, _integer(seed) and 0 <= seed < 2**32, "an integer from 0 to 2**32 - 1"),
        (
            "eval_steps",
            "--eval-steps",
            eval_steps,
            eval_steps is None or _integer(eval_steps) and eval_steps >= 1,
            "an integer >= 1",
        ),
        (
            "logging_steps",
            "--logging-steps",
            logging_steps,
            _integer(logging_steps) and logging_steps >= 1,
            "an integer >= 1",
        ),
        (
            "layer_decay",
            "--layer-decay",
            layer_decay,
            layer_decay is None or _number(layer_decay) and 0 < layer_decay <= 1,
            "a number in (0, 1]",
        ),
        ("mixup_alpha", "--mixup", mixup_alpha, _number(mixup_alpha) and mixup_alpha >= 0, "a number >= 0"),
        ("cutmix_alpha", "--cutmix", cutmix_alpha, _number(cutmix_alpha) and cutmix_alpha >= 0, "a number >= 0"),
    ]
    for name, option, value, valid, expected in ranges:
        if not valid:
            raise ValueError(f"{name} ({option}) must be {expected}, got {value!r}")
    if not (isinstance(twin_weight, (int, float)) and math.isfinite(twin_weight) and twin_weight >= 0):
        raise ValueError(f"twin_weight must be a finite number >= 0, got {twin_weight!r}")
    if lora_rank is not None and not (_integer(lora_rank) and lora_rank >= 1):
        raise ValueError(f"lora_rank (--lora) must be an integer >= 1, got {lora_rank!r}")
    if lora_targets is not None and (
        lora_rank is None or not lora_targets or not all(isinstance(t, str) and t.strip() for t in lora_targets)
    ):
        raise ValueError(f"lora_targets (--lora-targets) must be layer names with --lora, got {lora_targets!r}")
    if merge_lora and lora_rank is None:
        raise ValueError("merge_lora (--merge-lora) merges LoRA adapters: add --lora")
    check_task_options(task, twin_weight=twin_weight, **task_options)


def check_output_dir(output_dir, resume: bool = False, overwrite: bool = False, reads=()) -> None:
    """Refuse an output folder that holds files unless the run continues there (`resume`) or replaces them
    (`overwrite`: never the current folder or one above it, nor the home folder, nor a folder holding one of the
    paths in `reads`, the model and data the run reads): a second run into it would mix its files with the first's,
    and replace the first's model."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {output_dir} exists and is not a folder")
    if resume and overwrite:
        raise ValueError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    if overwrite:
        resolved, cwd = out.resolve(), Path.cwd().resolve()
        if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
            raise ValueError(
                f"output_dir {str(output_dir) or '.'!r} is the current folder, one above it or the home folder, which "
                "--overwrite does not replace; name a folder of its own"
            )
        for path in reads:
            source = Path(path).resolve()
            if Path(path).exists() and (source == resolved or resolved in source.parents):
                raise ValueError(
                    f"{path} is in output_dir {output_dir}, which --overwrite would delete before reading it: "
                    "train into another folder"
                )
    elif not resume and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"output_dir {output_dir} already holds files: pass --resume to continue the run saved there, --overwrite "
            "to replace them, or another --output-dir"
        )


__all__ = ["check_arguments", "check_output_dir"]
