"""The demo's models: each tab names a source, resolved here to a loaded model and its processor.

A source is `default` (the small model shipped in `default_models/`, trained on the shapes world), a local folder, a
vitlm Hub repo id, or anything the converters accept (`open_clip:ViT-B-32/laion2b_s34b_b79k`,
`hf:openai/clip-vit-base-patch32`, ...). A converted source is saved once under the Hugging Face cache
(`$HF_HOME/vitlm/converted/`), so a later launch reads the folder instead of converting again; loaded models stay in
memory, the least recently used dropped beyond `max_loaded`.

A store made with `allow_local=False` (the demo served beyond this machine) never lets a source reach the server's
files: it takes only `default`, Hub repo ids and converter sources that name a Hub model, checks their syntax before
anything else, and reads Hub repos through `huggingface_hub` (a repo id handed to transformers would be read as a
folder of the same name, where one exists).
"""

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoConfig

from .. import convert
from .. import models as vitlm_models
from ..models import (
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderForSemanticSegmentation,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmImageProcessor,
    VitlmViTForInpaintingSynthesis,
    VitlmViTForMaskedImageModeling,
)

DEFAULT_SOURCE = "default"
DEFAULT_MODELS = Path(__file__).resolve().parent / "default_models"


class Task(NamedTuple):
    folder: str  # under DEFAULT_MODELS
    model_class: type  # the default model's
    needs: str  # what the tab needs, in words, for messages
    also: tuple[type, ...] = ()  # other model classes the tab runs


