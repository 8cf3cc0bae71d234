"""Training around the vitlm models: the task table (`tasks.TASKS`), transforms, collators, metrics and Trainer
set-up (`vitlm train`).

The names below are imported on first use, so that `vitlm.training.tasks` (the task names `vitlm --help` lists)
imports without torch.
"""

import importlib

_EXPORTS = {
    "ClassificationCollator": "collators",
    "ContrastiveCollator": "collators",
    "DetectionCollator": "collators",
    "InpaintingCollator": "collators",
    "soft_target_cross_entropy": "collators",
    "twin_contrastive_loss": "collators",
    "accuracy": "metrics",
    "average_precision": "metrics",
    "masked_psnr": "metrics",
    "mean_average_precision": "metrics",
    "TASKS": "tasks",
    "TrainingTask": "tasks",
    "get_task": "tasks",
    "VitlmTrainer": "trainer",
    "build_trainer": "trainer",
    "layerwise_lr_decay_groups": "trainer",
    "training_arguments": "trainer",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
