"""Configurations of the vitlm model families: ViT, hybrid CNN+ViT, Swin, and CLIP-style dual encoders, and of the
ViT's masked-image-modeling (MAE) head, whose fields no other config carries.

All configs live in one file so that a dual encoder saved with remote code can rebuild its vision tower's
config (ViT, hybrid or Swin) from `model_type` alone, without vitlm's Auto-class registrations.

A vitlm config is valid at all times, however it is built or changed: the constructor, `from_dict`,
`from_pretrained(path, **kwargs)`, `AutoConfig.from_pretrained(..., key=value)`, `update`, `update_from_string` and
plain attribute assignment all check every value they set against its field's rule (type and range), then the rules
that tie fields together (e.g. `hidden_size` divisible by `num_attention_heads`). A value that breaks a rule raises a
`ValueError` naming the field, and the config is left as it was. Fields that must change together are changed with
one `update({...})`; changing them one assignment at a time fails at the first one that leaves the config invalid.
A value mutated in place (`config.image_size[0] = 30`) is caught at the next change, when a model is built from the
config, or by `validate()`, which saving runs.
"""

import json
import math
import re
from contextlib import contextmanager

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

# "none": no absolute position (BEiT, where a relative position bias in attention places the tokens)
POSITION_EMBEDDING_TYPES = ("learned", "sincos2d", "rope2d", "none")
# a learned relative position bias over the patch grid: none, one table per block, or one for every block (BEiT)
RELATIVE_POSITION_BIAS_TYPES = ("none", "per_layer", "shared")
# "cls_mean": the [CLS] state and the patches' mean side by side (DINOv2's classifier input)
POOLING_TYPES = ("cls", "mean", "cls_mean")
MLP_TYPES = ("mlp", "swiglu")
LOSS_TYPES = ("softmax", "sigmoid")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
CLIP_LOGIT_SCALE = math.log(1 / 0.07)
# Largest finite float16. Image-text logits are `exp(logit_scale) * cosine + logit_bias`; keeping their bound below it
# keeps them finite in float16, the narrowest dtype vitlm saves and runs models in (bfloat16 and float32 reach higher).
MAX_LOGIT = 65504.0
# The masked-image-modeling head's own fields: they live in `VitlmViTMAEConfig` only. vitlm before the MAE config
# existed wrote them into every ViT config (hybrid and dual-encoder towers included), where loading drops them.
MASKED_IMAGE_MODELING_FIELDS = (
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
    "mask_ratio",
    "norm_pix_loss",
)
MASKED_IMAGE_MODELING_ARCHITECTURE = "VitlmViTForMaskedImageModeling"
# The synthesis inpainting head's own fields: they live in `VitlmViTSynthesisConfig` only.
SYNTHESIS_FIELDS = ("codebook_size", "code_patch_size", "sampling_steps", "sampling_temperature")
# Segmenter's two decoders: a linear map of each patch token to class logits, or learned class embeddings processed
# jointly with the patch tokens by transformer blocks (the "mask transformer")
SEGMENTATION_DECODERS = ("linear", "mask_transformer")
BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "y": True, "false": False, "0": False, "no": False, "n": False}


