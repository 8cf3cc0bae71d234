"""Training around the vitlm models: transforms, collators, metrics and Trainer set-up (`vitlm train`)."""

from .collators import (
    ClassificationCollator,
    ContrastiveCollator,
    DetectionCollator,
    InpaintingCollator,
    soft_target_cross_entropy,
    twin_contrastive_loss,
)
from .metrics import accuracy, average_precision, masked_psnr, mean_average_precision
from .trainer import TASKS, VitlmTrainer, build_trainer, layerwise_lr_decay_groups, training_arguments

__all__ = [
    "TASKS",
    "ClassificationCollator",
    "ContrastiveCollator",
    "DetectionCollator",
    "VitlmTrainer",
    "accuracy",
    "average_precision",
    "build_trainer",
    "InpaintingCollator",
    "layerwise_lr_decay_groups",
    "masked_psnr",
    "mean_average_precision",
    "soft_target_cross_entropy",
    "twin_contrastive_loss",
    "training_arguments",
]
