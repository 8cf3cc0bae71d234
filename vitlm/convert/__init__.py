"""Pretrained weights from open_clip, transformers and timm, converted to vitlm models with proven parity.

A source is `<prefix>:<spec>`: `open_clip:ViT-B-32/laion2b_s34b_b79k`, `hf:openai/clip-vit-base-patch32`,
`timm:vit_base_patch16_224.augreg2_in21k_ft_in1k`. Each prefix has one module, imported only when used, holding a
config translation and a pure state-dict mapping.
"""

import importlib
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor
from transformers.initialization import no_init_weights

SOURCES = {
    "open_clip": "vitlm.convert.from_open_clip",
    "hf": "vitlm.convert.from_transformers",
    "timm": "vitlm.convert.from_timm",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def load(source: str, checkpoint: str | Path | None = None) -> Converted:
    """Convert `source` in memory. `checkpoint` points the source library at a local weights file instead of
    downloading (open_clip and timm), which is also how the tests exercise the real loading code offline."""
    prefix, spec = parse_source(source)
    return importlib.import_module(SOURCES[prefix]).load(spec, checkpoint=checkpoint)


def uninitialized(model_class, config):
    """`model_class(config)` without the random initialisation: converters overwrite every weight, and the strict
    loaders make sure of it."""
    with no_init_weights():
        return model_class(config)


def load_converted_state_dict(model: PreTrainedModel, state_dict: dict[str, torch.Tensor], source: str):
    """Load a mapped state dict, refusing any weight left unmapped on either side rather than converting half."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [k for k in expected.keys() & state_dict.keys() if expected[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        raise UnsupportedSourceError(
            f"{source}: the weights do not map onto a vitlm model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {sorted(mismatched)[:5]})"
        )
    model.load_state_dict(state_dict)
    return model.eval()


def save(converted: Converted, out_dir: str | Path, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write config, safetensors weights and processor files to `out_dir` atomically: everything is written to a
    sibling folder first, so an existing `out_dir` is either left untouched or replaced whole. `dtype` casts the
    converted model in place before writing."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model = converted.model.to(DTYPES[dtype]) if dtype else converted.model
        model.save_pretrained(staging)
        converted.processor.save_pretrained(staging)
        if out_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(backup / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(backup)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def check_out_dir(out_dir: Path, overwrite: bool):
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already holds files; pass overwrite=True (--overwrite) to replace it")


def convert(
    source: str,
    out_dir: str | Path,
    dtype: str | None = None,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """Convert `source` and save it to `out_dir` (optionally pushing the folder to the Hub as `push_to_hub`)."""
    check_out_dir(Path(out_dir), overwrite)  # fail before the slow part
    out_dir = save(load(source, checkpoint=checkpoint), out_dir, dtype=dtype, overwrite=overwrite)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=out_dir, commit_message=f"Convert {source} with vitlm")
    return out_dir


__all__ = ["Converted", "UnsupportedSourceError", "SOURCES", "convert", "load", "save", "uninitialized"]
