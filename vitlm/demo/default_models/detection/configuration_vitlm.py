"""Configurations of the three vitlm model families: ViT, hybrid CNN+ViT, and CLIP-style dual encoders.

All four configs live in one file so that a dual encoder saved with remote code can rebuild its vision tower's
config (ViT or hybrid) from `model_type` alone, without vitlm's Auto-class registrations.
"""

import math

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

POSITION_EMBEDDING_TYPES = ("learned", "sincos2d", "rope2d")
POOLING_TYPES = ("cls", "mean")
LOSS_TYPES = ("softmax", "sigmoid")
CLIP_LOGIT_SCALE = math.log(1 / 0.07)


def to_pair(value) -> tuple[int, int]:
    """`224` -> `(224, 224)`; `[224, 320]` -> `(224, 320)`."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _require_positive_ints(config, *names):
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def _require_choice(config, name, choices):
    if getattr(config, name) not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {getattr(config, name)!r}")


def _require_probabilities(config, *names):
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")


def _validate_transformer(config):
    """Checks shared by every transformer tower (vision and text)."""
    _require_positive_ints(config, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"`hidden_size` ({config.hidden_size}) must be divisible by `num_attention_heads` "
            f"({config.num_attention_heads})"
        )
    if config.hidden_act not in ACT2FN:
        raise ValueError(f"`hidden_act` must be one of transformers' activations, got {config.hidden_act!r}")
    if config.layer_norm_eps <= 0:
        raise ValueError(f"`layer_norm_eps` must be positive, got {config.layer_norm_eps!r}")
    _require_probabilities(config, "hidden_dropout_prob", "attention_probs_dropout_prob")


class VitlmViTConfig(PretrainedConfig):
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
        pooling (`str`): `"cls"` (the [CLS] state) or `"mean"` (average of the patch states).
        pre_norm (`bool`): LayerNorm before the encoder, as in CLIP's vision tower.
        representation_size (`int`, *optional*): size of the ViT paper's pre-logits layer (linear + tanh on the
            pooled output; transformers' `ViTModel` pooler); `None` for none.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            shape of the lightweight decoder of the masked-image-modeling (inpainting) head, as in MAE.
        mask_ratio (`float`): fraction of patches the inpainting head masks at random while training.
        norm_pix_loss (`bool`): train the inpainting head to predict per-patch normalized pixels (MAE's option);
            such a model cannot inpaint, since a masked patch's mean and variance are unknown.
        initializer_range (`float`): std of the truncated-normal initialisation.
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
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
        mask_ratio=0.75,
        norm_pix_loss=False,
        initializer_range=0.02,
        **kwargs,
    ):
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
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
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.check_values()

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.use_cls_token) + int(self.use_distillation_token)

    @property
    def stem_stride(self) -> int:
        """Input pixels per patch side."""
        return self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid at the configured resolution."""
        height, width = to_pair(self.image_size)
        return height // self.stem_stride, width // self.stem_stride

    def check_values(self):
        _require_positive_ints(self, "image_size", "patch_size", "num_channels")
        _validate_transformer(self)
        _require_choice(self, "position_embedding_type", POSITION_EMBEDDING_TYPES)
        _require_choice(self, "pooling", POOLING_TYPES)
        _require_probabilities(self, "drop_path_rate")
        if self.representation_size is not None:
            _require_positive_ints(self, "representation_size")
        _require_positive_ints(
            self,
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
        )
        if self.decoder_hidden_size % self.decoder_num_attention_heads or self.decoder_hidden_size % 4:
            raise ValueError(
                f"`decoder_hidden_size` ({self.decoder_hidden_size}) must be divisible by "
                f"`decoder_num_attention_heads` ({self.decoder_num_attention_heads}) and by 4 (its sin-cos table)"
            )
        _require_probabilities(self, "mask_ratio")
        for side in to_pair(self.image_size):
            if side % self.stem_stride:
                raise ValueError(
                    f"`image_size` ({self.image_size}) must be divisible by the stem's stride ({self.stem_stride} "
                    f"pixels per patch)"
                )
        if self.pooling == "cls" and not self.use_cls_token:
            raise ValueError("`pooling='cls'` needs `use_cls_token=True`; use `pooling='mean'` without a [CLS] token")
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
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"`rope_theta` must be a positive number, got {self.rope_theta!r}")


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
        self.backbone_depths = list(backbone_depths) if isinstance(backbone_depths, (list, tuple)) else backbone_depths
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
        if not isinstance(self.backbone_depths, list) or not self.backbone_depths:
            raise ValueError(
                f"`backbone_depths` must be a non-empty list of positive integers, got {self.backbone_depths!r}"
            )
        _require_positive_ints(
            self, "backbone_depths", "backbone_stem_width", "backbone_width_factor", "backbone_num_groups"
        )
        # every GroupNorm (stem and bottleneck widths; stage outputs are 4x the bottleneck width) splits into groups
        channels = [self.backbone_stem_width] + [width // 4 for width in self.backbone_widths]
        if any(c % self.backbone_num_groups for c in channels):
            raise ValueError(
                f"`backbone_num_groups` ({self.backbone_num_groups}) must divide every backbone width {channels} "
                "(set by `backbone_stem_width` and `backbone_width_factor`)"
            )
        if self.backbone_std_conv_eps <= 0:
            raise ValueError(f"`backbone_std_conv_eps` must be positive, got {self.backbone_std_conv_eps!r}")
        super().check_values()


class VitlmTextConfig(PretrainedConfig):
    r"""
    Configuration of a CLIP-style text tower: token + learned position embeddings, a causal pre-LN encoder, a final
    LayerNorm, and pooling at the first end-of-text token.

    Args:
        vocab_size (`int`): tokens in the vocabulary (49408 for CLIP's BPE).
        max_position_embeddings (`int`): context length (77 for CLIP).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: width, layers and heads.
        hidden_act, layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob, qkv_bias: as for images.
        bos_token_id, eos_token_id, pad_token_id (`int`): special tokens; pooling reads the state at `eos_token_id`.
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
        bos_token_id=49406,
        eos_token_id=49407,
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
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
        self.check_values()

    def check_values(self):
        _require_positive_ints(self, "vocab_size", "max_position_embeddings")
        _validate_transformer(self)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(f"`{name}` ({token_id}) must be a token id below `vocab_size` ({self.vocab_size})")
        if self.eos_token_id is None:
            raise ValueError("`eos_token_id` is required: the text tower pools at the end-of-text token")


VISION_CONFIG_CLASSES = {config.model_type: config for config in (VitlmViTConfig, VitlmHybridConfig)}


def vision_config_from(value) -> VitlmViTConfig:
    """A vision tower config from a config object, a dict naming its `model_type`, or None (the ViT defaults)."""
    if isinstance(value, VitlmViTConfig):
        return value
    if value is None:
        return VitlmViTConfig()
    if not isinstance(value, dict):
        raise ValueError(f"`vision_config` must be a dict or a ViT/hybrid config, got {type(value).__name__}")
    model_type = value.get("model_type", VitlmViTConfig.model_type)
    if model_type not in VISION_CONFIG_CLASSES:
        raise ValueError(
            f"`vision_config.model_type` must be one of {tuple(VISION_CONFIG_CLASSES)}, got {model_type!r}"
        )
    return VISION_CONFIG_CLASSES[model_type](**{k: v for k, v in value.items() if k != "model_type"})


class VitlmDualEncoderConfig(PretrainedConfig):
    r"""
    Configuration of a CLIP-style dual encoder: a vision tower (ViT or hybrid), a text tower, linear projections
    into a shared embedding space, and a learnable temperature.

    Args:
        vision_config (`dict` or [`VitlmViTConfig`] / [`VitlmHybridConfig`]): the image tower; a dict's
            `model_type` picks the family.
        text_config (`dict` or [`VitlmTextConfig`]): the text tower.
        projection_dim (`int`): size of the shared embedding space.
        logit_scale_init_value (`float`): initial log of the temperature's inverse (log(1/0.07) for CLIP, log(10)
            for SigLIP).
        logit_bias_init_value (`float`): initial bias of the sigmoid loss's logits (SigLIP's -10); unused by softmax.
        loss_type (`str`): `"softmax"` (CLIP's symmetric cross-entropy) or `"sigmoid"` (SigLIP's pairwise loss,
            with a learnable bias).
        prompt_templates (`list[str]`, *optional*): the prompts (with "{}" for the class name) whose embeddings a
            zero-shot classifier built from this model averaged per class; its `id2label` holds the class names.
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
        self.vision_config = vision_config_from(vision_config)
        if isinstance(text_config, VitlmTextConfig):
            self.text_config = text_config
        elif text_config is None or isinstance(text_config, dict):
            self.text_config = VitlmTextConfig(**{k: v for k, v in (text_config or {}).items() if k != "model_type"})
        else:
            raise ValueError(f"`text_config` must be a dict or a VitlmTextConfig, got {type(text_config).__name__}")
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_bias_init_value = logit_bias_init_value
        self.loss_type = loss_type
        self.prompt_templates = prompt_templates
        super().__init__(**kwargs)
        self.check_values()

    def check_values(self):
        _require_positive_ints(self, "projection_dim")
        _require_choice(self, "loss_type", LOSS_TYPES)
        for name in ("logit_scale_init_value", "logit_bias_init_value"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}` must be a finite number, got {getattr(self, name)!r}")


__all__ = ["VitlmViTConfig", "VitlmHybridConfig", "VitlmTextConfig", "VitlmDualEncoderConfig"]
