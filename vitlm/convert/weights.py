"""The one way converters map weights: an ordered table of rules, applied by `map_weights`.

A rule names source keys and the target key they become, with an optional tensor transform:

    Rule("blocks.*.attn.", "encoder.layers.*.attention.")                       # rename
    Rule("visual.proj", "visual_projection.weight", TRANSPOSE)                  # rename and transform
    Rule(("*.q_proj.", "*.k_proj.", "*.v_proj."), "*.qkv.")                     # merge: concatenated along dim 0
    Rule("decoder.decoder_pos_embed", None)                                     # consumed by the converter itself

In a key pattern `*` stands for one number (a layer or stage index), carried to the target's `*` in order, and a
pattern ending with "." covers every key under that prefix, the rest of the key carried over. The first rule
whose pattern matches a key applies. `nest` places a table under prefixes (a tower inside a model, a backbone inside
a classifier) and `reverse` reads a table backwards (a merge becomes a split), so one table serves both
directions. `map_weights` refuses any source key no rule maps, a merge with a part missing, and, given the target
model's keys, every target weight left missing or without a place, naming the keys on both sides.

transformers' own conversion machinery (`WeightConverter` / `WeightRenaming` in `core_model_loading`) describes the
same thing for legacy checkpoints of one model class: its mappings live in a process-wide registry keyed by model type
and are applied by internals of `from_pretrained` / `save_pretrained` to every load of that class, with no entry point
mapping one library's state dict onto another library's model. These rules keep its vocabulary (source patterns ->
target patterns, merge = concatenate, split = chunk, one table for both directions) in a few lines of our own.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache

import torch
from tqdm.auto import tqdm

from . import UnsupportedSourceError, load_converted_state_dict


@dataclass(frozen=True)
class Transform:
    """A named tensor change and, where one exists, its inverse (for `reverse`)."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor] | None = None

    def inverted(self) -> "Transform":
        if self.inverse is None:
            raise ValueError(f"the transform {self.name!r} has no inverse")
        return Transform(f"inverse of {self.name}", self.inverse, self.forward)


# a (width, embed) matrix used as `x @ proj` becomes a Linear's (embed, width) weight
TRANSPOSE = Transform("transpose", lambda t: t.t(), lambda t: t.t())
# a 1-element or scalar tensor as a scalar (open_clip's logit scale and bias)
SCALAR = Transform("scalar", lambda t: t.reshape(()))


def leading_dims(count: int) -> Transform:
    """`count` singleton dimensions in front: a (width,) class token as (1, 1, width), a (tokens, width) position
    table as (1, tokens, width)."""
    return Transform(f"{count} leading dims", lambda t: t[(None,) * count], lambda t: t.reshape(t.shape[count:]))


def _as_tuple(patterns) -> tuple[str, ...]:
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


