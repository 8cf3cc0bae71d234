"""Pretrained weights from open_clip, transformers and timm, converted to vitlm models with proven parity.

A source is `<prefix>:<spec>`: `open_clip:ViT-B-32/laion2b_s34b_b79k`, `hf:openai/clip-vit-base-patch32`,
`timm:vit_base_patch16_224.augreg2_in21k_ft_in1k`. Each prefix has one module, imported only when used, holding a
config translation and a pure state-dict mapping written as a table of `weights.Rule`s (the one mapping mechanism).
"""

import contextlib
import glob
import importlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

SOURCES = {
    "open_clip": "vitlm.convert.from_open_clip",
    "hf": "vitlm.convert.from_transformers",
    "timm": "vitlm.convert.from_timm",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# safetensors' names of the floating-point dtypes a weights file may hold
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# the Auto class users load each pipeline task's model with (the task is the class's `pipeline_tag`)
AUTO_CLASS_NAMES = {
    "image-feature-extraction": "AutoModel",
    "image-classification": "AutoModelForImageClassification",
    "image-to-image": "AutoModelForMaskedImageModeling",
    "zero-shot-image-classification": "AutoModel",
    "zero-shot-object-detection": "AutoModelForZeroShotObjectDetection",
}


logger = logging.getLogger(__name__)


class Converted(NamedTuple):
    """A converted model with the processor that prepares its inputs as the source library did."""

    model: PreTrainedModel
    processor: BaseImageProcessor | ProcessorMixin


class UnsupportedSourceError(ValueError):
    """The source names an architecture vitlm cannot represent exactly; nothing was converted."""


def parse_source(source: str) -> tuple[str, str]:
    prefix, _, spec = source.partition(":")
    if prefix not in SOURCES or not spec:
        raise ValueError(f"source {source!r} must look like '<prefix>:<name>' with a prefix among {sorted(SOURCES)}")
    return prefix, spec


def source_repo_id(source: str) -> str | None:
    """The Hub repo `source` takes its weights from, where it names one (`hf:<repo id>`, `open_clip:hf-hub:<repo
    id>`); None for local folders, files and library tags."""
    prefix, spec = parse_source(source)
    if prefix == "hf" and not Path(spec).exists():
        return spec
    if prefix == "open_clip" and spec.startswith("hf-hub:"):
        return spec.removeprefix("hf-hub:")
    return None


def public_source(source: str) -> str:
    """`source` as a published card or commit message shows it: a local path cut to its last component."""
    prefix, spec = parse_source(source)
    return f"{prefix}:{Path(spec).name}" if Path(spec).exists() else source


def model_card(model: PreTrainedModel, source: str, name: str, random_weights: bool = False) -> str:
    """README.md for a converted model: Hub metadata (library, pipeline, tags, base model) and how to load it. No
    license is claimed: the weights keep their source's. With `random_weights` the card says plainly that only the
    architecture was converted."""
    from huggingface_hub import ModelCardData

    pipeline_tag = model.pipeline_tag
    auto_class = AUTO_CLASS_NAMES[pipeline_tag]
    provenance = "random-weights" if random_weights else "converted"
    card_data = ModelCardData(
        library_name="vitlm",
        pipeline_tag=pipeline_tag,
        tags=["vitlm", "vision", model.config.model_type, provenance, parse_source(source)[0]],
        base_model=None if random_weights else source_repo_id(source),
    )
    source = public_source(source)
    if random_weights:
        about = (
            f"**Random weights.** `{type(model).__name__}` with the architecture of `{source}` and randomly\n"
            "initialized weights (`vitlm convert --random-weights`): no pretrained weights were converted, so its\n"
            "outputs mean nothing until it is trained. The processor prepares inputs as the source library does."
        )
        license_text = "No weights were taken from the source; its architecture is described by its library."
    else:
        about = (
            f"`{type(model).__name__}` converted by `vitlm convert` from `{source}`, with a processor that prepares\n"
            "inputs as the source library does. vitlm's converters are tested for numerical parity with each source\n"
            "library."
        )
        license_text = f"The weights keep the license of their source, `{source}`; check it before use."
    return f"""---
{card_data.to_yaml()}
---

# {name}

{about}

```python
import vitlm  # or, without vitlm: from_pretrained(..., trust_remote_code=True)
from transformers import AutoProcessor, {auto_class}

model = {auto_class}.from_pretrained("<this repo>")
processor = AutoProcessor.from_pretrained("<this repo>")
```

## License

{license_text}
"""


def load(source: str, checkpoint: str | Path | None = None, random_weights: bool = False) -> Converted:
    """Convert `source` in memory. `checkpoint` points the source library at a local safetensors weights file instead
    of downloading (open_clip and timm), which is also how the tests exercise the real loading code offline. A source
    that names no weights (an open_clip model without pretrained tag) is refused unless `random_weights`, which builds
    the architecture with random weights (open_clip and timm). Weights holding NaN or inf values are reported."""
    prefix, spec = parse_source(source)
    if random_weights and checkpoint is not None:
        raise ValueError("random weights and a checkpoint exclude each other: pass one of them")
    converted = importlib.import_module(SOURCES[prefix]).load(
        spec, checkpoint=checkpoint, random_weights=random_weights
    )
    converted.model.warn_if_nonfinite(source if checkpoint is None else f"{source} (checkpoint {checkpoint})")
    return converted


def check_checkpoint(checkpoint: str | Path):
    """Refuse a weights file for a source library unless it is a readable safetensors file of floating-point tensors:
    vitlm never unpickles weights, and a damaged file is named here rather than deep inside the source library."""
    from safetensors import SafetensorError, safe_open

    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"checkpoint must be a .safetensors file, got {str(path)!r}: vitlm never unpickles weight files "
            "(.bin, .pt, .pth), which can run code when loaded"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        with safe_open(path, "pt") as weights:
            dtypes = {name: weights.get_slice(name).get_dtype() for name in weights.keys()}
    except SafetensorError as error:
        raise ValueError(f"checkpoint {path} is not a readable safetensors file ({error}); is it truncated?") from None
    if not dtypes:
        raise ValueError(f"checkpoint {path} holds no tensors")
    others = {name: dtype for name, dtype in dtypes.items() if dtype not in FLOAT_DTYPES}
    if others:
        listed = ", ".join(f"{name} ({dtype})" for name, dtype in sorted(others.items())[:3])
        raise ValueError(
            f"checkpoint {path} holds {len(others)} tensors that are not floating-point weights: {listed}"
        )


def uninitialized(model_class, config):
    """`model_class(config)` on the meta device, without memory or random initialisation, for
    `load_converted_state_dict` to fill: converters overwrite every weight. The device context is the calling
    thread's own, so models built at the same time in other threads initialise as usual (unlike patching
    `torch.nn.init`)."""
    with torch.device("meta"):
        return model_class(config)


def load_converted_state_dict(model: PreTrainedModel, state_dict: dict[str, torch.Tensor], source: str):
    """Load a mapped state dict, refusing any weight left unmapped on either side rather than converting half. A model
    from `uninitialized` gets its memory here; buffers no state dict holds (computed tables such as CLIP's position
    ids) are then computed by the model's own `_init_weights`, as transformers' `from_pretrained` does."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        raise UnsupportedSourceError(
            f"{source}: the weights do not map onto a {type(model).__name__} (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {sorted(mismatched)[:5]})"
        )
    on_meta = any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    if on_meta:
        model.to_empty(device="cpu")
    model.load_state_dict(state_dict)
    if on_meta and any(name not in expected for name, _ in model.named_buffers()):
        # loaded tensors carry transformers' "initialized" flag, which its init functions leave alone
        for tensor in model.state_dict(keep_vars=True).values():
            tensor._is_hf_initialized = True
        model.initialize_weights()
    return model.eval()


def save(
    converted: Converted,
    out_dir: str | Path,
    dtype: str | None = None,
    overwrite: bool = False,
    source: str | None = None,
    random_weights: bool = False,
) -> Path:
    """Write config, safetensors weights and processor files to `out_dir` atomically: everything is written to a
    sibling staging folder first, so an existing `out_dir` is either left untouched or replaced whole, and only once
    the new folder is complete. `dtype` casts the converted model in place before writing; `source` adds a model card
    (README.md) naming it (`random_weights`: saying that its weights are random).

    Staging folders carry the writing process's id: one that an interrupted save left behind is removed (or its
    folder put back) by the next save to the same place, once that process is gone."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    with staged_folder(out_dir) as staging:
        model = converted.model.to(DTYPES[dtype]) if dtype else converted.model
        model.save_pretrained(staging)
        converted.processor.save_pretrained(staging)
        if source is not None:
            (staging / "README.md").write_text(model_card(converted.model, source, out_dir.name, random_weights))
    return out_dir


