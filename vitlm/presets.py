"""Named architectures: the `hub_configs/<preset>/` folders (`config.json` + `preprocessor_config.json`).

Every published architecture is data, not code: a preset folder loads with `AutoConfig.from_pretrained` and
`AutoImageProcessor.from_pretrained` like any Hub repo without weights. Dual encoders with CLIP's vocabulary (the
`clip-vit-*` presets and `shapes-clip-small`) also hold CLIP's BPE tokenizer (`vocab.json`, `merges.txt`, as
`vitlm.clip_bpe.clip_tokenizer` builds it from open_clip's file; ids equal open_clip's), so `AutoTokenizer` and
`AutoProcessor` load them too; `clip-tiny-test` (a 1000-token toy vocabulary) has none, and loading its tokenizer
raises an error saying so. In a source checkout the presets are the repository's top-level `hub_configs/` folder; an
installed vitlm ships them as the `vitlm.hub_configs` package data.

    >>> from transformers import AutoConfig
    >>> config = AutoConfig.from_pretrained(preset_path("vit-base-patch16-224"))

The `clip-*` presets are open_clip's `ViT-B-32`, `ViT-B-16` and `ViT-L-14` with GELU, as open_clip names them; OpenAI's
original weights use QuickGELU (open_clip's `*-quickgelu` configs), i.e. `hidden_act="quick_gelu"` in both towers.
"""

import json
import pathlib

CONFIG_NAME = "config.json"
SUMMARIES_NAME = "presets.json"


def _hub_configs_dir() -> pathlib.Path:
    """The installed `vitlm/hub_configs/` package data, else the source checkout's top-level `hub_configs/` (also
    where an editable install finds them). Found from this file, not through `importlib.resources`, which would
    import the `vitlm` package, and with it torch, into `vitlm presets`."""
    here = pathlib.Path(__file__).resolve().parent
    installed = here / "hub_configs"
    return installed if installed.is_dir() else here.parent / "hub_configs"


def preset_names() -> list[str]:
    """The names of every preset, sorted."""
    root = _hub_configs_dir()
    return sorted(path.parent.name for path in root.glob(f"*/{CONFIG_NAME}"))


def preset_path(name: str) -> pathlib.Path:
    """The folder of preset `name`, ready for `from_pretrained`; a ValueError lists the known presets otherwise."""
    names = preset_names()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(names)}")
    return _hub_configs_dir() / name


def preset_summary(name: str) -> dict:
    """What `vitlm presets` shows of preset `name`: its `model_type`, its vision tower's `image_size`, `stem_stride`
    (input pixels per patch side), `hidden_size`, `num_hidden_layers` and `num_attention_heads`, and its model's
    `num_parameters`. Stored in `hub_configs/presets.json` because counting parameters means building the model
    (torch); tests/test_presets.py recomputes every entry from the built model, so the file cannot drift."""
    preset_path(name)
    summaries = json.loads((_hub_configs_dir() / SUMMARIES_NAME).read_text())
    if name not in summaries:
        raise ValueError(
            f"preset {name!r} has no entry in hub_configs/{SUMMARIES_NAME}; tests/test_presets.py prints the entry"
        )
    return summaries[name]


def load_preset_config(name: str):
    """The preset's config, through `AutoConfig`."""
    from transformers import AutoConfig

    import vitlm  # noqa: F401  (registers vitlm's model types with `AutoConfig`; `vitlm presets` runs without it)

    return AutoConfig.from_pretrained(preset_path(name))


def model_class_for(config):
    """The vitlm class a preset is published as: its `config.architectures[0]`."""
    import vitlm

    architectures = getattr(config, "architectures", None) or []
    if not architectures or not hasattr(vitlm, architectures[0]):
        raise ValueError(f"the config names no vitlm model class in `architectures` (got {architectures!r})")
    return getattr(vitlm, architectures[0])


def build_empty_model(config):
    """The preset's model with its parameters on the `meta` device: its structure and sizes, instantly, no memory."""
    import torch

    with torch.device("meta"):
        return model_class_for(config)(config)


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = [
    "preset_names",
    "preset_path",
    "preset_summary",
    "load_preset_config",
    "model_class_for",
    "build_empty_model",
    "count_parameters",
]
