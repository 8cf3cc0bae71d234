"""The demo's models: each tab names a source, resolved here to a loaded model and its processor.

A source is `default` (the small model shipped in `default_models/`, trained on the shapes world), a local folder, a
vitlm Hub repo id, or anything the converters accept (`open_clip:ViT-B-32/laion2b_s34b_b79k`,
`hf:openai/clip-vit-base-patch32`, ...). A converted source is saved once under the Hugging Face cache
(`$HF_HOME/vitlm/converted/`), so a later launch reads the folder instead of converting again; loaded models stay in
memory, the least recently used dropped beyond `max_loaded`.
"""

import hashlib
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoConfig

from .. import convert
from .. import models as vitlm_models
from ..models import (
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmImageProcessor,
    VitlmViTForMaskedImageModeling,
)

DEFAULT_SOURCE = "default"
DEFAULT_MODELS = Path(__file__).resolve().parent / "default_models"


class Task(NamedTuple):
    folder: str  # under DEFAULT_MODELS
    model_class: type
    needs: str  # what the tab needs, in words, for messages


TASKS = {
    "zero-shot": Task("zero-shot", VitlmDualEncoderModel, "a dual encoder (VitlmDualEncoderModel, e.g. a CLIP)"),
    "detection": Task(
        "detection",
        VitlmDualEncoderForObjectDetection,
        "an open-vocabulary detector (VitlmDualEncoderForObjectDetection, e.g. an OWL-ViT)",
    ),
    "inpainting": Task(
        "inpainting", VitlmViTForMaskedImageModeling, "a masked-image model (VitlmViTForMaskedImageModeling, e.g. MAE)"
    ),
}
VITLM_CLASSES = {name: getattr(vitlm_models, name) for name in vitlm_models.__all__}


class ModelLoadError(ValueError):
    """A source that cannot be loaded, or holds a model of the wrong kind for the tab; the message says which."""


class Loaded(NamedTuple):
    model: torch.nn.Module
    processor: VitlmImageProcessor | VitlmDualEncoderProcessor
    source: str


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "vitlm" / "converted"


def cache_name(source: str) -> str:
    """A folder name for a converter source: readable, and unique through a hash of the exact string."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", source).strip("-.")[:80]
    return f"{readable}-{hashlib.sha256(source.encode()).hexdigest()[:10]}"


class ModelStore:
    """Loads sources for the tabs, converting and caching converter sources, and keeps the last `max_loaded`
    models in memory. Thread-safe: the app serves several requests at once."""

    def __init__(self, cache_dir: Path | str | None = None, max_loaded: int = 4, device: str | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_loaded = max_loaded
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._derived: OrderedDict[tuple, tuple[torch.nn.Module, object]] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, task: str, source: str | None) -> Loaded:
        """The model for `task` from `source` (blank or `default`: the shipped default), loading it on first use.
        Raises `ModelLoadError` with a message for the user when it cannot."""
        spec = TASKS[task]
        source = (source or "").strip() or DEFAULT_SOURCE
        key = str(DEFAULT_MODELS / spec.folder) if source == DEFAULT_SOURCE else source
        with self._lock:
            # one lock per source: a slow conversion holds up requests for that source only
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                loaded = self._loaded.get(key)
            if loaded is None:
                loaded = self._load(key, source)
            with self._lock:
                self._loaded[key] = loaded
                self._loaded.move_to_end(key)
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
        if not isinstance(loaded.model, spec.model_class):
            raise ModelLoadError(
                f"{source!r} is a {type(loaded.model).__name__}; the {task} tab needs {spec.needs}. "
                f"Pick another model."
            )
        return loaded

    def _load(self, location: str, source: str) -> Loaded:
        prefix = location.partition(":")[0]
        try:
            if prefix in convert.SOURCES:
                return self._converted(location)
            if location.startswith(("/", ".", "~")):
                folder = Path(location).expanduser()
                if not folder.is_dir():
                    raise ModelLoadError(f"no model folder at {location!r}")
                location = str(folder)
            return self._from_pretrained(location, source)
        except ModelLoadError:
            raise
        except Exception as error:  # anything a broken folder, a missing repo or no network raises
            raise ModelLoadError(f"could not load {source!r}: {type(error).__name__}: {error}") from error

    def _converted(self, source: str) -> Loaded:
        folder = self.cache_dir / cache_name(source)
        if (folder / "config.json").is_file():
            return self._from_pretrained(str(folder), source)
        converted = convert.load(source)
        convert.save(converted, folder)
        return Loaded(converted.model.to(self.device).eval(), converted.processor, source)

    def _from_pretrained(self, location: str, source: str) -> Loaded:
        config = AutoConfig.from_pretrained(location)
        if not config.architectures:
            raise ModelLoadError(f"{source!r} has no `architectures` in its config: it holds no trained model")
        model_class = VITLM_CLASSES.get(config.architectures[0])
        if model_class is None:
            hint = "" if config.model_type.startswith("vitlm") else f"; convert it with the source 'hf:{source}'"
            raise ModelLoadError(f"{source!r} holds a {config.architectures[0]}, not a vitlm model{hint}")
        model = model_class.from_pretrained(location, dtype=torch.float32).to(self.device).eval()
        if isinstance(model, (VitlmDualEncoderModel, VitlmDualEncoderForObjectDetection)):
            processor = VitlmDualEncoderProcessor.from_pretrained(location)
        else:
            processor = VitlmImageProcessor.from_pretrained(location)
        return Loaded(model, processor, source)

    def cached(self, key: tuple, model: torch.nn.Module, build):
        """`build()`, remembered under `key` while `model` is still the one loaded (e.g. a zero-shot classifier for
        one label set); the last `max_loaded` are kept."""
        with self._lock:
            entry = self._derived.pop(key, None)
        if entry is None or entry[0] is not model:
            entry = (model, build())
        with self._lock:
            self._derived[key] = entry
            while len(self._derived) > self.max_loaded:
                self._derived.popitem(last=False)
        return entry[1]