TASKS = {
    "zero-shot-image-classification": Task(
        "zero-shot", VitlmDualEncoderModel, "a dual encoder (VitlmDualEncoderModel, e.g. a CLIP)"
    ),
    "zero-shot-object-detection": Task(
        "detection",
        VitlmDualEncoderForObjectDetection,
        "an open-vocabulary detector (VitlmDualEncoderForObjectDetection, e.g. an OWL-ViT)",
    ),
    "masked-image-modeling": Task(
        "inpainting-synthesis",
        VitlmViTForInpaintingSynthesis,
        "a masked-image model (VitlmViTForInpaintingSynthesis, or VitlmViTForMaskedImageModeling, e.g. MAE)",
        also=(VitlmViTForMaskedImageModeling,),
    ),
    "image-segmentation": Task(
        "segmentation",
        VitlmDualEncoderForSemanticSegmentation,
        "an open-vocabulary segmenter (VitlmDualEncoderForSemanticSegmentation)",
    ),
}
VITLM_CLASSES = {name: getattr(vitlm_models, name) for name in vitlm_models.__all__}
logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A source that cannot be loaded, or holds a model of the wrong kind for the tab; the message says which."""


# what a public store downloads from a Hub repo: configs, processor and tokenizer files and safetensors weights (no
# pickled weights, and no Python files: the model runs on the installed vitlm's classes)
HUB_FILES = ["*.json", "*.txt", "*.safetensors"]
PUBLIC_SOURCES = (
    "`default`, a vitlm Hub repo id (org/name) or a converter source naming a Hub model (hf:org/name, "
    "open_clip:<model>/<pretrained tag>, open_clip:hf-hub:org/name, timm:<model>[.<tag>], timm:hf-hub:org/name)"
)


def is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def is_public_source(source: str) -> bool:
    """Whether `source` names only the shipped default or Hub models, by its syntax alone (no file is looked at, so
    the answer tells nothing about the server's files). A repo id or a timm model name is never a path here: the
    repo is read through the Hub API, and timm reads the Hub unless a name has a `local-dir:` prefix."""
    if source == DEFAULT_SOURCE:
        return True
    prefix, colon, spec = source.partition(":")
    if not colon:
        return is_repo_id(source)
    schema, _, name = spec.partition(":")
    if prefix == "hf":
        return is_repo_id(spec)
    if prefix == "timm":
        return is_repo_id(name) if schema == "hf-hub" else "/" not in spec and is_repo_id(spec)
    if prefix == "open_clip":
        if schema == "hf-hub":
            return is_repo_id(name)
        return is_open_clip_tag(*spec.partition("/")[::2])
    return False


def is_open_clip_tag(model: str, tag: str) -> bool:
    """`model/tag` is one of open_clip's pretrained weights (open_clip reads a tag that is not one as a file path)."""
    try:
        import open_clip
    except ModuleNotFoundError as error:
        raise ModelLoadError("open_clip sources need open_clip: pip install 'vitlm[convert]'") from error
    return tag in open_clip.list_pretrained_tags_by_model(model)


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
    models in memory. Thread-safe: the app serves several requests at once. `allow_local=False` refuses every source
    that could read the server's files (see the module's docstring)."""

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        max_loaded: int = 4,
        device: str | None = None,
        allow_local: bool = True,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_loaded = max_loaded
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.allow_local = allow_local
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._derived: OrderedDict[tuple, tuple[torch.nn.Module, object]] = OrderedDict()
        self._loading: dict[str, list] = {}  # source -> [its lock, how many requests hold or wait for it]
        self._lock = threading.Lock()

    def get(self, task: str, source: str | None, on_load: Callable[[str], None] | None = None) -> Loaded:
        """The model for `task` from `source` (blank or `default`: the shipped default), loading it on first use.
        Raises `ModelLoadError` with a message for the user when it cannot. `on_load(message)` is called when the
        model is not in memory yet, before this request loads it or waits for another request loading it."""
        spec = TASKS[task]
        source = (source or "").strip() or DEFAULT_SOURCE
        if not self.allow_local and not is_public_source(source):
            # one message whatever the string is: it must not tell whether a path exists on the server
            raise ModelLoadError(
                f"{source!r} is not a model this public demo loads: it takes {PUBLIC_SOURCES}. Local folders and "
                "files are read only when the demo serves on 127.0.0.1 (or is started with --allow-local-models)."
            )
        key = str(DEFAULT_MODELS / spec.folder) if source == DEFAULT_SOURCE else source
        if on_load is not None:
            with self._lock:
                loading = key not in self._loaded
            if loading:
                on_load(f"Loading the model {source!r} (first use)...")
        with self._loading_lock(key):
            with self._lock:
                loaded = self._loaded.get(key)
            if loaded is None:
                logger.info("vitlm demo: loading the %s model %r...", task, source)
                start = time.perf_counter()
                loaded = self._load(key, source)
                logger.info("vitlm demo: loaded the %s model %r in %.1f s", task, source, time.perf_counter() - start)
            with self._lock:
                self._loaded[key] = loaded
                self._loaded.move_to_end(key)
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
        if not isinstance(loaded.model, (spec.model_class, *spec.also)):
            raise ModelLoadError(
                f"{source!r} is a {type(loaded.model).__name__}; the {task} tab needs {spec.needs}. "
                f"Pick another model."
            )
        return loaded

    @contextlib.contextmanager
    def _loading_lock(self, key: str):
        """One lock per source, so that a slow conversion holds up requests for that source only; it lives while a
        request holds or waits for it, so the table stays as small as the requests in flight, however many
        distinct strings users type."""
        with self._lock:
            entry = self._loading.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._loading[key]

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
            elif not self.allow_local:  # a repo id (checked by `get`)
                location = self._hub_folder(location)
            return self._from_pretrained(location, source)
        except ModelLoadError:
            raise
        except Exception as error:  # anything a broken folder, a missing repo or no network raises
            raise ModelLoadError(f"could not load {source!r}: {type(error).__name__}: {error}") from error

    @staticmethod
    def _hub_folder(repo_id: str) -> str:
        """The local copy of Hub repo `repo_id` (downloaded on first use), read by transformers as a folder."""
        import huggingface_hub

        return huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES)

    def _converted(self, source: str) -> Loaded:
        folder = self.cache_dir / cache_name(source)
        if (folder / "config.json").is_file():
            return self._from_pretrained(str(folder), source)
        prefix, _, spec = source.partition(":")
        if prefix == "hf" and not self.allow_local:
            converted = convert.load(f"hf:{self._hub_folder(spec)}")
        else:
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
        if (Path(location) / "adapter_config.json").is_file():
            # LoRA adapters over a base model (a folder `vitlm train --lora` wrote): merged
            from ..training.lora import load_lora

            model = load_lora(location, merge=True).float()
        else:
            model = model_class.from_pretrained(location, dtype=torch.float32)
        model = model.to(self.device).eval()
        dual_encoders = (
            VitlmDualEncoderModel,
            VitlmDualEncoderForObjectDetection,
            VitlmDualEncoderForSemanticSegmentation,
        )
        if isinstance(model, dual_encoders):
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