@contextlib.contextmanager
def staged_folder(out_dir: Path):
    """Yield a new sibling staging folder to write into; once the block ends without an error it replaces `out_dir`
    whole (an existing one is moved aside first and put back if the rename fails), else it is removed. Callers check
    `out_dir` with `check_out_dir` first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(out_dir, "partial")
    try:
        yield staging
        if out_dir.exists():
            backup = _staging_dir(out_dir, "old")
            out_dir.rename(backup / out_dir.name)
            try:
                staging.rename(out_dir)
            except BaseException:
                (backup / out_dir.name).rename(out_dir)
                raise
            shutil.rmtree(backup)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _staging_prefix(out_dir: Path, kind: str) -> str:
    return f".{out_dir.name}.{kind}-"


def _staging_dir(out_dir: Path, kind: str) -> Path:
    """A new hidden sibling of `out_dir` named after this process, whose leftovers `clean_leftovers` can tell apart."""
    staging = out_dir.parent / f"{_staging_prefix(out_dir, kind)}{os.getpid()}-{secrets.token_hex(8)}"
    staging.mkdir(mode=0o777)  # the umask's permissions, as for any folder (mkdtemp's are 0700 whatever the umask)
    return staging


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: keep its folders
        return True
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def clean_leftovers(out_dir: Path):
    """Remove what an interrupted save to `out_dir` left beside it (a killed process runs no cleanup): staging folders
    of processes that are gone, and the previous folder, put back first if the new one never took its place."""
    if not out_dir.parent.is_dir():
        return
    for kind in ("old", "partial"):  # a folder to put back first, so that staging leftovers never replace it
        for leftover in sorted(out_dir.parent.glob(glob.escape(_staging_prefix(out_dir, kind)) + "*")):
            pid = leftover.name.removeprefix(_staging_prefix(out_dir, kind)).partition("-")[0]
            if not pid.isdigit() or _process_alive(int(pid)) or not leftover.is_dir():
                continue
            previous = leftover / out_dir.name
            if kind == "old" and previous.is_dir() and not out_dir.exists():
                previous.rename(out_dir)
                logger.warning(f"put back {out_dir}, which an interrupted save had moved to {leftover}")
            shutil.rmtree(leftover)
            logger.warning(f"removed {leftover}, left behind by an interrupted save to {out_dir}")


def check_out_dir(out_dir: Path, overwrite: bool, reads=()):
    """Refuse an output folder that cannot be written or replaced whole (a file, the current folder or one above it,
    a folder holding files without `overwrite`, a folder holding one of the paths in `reads`: the model or checkpoint
    the job reads, which replacing the folder would delete), after cleaning what an interrupted save left there."""
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(
            f"{str(out_dir) or '.'!r} is the current folder or one above it, which cannot be replaced whole; "
            "name a folder of its own"
        )
    for path in reads:
        if isinstance(path, (str, os.PathLike)) and Path(path).exists():
            source = Path(path).resolve()
            if source == resolved or resolved in source.parents:
                raise ValueError(
                    f"{out_dir} holds {os.fspath(path)}, which writing it would replace: name another folder"
                )
    blocking = next((parent for parent in resolved.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise FileExistsError(f"cannot write {out_dir}: {blocking} is a file, not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    clean_leftovers(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already holds files; pass overwrite=True (--overwrite) to replace it")


def convert(
    source: str,
    out_dir: str | Path,
    dtype: str | None = None,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    random_weights: bool = False,
) -> Path:
    """Convert `source` and save it to `out_dir` with a model card (optionally pushing the folder to the Hub as
    `push_to_hub`); `random_weights` as in `load`."""
    check_out_dir(Path(out_dir), overwrite, reads=[checkpoint] if checkpoint else [])  # fail before the slow part
    if push_to_hub:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(push_to_hub)  # a ValueError naming the id
    converted = load(source, checkpoint=checkpoint, random_weights=random_weights)
    out_dir = save(converted, out_dir, dtype=dtype, overwrite=overwrite, source=source, random_weights=random_weights)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(
            repo_id=push_to_hub, folder_path=out_dir, commit_message=f"Convert {public_source(source)} with vitlm"
        )
    return out_dir


__all__ = [
    "Converted",
    "UnsupportedSourceError",
    "SOURCES",
    "check_checkpoint",
    "convert",
    "load",
    "model_card",
    "public_source",
    "save",
    "source_repo_id",
    "staged_folder",
    "uninitialized",
]
