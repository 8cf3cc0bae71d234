"""LoRA fine-tuning through PEFT (`vitlm train ... --lora R`): low-rank adapters on the towers' fused qkv and MLP
layers, the task head outside the towers trained whole, saved on their own and merged on request."""

import re
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

# the towers' linear layers LoRA adapts unless told otherwise: the fused attention input and the MLP
DEFAULT_TARGETS = ("qkv", "fc1", "fc2")


def towers_and_heads(model: PreTrainedModel) -> tuple[list[str], list[str]]:
    """(towers, heads): a head model's direct children that are models themselves (the encoders, or a whole dual
    encoder under a detector) and the others holding weights (classifier, projections, box and class heads, a
    decoder); a model without such children is one tower, named ""."""
    towers = [name for name, child in model.named_children() if isinstance(child, PreTrainedModel)]
    if not towers:
        return [""], []
    heads = [
        name
        for name, child in model.named_children()
        if name not in towers and next(child.parameters(), None) is not None
    ]
    return towers, heads


def lora_target_modules(model: PreTrainedModel, targets=DEFAULT_TARGETS) -> list[str]:
    """The full names of the towers' linear layers named as one of `targets` (their last name: qkv, proj, fc1, fc2,
    ...); a ValueError naming a target that matches none."""
    towers, _ = towers_and_heads(model)
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    in_towers = [name for name in linear if any(name.startswith(f"{tower}.") or not tower for tower in towers)]
    for target in targets:
        if not any(name.rpartition(".")[2] == target for name in in_towers):
            available = sorted({name.rpartition(".")[2] for name in in_towers})
            raise ValueError(f"LoRA target {target!r} names no linear layer of the towers; they have {available}")
    return [name for name in in_towers if name.rpartition(".")[2] in targets]


def apply_lora(model: PreTrainedModel, rank: int, targets=DEFAULT_TARGETS, alpha: float | None = None):
    """`model` wrapped by PEFT: rank-`rank` adapters (scale `alpha / rank`, alpha defaulting to the rank) on the
    towers' `targets` layers, the heads trained and saved whole (`modules_to_save`), every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    _, heads = towers_and_heads(model)
    # one regular expression of the full names: a list would be shortened by PEFT to the names' last parts, which
    # would also match same-named layers of a head (an MAE decoder's blocks)
    names = lora_target_modules(model, tuple(targets))
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        target_modules="|".join(map(re.escape, names)),
        lora_dropout=0.0,
        modules_to_save=heads or None,
    )
    return get_peft_model(model, config)


def load_lora(folder: str | Path, merge: bool = False):
    """The model an adapter folder or Hub repo (saved by `vitlm train --lora`) adapts, with its adapters: the base
    model loaded from where the adapters' config names it, by the class the folder's config.json names. `merge=True`
    folds the adapters into the weights and returns a plain vitlm model (save it like any); otherwise a PEFT model.
    A base named by a path starting with `./` or `../` is relative to `folder`; one recorded by an absolute path that
    no longer exists is looked for beside `folder`, under its name."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig

    from .. import models

    if not Path(folder).is_dir():
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(folder))
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no adapter_config.json: it is not a LoRA adapter folder")
    architecture = (AutoConfig.from_pretrained(folder).architectures or [""])[0]
    model_class = getattr(models, architecture, None)
    if model_class is None:
        raise ValueError(f"{folder}'s config.json names no vitlm architecture ({architecture!r})")
    base_path = PeftConfig.from_pretrained(folder).base_model_name_or_path
    sibling = folder.parent / Path(base_path).name
    if base_path.startswith(("./", "../")):
        # a path relative to the adapter folder (adapters shipped beside their base name it "../<base>")
        base_path = str(folder / base_path)
    elif Path(base_path).is_absolute() and not Path(base_path).is_dir() and (sibling / "config.json").is_file():
        # a base folder that moved together with the adapters, as their sibling
        base_path = str(sibling)
    # the folder's config, not the base's: a head resized for new classes is part of the adapters
    base = model_class.from_pretrained(
        base_path,
        config=model_class.config_class.from_pretrained(folder),
        ignore_mismatched_sizes=True,
    )
    model = PeftModel.from_pretrained(base, folder)
    return model.merge_and_unload() if merge else model


__all__ = ["DEFAULT_TARGETS", "apply_lora", "load_lora", "lora_target_modules", "towers_and_heads"]