def to_pair(value) -> tuple[int, int]:
    """`224` -> `(224, 224)`; `[224, 320]` -> `(224, 320)`."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def split_assignments(text: str) -> list[str]:
    """`"image_size=[224, 320],qkv_bias=false"` -> `["image_size=[224, 320]", "qkv_bias=false"]`: a comma starts a new
    item only where a `key=` follows, so that list values keep theirs."""
    return re.split(r",(?=\s*[\w.]+=)", text)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """An int or float (not a bool, which Python counts as an int) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Field rules: `rule(name, value)` returns the value to store (lists for pairs, int keys for `id2label`, floats for
# real-valued fields, so that `logit_scale_init_value=0` does not make an integer parameter) or raises a ValueError
# naming the field. They look at one value; rules across fields live in each config's `check_values`.


def _int_at_least(minimum: int, optional: bool = False, maximum: float = math.inf):
    def rule(name, value):
        if (value is None and optional) or (_is_int(value) and minimum <= value <= maximum):
            return value
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        bound = f" up to {maximum:,}" if maximum < math.inf else ""
        raise ValueError(f"`{name}` must be {kind}{bound}{' or None' if optional else ''}, got {value!r}")

    return rule


def _size(name, value):
    """An int side, or a (height, width) pair stored as a list (its JSON form)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(_is_int(side) and side > 0 for side in value):
            return list(value)
    elif _is_int(value) and value > 0:
        return value
    raise ValueError(f"`{name}` must be a positive integer or a (height, width) pair of them, got {value!r}")


def _depths(name, value):
    if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) and v > 0 for v in value):
        raise ValueError(f"`{name}` must be a non-empty list of positive integers, got {value!r}")
    return list(value)


def _real_in(low: float, high: float, low_open: bool, high_open: bool, optional: bool = False):
    def rule(name, value):
        if value is None and optional:
            return value
        if (
            _is_real(value)
            and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)
        ):
            return float(value)
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a number in {interval}{' or None' if optional else ''}, got {value!r}")

    return rule


def _real(name, value):
    if not _is_real(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return float(value)


def _flag(name, value):
    if not isinstance(value, bool):  # `"false"` or 0 would read as a silent True / False
        raise ValueError(f"`{name}` must be true or false, got {value!r}")
    return value


def _choice(choices, optional: bool = False):
    def rule(name, value):
        if (value is None and optional) or (isinstance(value, str) and value in choices):
            return value
        raise ValueError(f"`{name}` must be one of {choices}{' or None' if optional else ''}, got {value!r}")

    return rule


def _activation(name, value):
    if not isinstance(value, str) or value not in ACT2FN:
        raise ValueError(f"`{name}` must be one of transformers' activations {sorted(ACT2FN)}, got {value!r}")
    return value


def _templates(name, value):
    if value is not None and (
        not isinstance(value, (list, tuple)) or not all(isinstance(t, str) and "{}" in t for t in value)
    ):
        raise ValueError(f"`{name}` must be None or a list of prompts, each with a '{{}}' for the class name")
    return None if value is None else list(value)


def _id2label(name, value):
    """Class index -> name; JSON's string keys ("0") become ints, as transformers does when loading."""
    if value is None:
        return value
    if not isinstance(value, dict) or not all(isinstance(label, str) for label in value.values()):
        raise ValueError(f"`{name}` must be a dict of class index -> class name (a string), got {value!r}")
    try:
        labels = {int(key): label for key, label in value.items() if not isinstance(key, bool)}
    except (TypeError, ValueError):
        labels = {}
    if len(labels) != len(value) or sorted(labels) != list(range(len(labels))):
        raise ValueError(f"`{name}` must have the class indices 0 .. {len(value) - 1} as keys, got {list(value)}")
    return labels


def _label2id(name, value):
    if value is not None and (
        not isinstance(value, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in value.items())
    ):
        raise ValueError(f"`{name}` must be a dict of class name -> class index, got {value!r}")
    return value


def _vision_config(name, value):
    return vision_config_from(value)


def _text_config(name, value):
    if isinstance(value, VitlmTextConfig):
        return value
    if value is None or isinstance(value, dict):
        try:
            return VitlmTextConfig(**{k: v for k, v in (value or {}).items() if k != "model_type"})
        except ValueError as error:
            raise ValueError(f"`{name}`: {error}") from error
    raise ValueError(f"`{name}` must be a dict or a VitlmTextConfig, got {type(value).__name__}")


_positive = _int_at_least(1)
_probability = _real_in(0.0, 1.0, low_open=False, high_open=True)
_epsilon = _real_in(0.0, 1.0, low_open=True, high_open=False)

# One rule per field name, whichever config holds it: a name means the same thing in every vitlm config.
FIELD_RULES = {
    **dict.fromkeys(
        (
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
            "backbone_stem_width",
            "backbone_width_factor",
            "backbone_num_groups",
            "max_position_embeddings",
            "projection_dim",
            "embed_dim",
            "code_patch_size",
            "sampling_steps",
        ),
        _positive,
    ),
    # a code per pixel square: at least two to choose from, and a bound that keeps a stray value from exhausting memory
    "codebook_size": _int_at_least(2, maximum=65_536),
    # 0 samples greedily (the most likely code); far above 1 every code becomes equally likely
    "sampling_temperature": _real_in(0.0, 100.0, low_open=False, high_open=False),
    "image_size": _size,
    "window_size": _size,
    # hierarchical towers (Swin, PiT) give one entry per stage
    **dict.fromkeys(("backbone_depths", "depths", "hidden_sizes", "num_heads"), _depths),
    "stride": _positive,
    # MLP width over the block's: published models use 4; far above, the MLP's size overflows before it is built
    "mlp_ratio": _real_in(0.0, 64.0, low_open=True, high_open=False),
    "representation_size": _int_at_least(1, optional=True),
    "vocab_size": _int_at_least(2),  # at least the start- and end-of-text tokens
    # 0: no classifier, features only (transformers' convention); setting it builds an `id2label` entry per class,
    # so a stray huge value would exhaust memory: 10 million is far above any real label set (ImageNet-21k: 21,843)
    "num_labels": _int_at_least(0, maximum=10_000_000),
    "bos_token_id": _int_at_least(0),  # None in the constructor picks the default, so it is no stored value
    "eos_token_id": _int_at_least(0),  # required: the text tower pools at it
    "pad_token_id": _int_at_least(0, optional=True),
    **dict.fromkeys(
        ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "mask_ratio"), _probability
    ),
    # an epsilon only guards a division by a (unit-scale) variance: above 1 it would replace it
    **dict.fromkeys(("layer_norm_eps", "backbone_std_conv_eps"), _epsilon),
    # the std of the weights drawn at initialisation: 0 is no distribution, and no model trains from weights above 1
    "initializer_range": _real_in(0.0, 1.0, low_open=True, high_open=False),
    # rotary frequencies are theta ** (-i/d): a base below 1 makes them grow past one turn per position, then overflow
    "rope_theta": _real_in(1.0, math.inf, low_open=False, high_open=True),
    "logit_scale_init_value": _real,
    "logit_bias_init_value": _real,
    **dict.fromkeys(
        (
            "qkv_bias",
            "patch_bias",
            "use_cls_token",
            "use_distillation_token",
            "pre_norm",
            "norm_pix_loss",
            "norm_after_pooling",
            "interpolate_antialias",
            "prefix_position_embeddings",
            "use_mask_token",
            "key_bias",
        ),
        _flag,
    ),
    # the initial layer scale (None: none); DINOv2 starts at 1e-5, CaiT at 1e-6, no model above 1
    "layerscale_value": _real_in(0.0, 1.0, low_open=True, high_open=False, optional=True),
    # each is a learned token: a bound keeps a stray value from exhausting memory (DINOv2-reg uses 4)
    "num_register_tokens": _int_at_least(0, maximum=1024),
    "mlp_type": _choice(MLP_TYPES),
    "relative_position_bias": _choice(RELATIVE_POSITION_BIAS_TYPES),
    "hidden_act": _activation,
    "position_embedding_type": _choice(POSITION_EMBEDDING_TYPES),
    "pooling": _choice(POOLING_TYPES),
    "loss_type": _choice(LOSS_TYPES),
    "problem_type": _choice(PROBLEM_TYPES, optional=True),
    "prompt_templates": _templates,
    "decoder_type": _choice(SEGMENTATION_DECODERS),
    **dict.fromkeys(("mask_decoder_layers", "mask_decoder_heads"), _positive),
    # each final token split into factor x factor cells, labelled separately: a bound keeps the split layer small
    "subpatch_factor": _int_at_least(1, maximum=8),
    "id2label": _id2label,
    "label2id": _label2id,
    "vision_config": _vision_config,
    "text_config": _text_config,
}


