"""The Gradio demo (`vitlm demo`): zero-shot classification, open-vocabulary detection, segmentation and inpainting,
each tab with a model selector (the shipped shapes-world defaults, a Hub repo id, a converter source, or a local folder
while the demo serves this machine alone)."""

from .app import build_app, classify, detect, inpaint, launch, model_status, search, segment
from .models import DEFAULT_SOURCE, ModelLoadError, ModelStore

__all__ = [
    "DEFAULT_SOURCE",
    "ModelLoadError",
    "ModelStore",
    "build_app",
    "classify",
    "detect",
    "inpaint",
    "launch",
    "model_status",
    "search",
    "segment",
]