@dataclass(frozen=True)
class Rule:
    """Source key pattern(s) -> target key pattern(s), with an optional transform. Several sources are concatenated
    along dim 0 in their order (fused q, k, v); several targets split the tensor into equal chunks; a target of None
    marks source weights the converter reads itself (a table it checks and vitlm computes)."""

    source: str | tuple[str, ...]
    target: str | tuple[str, ...] | None
    transform: Transform | None = None
    sources: tuple[str, ...] = field(init=False, repr=False)
    targets: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self):
        sources, targets = _as_tuple(self.source), () if self.target is None else _as_tuple(self.target)
        if len(sources) > 1 and len(targets) > 1:
            raise ValueError(f"{self}: a rule merges several sources or splits into several targets, not both")
        shapes = {(pattern.count("*"), pattern.endswith(".")) for pattern in sources + targets}
        if len(shapes) > 1:
            raise ValueError(f"{self}: every pattern needs the same number of `*` and the same kind (key or prefix)")
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "targets", targets)

    def match(self, key: str) -> tuple[int, str | None] | None:
        """Which source pattern matches `key` and the first target key it becomes (None for weights the converter
        consumes), or None when the rule does not apply to `key`."""
        for index, pattern in enumerate(self.sources):
            if _regex(pattern).fullmatch(key):
                return index, _rename(key, pattern, self.targets[0]) if self.targets else None
        return None

    def apply(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The target tensors of the source tensors (in the order of `sources`)."""
        tensor = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        if self.transform is not None:
            tensor = self.transform.forward(tensor)
        return list(tensor.chunk(len(self.targets))) if len(self.targets) > 1 else [tensor]


@cache
def _regex(pattern: str) -> re.Pattern:
    body = re.escape(pattern).replace(r"\*", r"(\d+)")
    return re.compile(body + "(.+)" if pattern.endswith(".") else body)


def _rename(key: str, pattern: str, template: str) -> str | None:
    """`key` renamed from `pattern` to `template`, or None when `pattern` does not match it."""
    match = _regex(pattern).fullmatch(key)
    if match is None:
        return None
    numbers = iter(match.groups())
    renamed = re.sub(r"\*", lambda _: next(numbers), template)
    return renamed + next(numbers) if template.endswith(".") else renamed


def nest(rules: Iterable[Rule], source_prefix: str, target_prefix: str) -> list[Rule]:
    """`rules` for weights under `source_prefix` in the source and `target_prefix` in the target."""
    return [
        Rule(
            tuple(source_prefix + pattern for pattern in rule.sources),
            tuple(target_prefix + pattern for pattern in rule.targets) or None,
            rule.transform,
        )
        for rule in rules
    ]


def reverse(rules: Iterable[Rule]) -> list[Rule]:
    """The table read backwards: target weights back to source weights."""
    reversed_rules = []
    for rule in rules:
        if not rule.targets:
            raise ValueError(f"{rule}: weights the converter consumes have nothing to map back from")
        transform = rule.transform.inverted() if rule.transform is not None else None
        reversed_rules.append(Rule(rule.targets, rule.sources, transform))
    return reversed_rules


def _source_keys(key: str, rules: list[Rule]) -> list[str]:
    """The source keys the first rule producing target `key` reads, for the report of missing weights."""
    for rule in rules:
        for target in rule.targets:
            sources = [_rename(key, target, source) for source in rule.sources]
            if None not in sources:
                return sources
    return []


def map_weights(
    state_dict: dict[str, torch.Tensor], rules: list[Rule], source: str, expected: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """`state_dict` under the target's names, each key mapped by the first rule matching it. Refused with
    `UnsupportedSourceError`, naming the keys, when a source key has no rule, two keys land on one place or a merge
    misses a part, and, given the target model's `expected` keys, when a target weight is left missing or a mapped
    weight has no place in the target."""
    # first target key -> the rule and the source keys and tensors it has collected, by position among its sources
    groups: dict[str, tuple[Rule, dict[int, tuple[str, torch.Tensor]]]] = {}
    problems = {name: [] for name in ("source weights no rule maps", "source weights mapped twice")}
    for key, tensor in tqdm(state_dict.items(), desc=f"Mapping {source} weights", unit="tensor"):
        found = next(((rule, match) for rule in rules if (match := rule.match(key)) is not None), None)
        if found is None:
            problems["source weights no rule maps"].append(key)
            continue
        rule, (index, target) = found
        if target is None:  # the converter reads it itself
            continue
        parts = groups.setdefault(target, (rule, {}))[1]
        if index in parts:
            problems["source weights mapped twice"].append(f"{parts[index][0]} and {key}")
        parts[index] = key, tensor

    problems["source weights missing from a merge"] = [
        _rename(first, rule.targets[0], pattern)
        for first, (rule, parts) in groups.items()
        for index, pattern in enumerate(rule.sources)
        if index not in parts
    ]
    mapped, origins = {}, {}
    for first, (rule, parts) in groups.items():
        if len(parts) == len(rule.sources):
            keys, tensors = zip(*(parts[index] for index in range(len(parts))))
            targets = [_rename(first, rule.targets[0], pattern) for pattern in rule.targets]
            mapped.update(zip(targets, rule.apply(list(tensors))))
            origins.update(dict.fromkeys(targets, " + ".join(keys)))
    if expected is not None:
        expected = set(expected)
        problems["target weights missing"] = [
            f"{key} (from {' + '.join(_source_keys(key, rules)) or 'no rule'})" for key in expected - set(mapped)
        ]
        problems["weights with no place in the target"] = [
            f"{key} (from {origins[key]})" for key in set(mapped) - expected
        ]
    listed = [f"{what}: {sorted(keys)[:5]}" for what, keys in problems.items() if keys]
    if listed:
        raise UnsupportedSourceError(f"{source}: the weights do not map onto the target ({'; '.join(listed)})")
    return mapped


def load_weights(model, state_dict: dict[str, torch.Tensor], rules: list[Rule], source: str):
    """`model` (from `uninitialized`) holding `state_dict` mapped by `rules`, every weight accounted for."""
    mapped = map_weights(state_dict, rules, source, expected=model.state_dict().keys())
    return load_converted_state_dict(model, mapped, source)