class VitlmConfigMixin:
    """Keeps a vitlm config valid: every value set is checked by its field's rule and every change, once made, by
    the config's `check_values`; a change that fails is undone."""

    def __post_init__(self, **kwargs):
        if "num_labels" in kwargs:  # transformers ignores it, with a warning, when `id2label` is given too
            FIELD_RULES["num_labels"]("num_labels", kwargs["num_labels"])
        super().__post_init__(**kwargs)

    def __setattr__(self, name, value):
        owner = head_config_owning(name)
        if owner is not None and not isinstance(self, owner):
            raise ValueError(
                f"`{name}` is a field of the {owner.head_title} head, which a {self.model_type} config does not "
                f"have: use {owner.__name__} (model_type '{owner.model_type}')"
            )
        rule = FIELD_RULES.get(name)
        if rule is not None:
            value = rule(name, value)
        if not self.__dict__.get("_post_init_done"):  # still in __init__, which checks the whole config at its end
            super().__setattr__(name, value)
            return
        with self._change():
            super().__setattr__(name, value)

    @contextmanager
    def _change(self):
        """The assignments made inside are checked together once all are made; if one fails, all are undone."""
        if self.__dict__.get("_changing"):  # inside a larger change (e.g. the `num_labels` setter within `update`)
            yield
            return
        snapshot = dict(self.__dict__)  # shallow: sub-configs are replaced, never changed in place, by a change
        self.__dict__["_changing"] = True
        try:
            yield
            del self.__dict__["_changing"]
            self._check()
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise

    def _check(self):
        """Every field's rule again (a list or dict may have been changed in place since it was set), then the rules
        across fields. Run after every change, so also when a model is built (transformers sets the config's
        attention implementation then)."""
        for name, rule in FIELD_RULES.items():
            if name in self.__dict__ and name not in ("vision_config", "text_config"):
                rule(name, self.__dict__[name])
        self.check_values()

    def validate(self):
        """transformers' validation hook (also run by `save_pretrained`): vitlm's rules, then transformers' own."""
        for name in ("vision_config", "text_config"):
            if isinstance(self.__dict__.get(name), PretrainedConfig):
                self.__dict__[name].validate()
        self._check()
        super().validate()

    def update(self, config_dict: dict):
        """Set several fields as one change, checked once all are set. A dict for `vision_config` or `text_config`
        changes the fields it names in that tower and keeps the others, as `from_pretrained(..., text_config={...})`
        does."""
        with self._change():
            for key, value in config_dict.items():
                current = getattr(self, key, None)
                if isinstance(current, PretrainedConfig) and isinstance(value, dict):
                    value = {**current.to_dict(), **value}
                setattr(self, key, value)

    def update_from_string(self, update_str: str):
        """`"hidden_size=64,num_attention_heads=8,qkv_bias=false"`: as transformers' (each field must exist, and its
        value is read as the kind of value it holds now: a boolean word, a number, or a string), set as one change."""
        changes = {}
        for item in split_assignments(update_str):
            key, sep, text = item.partition("=")
            if not sep or not hasattr(self, key):
                raise ValueError(f"{item!r} must be key=value with a key of this config")
            current = getattr(self, key)
            if isinstance(current, bool):
                if text.lower() not in BOOLEAN_WORDS:
                    raise ValueError(f"`{key}` must be true or false, got {text!r}")
                changes[key] = BOOLEAN_WORDS[text.lower()]
            elif isinstance(current, (int, float)):
                try:
                    changes[key] = json.loads(text)  # "NaN" and "Infinity" parse, and are refused by the field
                except json.JSONDecodeError:
                    raise ValueError(f"`{key}` must be a number, got {text!r}") from None
            elif isinstance(current, str):
                changes[key] = text
            else:
                raise ValueError(f"`{key}` holds a {type(current).__name__}; set it with `update`, not from a string")
        self.update(changes)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # transformers sets the keyword overrides one by one after building the config; vitlm's fields among them are
        # set with `update` instead, so that they are checked together (`hidden_size` with `num_attention_heads`)
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        own = {key: kwargs.pop(key) for key in list(kwargs) if key in FIELD_RULES and key != "num_labels"}
        config, unused = super().from_dict(config_dict, return_unused_kwargs=True, **kwargs)
        config.update({key: value for key, value in own.items() if hasattr(config, key)})
        unused.update({key: value for key, value in own.items() if not hasattr(config, key)})
        return (config, unused) if return_unused_kwargs else config


