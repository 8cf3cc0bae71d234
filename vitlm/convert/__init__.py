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

SOURCES = {
    "open_clip": "vitlm.convert.from_open_clip",
    "hf": "vitlm.convert.from_transformers",
    "timm": "vitlm.convert.from_timm",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# the Auto class users load each pipeline task's model with (the task is the class's `pipeline_tag`)
AUTO_CLASS_NAMES = {
    "image-feature-extraction": "AutoModel",
    "image-classification": "AutoModelForImageClassification",
    "image-to-image": "AutoModelForMaskedImageModeling",
    "zero-shot-image-classification": "AutoModel",
    "zero-shot-object-detection": "AutoModelForZeroShotObjectDetection",
}


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


def model_card(model: PreTrainedModel, source: str, name: str) -> str:
    """README.md for a converted model: Hub metadata (library, pipeline, tags, base model) and how to load it. No
    license is claimed: the weights keep their source's."""
    from huggingface_hub import ModelCardData

    pipeline_tag = model.pipeline_tag
    auto_class = AUTO_CLASS_NAMES[pipeline_tag]
    card_data = ModelCardData(
        library_name="vitlm",
        pipeline_tag=pipeline_tag,
        tags=["vitlm", "vision", model.config.model_type, "converted", parse_source(source)[0]],
        base_model=source_repo_id(source),
    )
    source = public_source(source)
    return f"""---
{card_data.to_yaml()}
---

# {name}

`{type(model).__name__}` converted by `vitlm convert` from `{source}`, with a processor that prepares inputs as the
source library does. vitlm's converters are tested for numerical parity with each source library.

```python
import vitlm  # or, without vitlm: from_pretrained(..., trust_remote_code=True)
from transformers import AutoProcessor, {auto_class}

model = {auto_class}.from_pretrained("<this repo>")
processor = AutoProcessor.from_pretrained("<this repo>")
```

## License

The weights keep the license of their source, `{source}`; check it before use.
"""


def load(source: str, checkpoint: str | Path | None = None) -> Converted:
    """Convert `source` in memory. `checkpoint` points the source library at a local weights file instead of
    downloading (open_clip and timm), which is also how the tests exercise the real loading code offline."""
    prefix, spec = parse_source(source)
    return importlib.import_module(SOURCES[prefix]).load(spec, checkpoint=checkpoint)


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
) -> Path:
    """Write config, safetensors weights and processor files to `out_dir` atomically: everything is written to a
    sibling folder first, so an existing `out_dir` is either left untouched or replaced whole. `dtype` casts the
    converted model in place before writing; `source` adds a model card (README.md) naming it."""
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
        if source is not None:
            (staging / "README.md").write_text(model_card(converted.model, source, out_dir.name))
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
    """Convert `source` and save it to `out_dir` with a model card (optionally pushing the folder to the Hub as
    `push_to_hub`)."""
    check_out_dir(Path(out_dir), overwrite)  # fail before the slow part
    out_dir = save(load(source, checkpoint=checkpoint), out_dir, dtype=dtype, overwrite=overwrite, source=source)
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
    "convert",
    "load",
    "model_card",
    "public_source",
    "save",
    "source_repo_id",
    "uninitialized",
]