def _check_transformer(config):
    """Cross-field checks shared by every transformer tower (vision and text)."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"`hidden_size` ({config.hidden_size}) must be divisible by `num_attention_heads` "
            f"({config.num_attention_heads})"
        )


class VitlmViTConfig(VitlmConfigMixin, PretrainedConfig):
    r"""
    Configuration of a plain Vision Transformer: conv patch embedding, optional [CLS] (and DeiT distillation)
    token, a position encoding, a pre-LN encoder and a final LayerNorm.

    Args:
        image_size (`int` or `(int, int)`): resolution the model is built for (the learned position table's grid).
        patch_size (`int`): side of the square patches cut by the stem.
        num_channels (`int`): input channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder shape.
        hidden_act (`str`): MLP activation, a key of transformers' `ACT2FN` (`"quick_gelu"` for OpenAI CLIP).
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        hidden_dropout_prob, attention_probs_dropout_prob (`float`): dropout rates.
        drop_path_rate (`float`): stochastic depth rate, increased linearly from 0 over the blocks.
        qkv_bias (`bool`): bias on the fused query/key/value projection.
        patch_bias (`bool`): bias on the patch projection (CLIP has none).
        position_embedding_type (`str`): `"learned"` (absolute, learnable), `"sincos2d"` (fixed 2D sin-cos, added to
            the patch tokens) or `"rope2d"` (relative 2D rotary, applied to queries and keys).
        rope_theta (`float`): base period of the rotary frequencies.
        use_cls_token (`bool`): prepend a learnable [CLS] token.
        use_distillation_token (`bool`): prepend a DeiT distillation token after [CLS].
        pooling (`str`): `"cls"` (the [CLS] state), `"mean"` (average of the patch states) or `"cls_mean"` (both,
            concatenated: DINOv2's classifier input, twice `hidden_size` wide).
        norm_after_pooling (`bool`): apply the final LayerNorm to the pooled output instead of the tokens (BEiT's
            mean pooling; `last_hidden_state` is then the encoder's un-normalized output).
        pre_norm (`bool`): LayerNorm before the encoder, as in CLIP's vision tower.
        layerscale_value (`float`, *optional*): layer scale's initial value (DINOv2, CaiT): each block's attention
            and MLP outputs are multiplied by a learned per-channel scale; `None` for none.
        num_register_tokens (`int`): DINOv2-reg's register tokens, learned prefix tokens after [CLS] (and the
            distillation token) that get no position encoding and are never pooled.
        prefix_position_embeddings (`bool`): the learned position table has rows for [CLS] and the distillation
            token; `False`: for the patches only, the prefix tokens getting no position (timm's `no_embed_class`,
            DeiT-3 and timm's DINOv2-reg).
        relative_position_bias (`str`): `"none"`, `"per_layer"` (a learned bias over the (dy, dx) offsets of the
            patch grid, and the prefix tokens' three entries, per head, in every block: BEiT) or `"shared"` (one table
            for every block); bilinearly resized at other resolutions with `interpolate_pos_encoding=True`.
        key_bias (`bool`): with `qkv_bias`, a bias on the keys too; BEiT's attention has query and value biases only.
        use_mask_token (`bool`): a learned mask token that replaces the patch embeddings `bool_masked_pos` marks
            (BEiT's masked image modelling, as transformers' `ViTModel(use_mask_token=True)`).
        interpolate_antialias (`bool`): resize the learned position table with antialiasing
            (`interpolate_pos_encoding=True`), as DINOv2 with registers does; bicubic either way.
        mlp_type (`str`): `"mlp"` (fc1, activation, fc2) or `"swiglu"` (a gated unit: fc1 makes a gate and a value
            of `intermediate_size` each, `hidden_act` on the gate, as DINOv2-giant with `hidden_act="silu"`).
        representation_size (`int`, *optional*): size of the ViT paper's pre-logits layer (linear + tanh on the
            pooled output; transformers' `ViTModel` pooler); `None` for none.
        initializer_range (`float`): std of the truncated-normal initialisation.

    The masked-image-modeling head's fields (`decoder_*`, `mask_ratio`, `norm_pix_loss`) belong to
    [`VitlmViTMAEConfig`] and are refused here.
    """

    model_type = "vitlm_vit"

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        num_channels=3,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        qkv_bias=True,
        patch_bias=True,
        position_embedding_type="learned",
        rope_theta=100.0,
        use_cls_token=True,
        use_distillation_token=False,
        pooling="cls",
        pre_norm=False,
        representation_size=None,
        initializer_range=0.02,
        layerscale_value=None,
        num_register_tokens=0,
        mlp_type="mlp",
        norm_after_pooling=False,
        interpolate_antialias=False,
        prefix_position_embeddings=True,
        use_mask_token=False,
        relative_position_bias="none",
        key_bias=True,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.qkv_bias = qkv_bias
        self.patch_bias = patch_bias
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.use_cls_token = use_cls_token
        self.use_distillation_token = use_distillation_token
        self.pooling = pooling
        self.pre_norm = pre_norm
        self.representation_size = representation_size
        self.initializer_range = initializer_range
        self.layerscale_value = layerscale_value
        self.num_register_tokens = num_register_tokens
        self.mlp_type = mlp_type
        self.norm_after_pooling = norm_after_pooling
        self.interpolate_antialias = interpolate_antialias
        self.prefix_position_embeddings = prefix_position_embeddings
        self.use_mask_token = use_mask_token
        self.relative_position_bias = relative_position_bias
        self.key_bias = key_bias
        self.check_values()  # before transformers' own checks, which only warn about what these refuse
        super().__init__(**kwargs)

    @property
    def num_prefix_tokens(self) -> int:
        """The tokens before the patches: [CLS], the distillation token, the registers."""
        return int(self.use_cls_token) + int(self.use_distillation_token) + self.num_register_tokens

    @property
    def stem_stride(self) -> int:
        """Input pixels per patch side."""
        return self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid at the configured resolution."""
        height, width = to_pair(self.image_size)
        return height // self.stem_stride, width // self.stem_stride

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch tokens' grid for a `height` x `width` input."""
        return height // self.stem_stride, width // self.stem_stride

    def check_values(self):
        _check_transformer(self)
        for side in to_pair(self.image_size):
            if side % self.stem_stride:
                raise ValueError(
                    f"`image_size` ({self.image_size}) must be divisible by the stem's stride ({self.stem_stride} "
                    f"pixels per patch)"
                )
        if self.pooling in ("cls", "cls_mean") and not self.use_cls_token:
            raise ValueError(
                f"`pooling={self.pooling!r}` needs `use_cls_token=True`; use `pooling='mean'` without a [CLS] token"
            )
        if self.pooling == "cls_mean" and (self.representation_size or self.norm_after_pooling):
            raise ValueError(
                "`pooling='cls_mean'` (a pooled output twice `hidden_size` wide) goes with neither "
                "`representation_size` nor `norm_after_pooling`"
            )
        if self.use_distillation_token and not self.use_cls_token:
            raise ValueError("`use_distillation_token=True` needs `use_cls_token=True` (DeiT uses both)")
        head_dim = self.hidden_size // self.num_attention_heads
        if self.position_embedding_type == "sincos2d" and self.hidden_size % 4:
            raise ValueError(
                f"`position_embedding_type='sincos2d'` needs `hidden_size` divisible by 4, got {self.hidden_size}"
            )
        if self.position_embedding_type == "rope2d" and head_dim % 4:
            raise ValueError(
                f"`position_embedding_type='rope2d'` needs a head dimension (hidden_size / num_attention_heads) "
                f"divisible by 4, got {head_dim}"
            )

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        # read by a config class's `from_pretrained` (`AutoConfig` reads the file itself and routes in `from_dict`):
        # an MAE model's config saved by earlier vitlm gets its own model type, so a plain ViT config takes only the
        # encoder's fields from it
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if is_legacy_masked_image_modeling(config_dict):
            config_dict = {**config_dict, "model_type": VitlmViTMAEConfig.model_type}
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if not issubclass(cls, (VitlmViTMAEConfig, VitlmViTSynthesisConfig)):
            if cls is VitlmViTConfig and is_legacy_masked_image_modeling(config_dict):
                # `AutoConfig` maps the model type "vitlm_vit" here; the folder holds an MAE model
                config_dict = {**config_dict, "model_type": VitlmViTMAEConfig.model_type}
                return VitlmViTMAEConfig.from_dict(config_dict, **kwargs)
            config_dict = without_masked_image_modeling_fields(config_dict)
        return super().from_dict(config_dict, **kwargs)


def encoder_model_type(model_type: str) -> str:
    """The model type of the encoder a config of `model_type` describes: a head config's (MAE, synthesis) encoder is
    a plain ViT."""
    heads = (VitlmViTMAEConfig.model_type, VitlmViTSynthesisConfig.model_type)
    return VitlmViTConfig.model_type if model_type in heads else model_type


def head_config_owning(name: str):
    """The head config class whose own field `name` is (`VitlmViTMAEConfig`, `VitlmViTSynthesisConfig`), or None."""
    if name in MASKED_IMAGE_MODELING_FIELDS:
        return VitlmViTMAEConfig
    return VitlmViTSynthesisConfig if name in SYNTHESIS_FIELDS else None


def is_legacy_masked_image_modeling(config_dict: dict) -> bool:
    """A masked image model's config saved by vitlm before `VitlmViTMAEConfig` (model type "vitlm_vit")."""
    if not isinstance(config_dict, dict):  # not a config: left for the loader to refuse
        return False
    return config_dict.get("model_type") == VitlmViTConfig.model_type and MASKED_IMAGE_MODELING_ARCHITECTURE in (
        config_dict.get("architectures") or []
    )


def without_masked_image_modeling_fields(config_dict: dict) -> dict:
    """A saved ViT / hybrid config dict for a model without the MAE head: the head's fields are dropped where they
    carry nothing for it, i.e. in an MAE config (its encoder loads alone, e.g. to fine-tune a classifier) and in a
    config saved by vitlm before `VitlmViTMAEConfig`, which wrote all of them into every ViT config. Any other dict
    keeps them, and the config refuses them."""
    if config_dict.get("model_type") == VitlmViTSynthesisConfig.model_type:
        return {key: value for key, value in config_dict.items() if key not in SYNTHESIS_FIELDS}
    present = [name for name in MASKED_IMAGE_MODELING_FIELDS if name in config_dict]
    if config_dict.get("model_type") == VitlmViTMAEConfig.model_type or len(present) == len(
        MASKED_IMAGE_MODELING_FIELDS
    ):
        return {key: value for key, value in config_dict.items() if key not in MASKED_IMAGE_MODELING_FIELDS}
    return config_dict


class VitlmViTMAEConfig(VitlmViTConfig):
    r"""
    Configuration of a ViT with MAE's masked-image-modeling head (inpainting): the encoder of [`VitlmViTConfig`]
    reads the visible patches, and a lightweight decoder of the same blocks predicts every patch's pixels. As in
    transformers' `ViTMAEConfig`, the decoder's config is derived from the encoder's (`decoder_config`).

    Args:
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            shape of the decoder.
        mask_ratio (`float`): fraction of patches masked at random while training.
        norm_pix_loss (`bool`): predict per-patch normalized pixels (MAE's option); such a model cannot inpaint,
            since a masked patch's mean and variance are unknown.
        All other arguments are those of [`VitlmViTConfig`].

    Configs of masked image models saved by earlier vitlm (model type "vitlm_vit", architecture
    `VitlmViTForMaskedImageModeling`) load as this config, and into a plain ViT's config as an MAE config does.
    """

    model_type = "vitlm_vit_mae"
    head_title = "masked-image-modeling"

    def __init__(
        self,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
        mask_ratio=0.75,
        norm_pix_loss=False,
        **kwargs,
    ):
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        super().__init__(**kwargs)

    @classmethod
    def from_encoder_config(cls, encoder_config: VitlmViTConfig, **kwargs) -> "VitlmViTMAEConfig":
        """An MAE config over `encoder_config`'s encoder (a plain ViT's), with the head's fields in `kwargs`."""
        if type(encoder_config) not in (VitlmViTConfig, cls):
            raise ValueError(
                "masked image modeling needs a plain ViT encoder (it predicts patches of pixels), got a "
                f"{encoder_config.model_type} config"
            )
        values = {k: v for k, v in encoder_config.to_dict().items() if k not in ("model_type", "transformers_version")}
        return cls(**{**values, **kwargs})

    def decoder_config(self) -> VitlmViTConfig:
        """The config of the decoder's blocks: the encoder's, with the decoder's sizes, the fixed sin-cos positions
        the decoder adds, and no stochastic depth (MAE's decoder has none)."""
        return VitlmViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.decoder_hidden_size,
            num_hidden_layers=self.decoder_num_hidden_layers,
            num_attention_heads=self.decoder_num_attention_heads,
            intermediate_size=self.decoder_intermediate_size,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            drop_path_rate=0.0,
            qkv_bias=self.qkv_bias,
            position_embedding_type="sincos2d",
            use_cls_token=self.use_cls_token,
            use_distillation_token=self.use_distillation_token,
            pooling=self.pooling,
            initializer_range=self.initializer_range,
            attn_implementation=self._attn_implementation,
        )

    def check_values(self):
        super().check_values()
        if self.decoder_hidden_size % self.decoder_num_attention_heads or self.decoder_hidden_size % 4:
            raise ValueError(
                f"`decoder_hidden_size` ({self.decoder_hidden_size}) must be divisible by "
                f"`decoder_num_attention_heads` ({self.decoder_num_attention_heads}) and by 4 (its sin-cos table)"
            )
        if self.relative_position_bias != "none":
            raise ValueError(
                "`relative_position_bias` is a bias over the whole patch grid, which MAE's encoder (reading the "
                "visible patches only) cannot apply: use absolute positions"
            )
        num_patches = self.grid_size[0] * self.grid_size[1]
        if not self.use_cls_token and int(num_patches * (1 - self.mask_ratio)) == 0:
            raise ValueError(
                f"`mask_ratio` ({self.mask_ratio}) masks all {num_patches} patches, leaving the inpainting encoder "
                "nothing to read without a [CLS] token: lower it, or set `use_cls_token=True`"
            )


class VitlmViTSynthesisConfig(VitlmViTConfig):
    r"""
    Configuration of a ViT with the synthesis inpainting head (`VitlmViTForInpaintingSynthesis`): MaskGIT-style
    iterative decoding of discrete patch codes. The encoder of [`VitlmViTConfig`] reads every patch, a learned mask
    token standing in for the masked ones (`use_mask_token`, always set), and a linear head predicts, per patch, the
    code of each of its `code_patch_size` x `code_patch_size` pixel squares among `codebook_size` codewords (the
    pixels of a k-means codebook the model holds).

    Args:
        codebook_size (`int`): codewords of the patch tokenizer.
        code_patch_size (`int`): side, in pixels, of the squares one code stands for; divides `patch_size`.
        sampling_steps (`int`): decoding rounds an inpainting call takes unless told otherwise.
        sampling_temperature (`float`): the sampling temperature of the codes (0: always the most likely one).
        All other arguments are those of [`VitlmViTConfig`].
    """

    model_type = "vitlm_vit_synthesis"
    head_title = "synthesis inpainting"

    def __init__(
        self,
        codebook_size=512,
        code_patch_size=4,
        sampling_steps=8,
        sampling_temperature=1.0,
        use_mask_token=True,
        **kwargs,
    ):
        self.codebook_size = codebook_size
        self.code_patch_size = code_patch_size
        self.sampling_steps = sampling_steps
        self.sampling_temperature = sampling_temperature
        super().__init__(use_mask_token=use_mask_token, **kwargs)

    @classmethod
    def from_encoder_config(cls, encoder_config: VitlmViTConfig, **kwargs) -> "VitlmViTSynthesisConfig":
        """A synthesis config over `encoder_config`'s encoder (a plain ViT's), with the head's fields in `kwargs`."""
        if type(encoder_config) not in (VitlmViTConfig, cls):
            raise ValueError(
                "synthesis inpainting needs a plain ViT encoder (it predicts the codes of pixel patches), got a "
                f"{encoder_config.model_type} config"
            )
        values = {k: v for k, v in encoder_config.to_dict().items() if k not in ("model_type", "transformers_version")}
        return cls(**{**values, "use_mask_token": True, **kwargs})

    @property
    def codes_per_patch(self) -> int:
        return (self.patch_size // self.code_patch_size) ** 2

    def check_values(self):
        super().check_values()
        if self.patch_size % self.code_patch_size:
            raise ValueError(
                f"`code_patch_size` ({self.code_patch_size}) must divide `patch_size` ({self.patch_size}): each patch "
                "is cut into squares of codes"
            )
        if not self.use_mask_token:
            raise ValueError(
                "synthesis inpainting needs `use_mask_token=True`: the mask token stands for the hidden patches"
            )


class VitlmHybridConfig(VitlmViTConfig):
    r"""
    Configuration of a hybrid CNN+ViT (R50+ViT-B/16, timm's `vit_*_r50_*` / `vit_*_r26_*`): a ResNetV2 (BiT) backbone
    with weight-standardized convolutions and GroupNorm whose feature map is cut into `patch_size` x `patch_size`
    patches (1x1 by default), followed by the same transformer as [`VitlmViTConfig`].

    Args:
        backbone_depths (`list[int]`): bottleneck blocks per stage; each stage after the first halves the resolution.
        backbone_stem_width (`int`): channels of the 7x7 stem convolution.
        backbone_width_factor (`int`): multiplies every stage's width (BiT's "x1", "x3", ...).
        backbone_num_groups (`int`): groups of every GroupNorm.
        backbone_std_conv_eps (`float`): epsilon of the weight standardization.
        patch_size (`int`): patch side on the backbone's feature map (1 in the published hybrids).
        All other arguments are those of [`VitlmViTConfig`].
    """

    model_type = "vitlm_hybrid"

    def __init__(
        self,
        backbone_depths=(3, 4, 9),
        backbone_stem_width=64,
        backbone_width_factor=1,
        backbone_num_groups=32,
        backbone_std_conv_eps=1e-8,
        patch_size=1,
        image_size=384,
        **kwargs,
    ):
        self.backbone_depths = backbone_depths
        self.backbone_stem_width = backbone_stem_width
        self.backbone_width_factor = backbone_width_factor
        self.backbone_num_groups = backbone_num_groups
        self.backbone_std_conv_eps = backbone_std_conv_eps
        super().__init__(patch_size=patch_size, image_size=image_size, **kwargs)

    @property
    def backbone_stride(self) -> int:
        """The stem divides the resolution by 4, every stage after the first by 2."""
        return 4 * 2 ** (len(self.backbone_depths) - 1)

    @property
    def backbone_widths(self) -> list[int]:
        """Output channels of each stage (bottleneck width x 4)."""
        return [256 * self.backbone_width_factor * 2**i for i in range(len(self.backbone_depths))]

    @property
    def stem_stride(self) -> int:
        return self.backbone_stride * self.patch_size

    def check_values(self):
        # every GroupNorm (stem and bottleneck widths; stage outputs are 4x the bottleneck width) splits into groups
        channels = [self.backbone_stem_width] + [width // 4 for width in self.backbone_widths]
        if any(c % self.backbone_num_groups for c in channels):
            raise ValueError(
                f"`backbone_num_groups` ({self.backbone_num_groups}) must divide every backbone width {channels} "
                "(set by `backbone_stem_width` and `backbone_width_factor`)"
            )
        super().check_values()


class VitlmStageConfig:
    """One stage of a hierarchical tower seen as a plain transformer config: the stage's own fields (`hidden_size`,
    `num_attention_heads`, ...) over every other field of the model's config. The model's config is read live, so
    that switching the model's attention implementation reaches every stage's blocks."""

    def __init__(self, config, **stage_fields):
        self.__dict__.update(stage_fields, _config=config)

    def __getattr__(self, name):
        config = self.__dict__.get("_config")
        if config is None:  # copy / pickle probe attributes before the state is restored
            raise AttributeError(name)
        return getattr(config, name)


class VitlmHierarchicalConfigMixin:
    """What a tower of several stages (Swin, PiT) adds to its config: each stage's width (`stage_widths`), heads
    (`num_heads`) and MLP, and token grid. Every stage after the first halves the stem's grid (`stem_grid`), rounding
    up."""

    @property
    def intermediate_sizes(self) -> list[int]:
        """Each stage's MLP width, rounded down as timm's `Mlp` does."""
        return [int(width * self.mlp_ratio) for width in self.stage_widths]

    def stage_config(self, index: int, **fields) -> VitlmStageConfig:
        """Stage `index` as the plain transformer config its blocks are built from (`fields` override more)."""
        return VitlmStageConfig(
            self,
            hidden_size=self.stage_widths[index],
            num_attention_heads=self.num_heads[index],
            intermediate_size=self.intermediate_sizes[index],
            **fields,
        )

    def stage_grids(self, height: int, width: int) -> list[tuple[int, int]]:
        """Each stage's token grid for a `height` x `width` input."""
        grids = [self.stem_grid(height, width)]
        for _ in self.depths[1:]:
            grids.append(tuple(-(-side // 2) for side in grids[-1]))
        return grids

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        """The last stage's token grid for a `height` x `width` input."""
        return self.stage_grids(height, width)[-1]


class VitlmPiTConfig(VitlmHierarchicalConfigMixin, VitlmConfigMixin, PretrainedConfig):
    r"""
    Configuration of a Pooling-based Vision Transformer (PiT, timm's `pit_*`): an overlapping conv patch embedding,
    a learned position embedding on its patch grid, then stages of the ViT's pre-LN blocks, each stage after the
    first starting with a token pooling that halves the patch grid (depthwise 3x3 stride-2 conv) and widens the tokens,
    the [CLS] (and distillation) token carried through a linear map. A final LayerNorm; the [CLS] state is pooled.

    Args:
        image_size (`int` or `(int, int)`): resolution the model is built for (the position table's grid).
        patch_size (`int`): side of the patch embedding's conv kernel.
        stride (`int`): step of the patch embedding's conv, dividing `patch_size` (PiT's patches overlap by half).
        num_channels (`int`): input channels.
        depths (`list[int]`): blocks per stage.
        hidden_sizes (`list[int]`): token width per stage (timm's `base_dims[i] * heads[i]`); each a multiple of the
            previous one, as the depthwise pooling multiplies the channels.
        num_heads (`list[int]`): attention heads per stage.
        mlp_ratio (`float`): MLP width over the block width.
        hidden_act, layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob, drop_path_rate, qkv_bias,
            use_distillation_token, initializer_range: as in [`VitlmViTConfig`]. Stochastic depth grows linearly over
            all blocks of all stages.

    `hidden_size`, `num_attention_heads` (the last stage's), `num_hidden_layers` (all blocks) and `stem_stride` are
    derived, read-only, so that code reading a tower's width sees the features' width; `use_cls_token` (True),
    `pooling` ("cls") and `representation_size` (None) are fixed.
    """

    model_type = "vitlm_pit"
    # read-only: set, they would silently change nothing
    _derived = (
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
        "stem_stride",
        "use_cls_token",
        "pooling",
        "representation_size",
    )

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        stride=8,
        num_channels=3,
        depths=(2, 6, 4),
        hidden_sizes=(64, 128, 256),
        num_heads=(2, 4, 8),
        mlp_ratio=4.0,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        qkv_bias=True,
        use_distillation_token=False,
        initializer_range=0.02,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.stride = stride
        self.num_channels = num_channels
        self.depths = depths
        self.hidden_sizes = hidden_sizes
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.qkv_bias = qkv_bias
        self.use_distillation_token = use_distillation_token
        self.initializer_range = initializer_range
        self.check_values()  # before transformers' own checks, which only warn about what these refuse
        super().__init__(**kwargs)

    def __setattr__(self, name, value):
        if name in self._derived:
            raise ValueError(
                f"`{name}` of a {self.model_type} config follows from its architecture and cannot be set: change "
                "`hidden_sizes`, `num_heads`, `depths`, `mlp_ratio` or `stride` instead"
            )
        super().__setattr__(name, value)

    use_cls_token = True  # PiT always has a [CLS] token, and pools it
    pooling = "cls"
    representation_size = None  # and no pre-logits layer

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + int(self.use_distillation_token)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def hidden_size(self) -> int:
        return self.hidden_sizes[-1]

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads[-1]

    @property
    def num_hidden_layers(self) -> int:
        return sum(self.depths)

    @property
    def stage_widths(self) -> list[int]:
        return list(self.hidden_sizes)

    @property
    def intermediate_size(self) -> int:
        return self.intermediate_sizes[-1]

    @property
    def stem_stride(self) -> int:
        """Input pixels between neighbouring patches."""
        return self.stride

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch embedding's grid at the configured resolution."""
        return self.stem_grid(*to_pair(self.image_size))

    def stem_grid(self, height: int, width: int) -> tuple[int, int]:
        """The overlapping patch embedding's grid (unpadded) for a `height` x `width` input."""
        return tuple((side - self.patch_size) // self.stride + 1 for side in (height, width))

    def check_values(self):
        lengths = {name: len(getattr(self, name)) for name in ("depths", "hidden_sizes", "num_heads")}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"`depths`, `hidden_sizes` and `num_heads` must have one entry per stage, got {lengths}")
        for index, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_heads)):
            if width % heads:
                raise ValueError(
                    f"`hidden_sizes` ({width}) must be divisible by `num_heads` ({heads}) at stage {index}"
                )
            if int(width * self.mlp_ratio) < 1:
                raise ValueError(f"`mlp_ratio` ({self.mlp_ratio}) leaves stage {index}'s MLP ({width} wide) no unit")
        for previous, width in zip(self.hidden_sizes, self.hidden_sizes[1:]):
            if width % previous:
                raise ValueError(
                    f"`hidden_sizes` {self.hidden_sizes}: each stage's width must be a multiple of the previous one "
                    "(the depthwise token pooling multiplies the channels)"
                )
        if self.patch_size % self.stride:
            raise ValueError(f"`patch_size` ({self.patch_size}) must be a multiple of `stride` ({self.stride})")
        for side in to_pair(self.image_size):
            if side < self.patch_size or side % self.stride:
                raise ValueError(
                    f"`image_size` ({self.image_size}) must be at least `patch_size` ({self.patch_size}) and "
                    f"divisible by `stride` ({self.stride}), so that the patch embedding covers every pixel"
                )


class VitlmTextConfig(VitlmConfigMixin, PretrainedConfig):
    r"""
    Configuration of a CLIP-style text tower: token + learned position embeddings, a causal pre-LN encoder, a final
    LayerNorm, and pooling at the first end-of-text token.

    Args:
        vocab_size (`int`): tokens in the vocabulary (49408 for CLIP's BPE).
        max_position_embeddings (`int`): context length (77 for CLIP).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: width, layers and heads.
        hidden_act, layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob, qkv_bias: as for images.
        bos_token_id, eos_token_id (`int`, *optional*): start- and end-of-text tokens; pooling reads the state at
            `eos_token_id`. They default to the vocabulary's last two ids, where CLIP's BPE puts them (49406 and 49407
            of 49408), so that a small test vocabulary (`VitlmTextConfig(vocab_size=99)`) works as it is.
        pad_token_id (`int`, *optional*): padding token.

    Stricter than transformers' `CLIPTextConfig`, which only warns: a special token id outside the vocabulary is
    refused, since no valid input could hold it (an end-of-text token never found would leave nothing to pool).
    """

    model_type = "vitlm_text"

    def __init__(
        self,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=512,
        num_hidden_layers=12,
        num_attention_heads=8,
        intermediate_size=2048,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.bos_token_id = vocab_size - 2 if bos_token_id is None else bos_token_id
        self.eos_token_id = vocab_size - 1 if eos_token_id is None else eos_token_id
        self.pad_token_id = pad_token_id
        self.check_values()  # before transformers' own checks, which only warn about what these refuse
        super().__init__(**kwargs)

    def check_values(self):
        _check_transformer(self)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and token_id >= self.vocab_size:
                raise ValueError(f"`{name}` ({token_id}) must be a token id below `vocab_size` ({self.vocab_size})")


class VitlmSwinConfig(VitlmHierarchicalConfigMixin, VitlmConfigMixin, PretrainedConfig):
    r"""
    Configuration of a Swin Transformer: a patch stem with LayerNorm, then stages of pre-LN blocks attending within
    (alternately shifted) windows with a learned relative position bias, each stage after the first starting with a
    patch merging that halves the resolution and doubles the width; a final LayerNorm and mean pooling. Field names
    are those of transformers' `SwinConfig`.

    Args:
        image_size (`int` or `(int, int)`): resolution the model is built for; any multiple of `patch_size` runs.
        patch_size (`int`): side of the square patches cut by the stem.
        num_channels (`int`): input channels.
        embed_dim (`int`): width of the first stage; stage `i` is `embed_dim * 2**i` wide.
        depths (`list[int]`): blocks per stage.
        num_heads (`list[int]`): attention heads per stage.
        window_size (`int` or `(int, int)`): side of the attention windows (and of the relative position bias
            table). On a feature map no larger than the window, a stage attends over the whole map without shift.
        mlp_ratio (`float`): MLP width over the block's width.
        qkv_bias (`bool`): bias on the fused query/key/value projection.
        hidden_act (`str`): MLP activation, a key of transformers' `ACT2FN`.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        hidden_dropout_prob, attention_probs_dropout_prob (`float`): dropout rates.
        drop_path_rate (`float`): stochastic depth rate, increased linearly from 0 over all blocks.
        initializer_range (`float`): std of the truncated-normal initialisation.

    `hidden_size` (the final stage's width) and `num_hidden_layers` (the number of stages, one hidden state each)
    are derived, as in transformers' `SwinConfig`.
    """

    model_type = "vitlm_swin"

    def __init__(
        self,
        image_size=224,
        patch_size=4,
        num_channels=3,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        initializer_range=0.02,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.check_values()  # before transformers' own checks, which only warn about what these refuse
        super().__init__(**kwargs)

    @property
    def stage_widths(self) -> list[int]:
        return [self.embed_dim * 2**index for index in range(len(self.depths))]

    @property
    def hidden_size(self) -> int:
        return self.stage_widths[-1]

    @property
    def num_hidden_layers(self) -> int:
        return len(self.depths)

    @property
    def num_attention_heads(self) -> list[int]:
        """Heads per stage (transformers' `SwinConfig` maps the name to `num_heads` too)."""
        return list(self.num_heads)

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def stem_stride(self) -> int:
        return self.patch_size

    def stem_grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch embedding's grid for a `height` x `width` input."""
        return (height // self.patch_size, width // self.patch_size)

    def check_values(self):
        if len(self.num_heads) != len(self.depths):
            raise ValueError(
                f"`num_heads` ({self.num_heads}) must give the heads of each of the {len(self.depths)} stages of "
                f"`depths` ({self.depths})"
            )
        for width, heads in zip(self.stage_widths, self.num_heads):
            if width % heads:
                raise ValueError(
                    f"each stage's width (`embed_dim` * 2**stage: {self.stage_widths}) must be divisible by its "
                    f"`num_heads` ({self.num_heads})"
                )
        for side in to_pair(self.image_size):
            if side % self.patch_size:
                raise ValueError(
                    f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size})"
                )
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ValueError(
                f"`mlp_ratio` ({self.mlp_ratio}) leaves the first stage's MLP ({self.embed_dim} wide) no unit"
            )


VISION_CONFIG_CLASSES = {
    config.model_type: config for config in (VitlmViTConfig, VitlmHybridConfig, VitlmPiTConfig, VitlmSwinConfig)
}


def vision_config_from(value) -> VitlmViTConfig:
    """A vision tower config from a config object, a dict naming its `model_type`, or None (the ViT defaults)."""
    if type(value) in VISION_CONFIG_CLASSES.values():
        return value
    if value is None:
        return VitlmViTConfig()
    if not isinstance(value, dict):
        raise ValueError(
            f"`vision_config` must be a dict or a ViT, hybrid, PiT or Swin config, got {type(value).__name__}"
        )
    value = without_masked_image_modeling_fields(value)
    model_type = value.get("model_type", VitlmViTConfig.model_type)
    if model_type not in VISION_CONFIG_CLASSES:
        raise ValueError(
            f"`vision_config.model_type` must be one of {tuple(VISION_CONFIG_CLASSES)}, got {model_type!r}"
        )
    try:
        return VISION_CONFIG_CLASSES[model_type](**{k: v for k, v in value.items() if k != "model_type"})
    except ValueError as error:
        raise ValueError(f"`vision_config`: {error}") from error


class VitlmDualEncoderConfig(VitlmConfigMixin, PretrainedConfig):
    r"""
    Configuration of a CLIP-style dual encoder: a vision tower (ViT, hybrid or Swin), a text tower, linear
    projections into a shared embedding space, and a learnable temperature.

    Args:
        vision_config (`dict` or [`VitlmViTConfig`] / [`VitlmHybridConfig`] / [`VitlmSwinConfig`]): the image
            tower; a dict's `model_type` picks the family.
        text_config (`dict` or [`VitlmTextConfig`]): the text tower.
        projection_dim (`int`): size of the shared embedding space.
        logit_scale_init_value (`float`): initial log of the temperature's inverse (log(1/0.07) for CLIP, log(10)
            for SigLIP).
        logit_bias_init_value (`float`): initial bias of the sigmoid loss's logits (SigLIP's -10); unused by softmax.
        loss_type (`str`): `"softmax"` (CLIP's symmetric cross-entropy) or `"sigmoid"` (SigLIP's pairwise loss,
            with a learnable bias).
        prompt_templates (`list[str]`, *optional*): the prompts (with "{}" for the class name) whose embeddings a
            zero-shot classifier built from this model averaged per class; its `id2label` holds the class names.

    The logits `exp(logit_scale) * cosine + logit_bias` must stay finite in float16 (at most 65504 in magnitude), the
    narrowest dtype vitlm saves and runs models in: `exp(logit_scale_init_value) + |logit_bias_init_value|` is
    refused above that (a scale of log(65504) ~ 11.1, where CLIP trains at most log(100) ~ 4.6).
    """

    model_type = "vitlm_dual_encoder"
    sub_configs = {"vision_config": VitlmViTConfig, "text_config": VitlmTextConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        projection_dim=512,
        logit_scale_init_value=CLIP_LOGIT_SCALE,
        logit_bias_init_value=-10.0,
        loss_type="softmax",
        prompt_templates=None,
        **kwargs,
    ):
        self.vision_config = vision_config
        self.text_config = text_config
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_bias_init_value = logit_bias_init_value
        self.loss_type = loss_type
        self.prompt_templates = prompt_templates
        self.check_values()  # before transformers' own checks, which only warn about what these refuse
        super().__init__(**kwargs)

    def check_values(self):
        bias = abs(self.logit_bias_init_value) if self.loss_type == "sigmoid" else 0.0
        scale = self.logit_scale_init_value
        if scale > math.log(MAX_LOGIT) or math.exp(scale) + bias > MAX_LOGIT:
            raise ValueError(
                f"`logit_scale_init_value` ({scale}) with `logit_bias_init_value` "
                f"({self.logit_bias_init_value}) gives logits beyond {MAX_LOGIT:g}, which overflow float16: "
                f"exp(logit_scale) + |logit_bias| must stay below it"
            )


class VitlmSegmenterConfig(VitlmConfigMixin, PretrainedConfig):
    r"""
    Configuration of a Segmenter (Strudel et al., 2021): an image tower (ViT, hybrid, PiT or Swin; the hierarchical
    towers' last stage) whose final patch tokens a decoder turns into per-patch class logits, upsampled to pixels by
    the image processor's `post_process_semantic_segmentation`.

    Args:
        vision_config (`dict` or a ViT / hybrid / PiT / Swin config): the image tower; a dict's `model_type` picks
            the family.
        decoder_type (`str`): `"linear"` (a linear classifier per patch token) or `"mask_transformer"` (one learned
            embedding per class, processed jointly with the patch tokens by `mask_decoder_layers` blocks of the
            tower's width; masks are the scalar products of the normalized patch and class embeddings).
        mask_decoder_layers (`int`): blocks of the mask transformer.
        mask_decoder_heads (`int`): attention heads of those blocks; must divide the tower's final width.
        subpatch_factor (`int`): split each final token into `subpatch_factor` x `subpatch_factor` sub-tokens by a
            learned linear map before the decoder (1: none, Segmenter's own), so that labels change within a patch
            rather than only by the bilinear upsampling of patch logits.
        num_labels / id2label: the classes, the background included where the data has one (class 0 in vitlm's
            shapes world).

    Label maps mark pixels to ignore with 255 (transformers' `semantic_loss_ignore_index`).
    """

    model_type = "vitlm_segmenter"
    sub_configs = {"vision_config": VitlmViTConfig}

    def __init__(
        self,
        vision_config=None,
        decoder_type="mask_transformer",
        mask_decoder_layers=2,
        mask_decoder_heads=4,
        subpatch_factor=1,
        initializer_range=0.02,
        **kwargs,
    ):
        self.vision_config = vision_config
        self.decoder_type = decoder_type
        self.mask_decoder_layers = mask_decoder_layers
        self.mask_decoder_heads = mask_decoder_heads
        self.subpatch_factor = subpatch_factor
        self.initializer_range = initializer_range
        self.check_values()  # before transformers' own checks, which only warn about what these refuse
        super().__init__(**kwargs)
        self.check_values()  # the classes are known now

    @property
    def num_prefix_tokens(self) -> int:
        return self.vision_config.num_prefix_tokens

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        return self.vision_config.output_grid(height, width)

    def decoder_config(self) -> VitlmViTConfig:
        """The config of the mask transformer's blocks: the tower's final width, a 4x MLP, run over the last token
        grid, split into sub-tokens (one "patch" per sub-token)."""
        vision = self.vision_config
        grid = vision.output_grid(*to_pair(vision.image_size))
        return VitlmViTConfig(
            image_size=[side * self.subpatch_factor for side in grid],
            patch_size=1,
            hidden_size=vision.hidden_size,
            num_hidden_layers=self.mask_decoder_layers,
            num_attention_heads=self.mask_decoder_heads,
            intermediate_size=4 * vision.hidden_size,
            layer_norm_eps=vision.layer_norm_eps,
            initializer_range=self.initializer_range,
            attn_implementation=self._attn_implementation,
        )

    def check_values(self):
        if "id2label" in self.__dict__ and self.num_labels < 1:
            raise ValueError("`num_labels` must be at least 1: a segmenter labels every pixel with one of its classes")
        width = self.vision_config.hidden_size
        if self.decoder_type == "mask_transformer" and width % self.mask_decoder_heads:
            raise ValueError(
                f"`mask_decoder_heads` ({self.mask_decoder_heads}) must divide the image tower's final width ({width})"
            )


__all__ = [
    "VitlmViTConfig",
    "VitlmSegmenterConfig",
    "VitlmViTMAEConfig",
    "VitlmViTSynthesisConfig",
    "VitlmHybridConfig",
    "VitlmPiTConfig",
    "VitlmSwinConfig",
    "VitlmTextConfig",
    "VitlmDualEncoderConfig",
]
