"""timm's Vision Transformers (plain ViT, DeiT with distillation token, R26/R50 hybrids, PiT) and Swin
Transformers as vitlm models.

`timm:<name>[.<pretrained_tag>]` is built by `timm.create_model(..., pretrained=True)`, so timm's own download and
checkpoint filtering produce the weights. The architecture is first translated on the meta device, so that a model
vitlm cannot represent exactly is refused before anything is downloaded.

Supported: class-token or average pooling (the final LayerNorm before pooling), learned absolute position embeddings
(covering the prefix tokens, or not: `no_embed_class`, `prefix_position_embeddings=False`), register tokens
(DINOv2-reg), layer scale (DINOv2, DeiT-3), the packed SwiGLU MLP (DINOv2-giant), `norm_pre`, any qkv /
patch-projection bias, and the GELU / tanh-GELU / QuickGELU / SiLU activations. qk-norm, attention pooling,
`fc_norm`, other norms, blocks or backbones are refused with an `UnsupportedSourceError` naming them. timm's
`PoolingVisionTransformer` (`pit_*`, distilled or not) becomes a `VitlmPiTModel`; the same block features are refused
there.

Swin (`swin_*`): the original architecture, one window size for every stage. timm shifts before padding a map the
windows do not divide and picks windows per axis; vitlm pads first and picks by the shorter side, as the original
Swin and transformers do: outputs are equal wherever neither applies (every map a multiple of the window, square
inputs), which covers the published models at their resolutions. Refused: per-stage window sizes (`swin_s3_*`),
`always_partition`, a head dimension other than width / heads, windows timm clamped below `window_size` at the
resolution it was built for, and pooling other than the average.
"""

import math
from pathlib import Path

from torch import nn

from ..models import (
    VitlmHybridConfig,
    VitlmHybridForImageClassification,
    VitlmHybridModel,
    VitlmImageProcessor,
    VitlmPiTConfig,
    VitlmPiTForImageClassification,
    VitlmPiTModel,
    VitlmSwinConfig,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
    VitlmViTConfig,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from ..models.configuration_vitlm import to_pair
from ..models.modeling_swin import stage_windows
from . import Converted, UnsupportedSourceError, check_checkpoint, uninitialized
from .weights import Rule, Transform, load_weights, nest

MODEL_CLASSES = {  # (config class, has a classifier) -> vitlm model class
    (VitlmViTConfig, True): VitlmViTForImageClassification,
    (VitlmViTConfig, False): VitlmViTModel,
    (VitlmHybridConfig, True): VitlmHybridForImageClassification,
    (VitlmHybridConfig, False): VitlmHybridModel,
    (VitlmPiTConfig, True): VitlmPiTForImageClassification,
    (VitlmPiTConfig, False): VitlmPiTModel,
    (VitlmSwinConfig, True): VitlmSwinForImageClassification,
    (VitlmSwinConfig, False): VitlmSwinModel,
}

# weight tables: timm's names -> vitlm's (see `weights`)
RESNET = [  # the hybrids' ResNetV2 backbone
    Rule("stem.conv.", "stem_conv."),
    Rule("stem.norm.", "stem_norm."),
    Rule("stages.*.blocks.*.downsample.conv.", "stages.*.*.downsample."),
    Rule("stages.*.blocks.*.downsample.norm.", "stages.*.*.downsample_norm."),
    Rule("stages.*.blocks.*.", "stages.*.*."),
]
TRANSFORMER = [  # below the classifiers
    Rule("cls_token", "embeddings.cls_token"),
    Rule("dist_token", "embeddings.distillation_token"),
    Rule("pos_embed", "embeddings.position_encoding.position_embeddings"),
    Rule("patch_embed.proj.", "embeddings.stem.projection."),
    *nest(RESNET, "patch_embed.backbone.", "embeddings.stem.backbone."),
    Rule("norm_pre.", "pre_layernorm."),
    Rule("blocks.*.norm1.", "encoder.layers.*.layer_norm1."),
    Rule("blocks.*.norm2.", "encoder.layers.*.layer_norm2."),
    Rule("blocks.*.attn.", "encoder.layers.*.attention."),
    Rule("blocks.*.mlp.", "encoder.layers.*.mlp."),
    Rule("blocks.*.ls1.gamma", "encoder.layers.*.layer_scale1.scale"),
    Rule("blocks.*.ls2.gamma", "encoder.layers.*.layer_scale2.scale"),
    Rule("reg_token", "embeddings.register_tokens"),
    Rule("norm.", "layernorm."),
]
HEADS = [Rule("head.", "classifier."), Rule("head_dist.", "distillation_classifier.")]
# a classification model holds the transformer under `vit.`
CLASSIFIER = [*HEADS, *nest(TRANSFORMER, "", "vit.")]

# PiT keeps its [CLS] and distillation tokens in one (1, tokens, width) parameter and its position table on the grid
TOKENS_FIRST = Transform("tokens first", lambda t: t.transpose(0, 1), lambda t: t.transpose(0, 1))
GRID_TO_TOKENS = Transform("grid to tokens", lambda t: t.flatten(2).transpose(1, 2))
PIT = [  # below the classifiers; `pit_rules` adds the class tokens'
    Rule("patch_embed.conv.", "embeddings.projection."),
    Rule("pos_embed", "embeddings.position_encoding.position_embeddings", GRID_TO_TOKENS),
    Rule("transformers.*.pool.", "stages.*.pooling."),
    Rule("transformers.*.blocks.*.norm1.", "stages.*.layers.*.layer_norm1."),
    Rule("transformers.*.blocks.*.norm2.", "stages.*.layers.*.layer_norm2."),
    Rule("transformers.*.blocks.*.attn.", "stages.*.layers.*.attention."),
    Rule("transformers.*.blocks.*.mlp.", "stages.*.layers.*.mlp."),
    Rule("norm.", "layernorm."),
]

SWIN = [  # below the classifier
    Rule("patch_embed.proj.", "patch_embeddings.projection."),
    Rule("patch_embed.norm.", "embedding_norm."),
    Rule("layers.*.downsample.", "stages.*.downsample."),
    Rule("layers.*.blocks.*.norm1.", "stages.*.blocks.*.layer_norm1."),
    Rule("layers.*.blocks.*.norm2.", "stages.*.blocks.*.layer_norm2."),
    Rule(
        "layers.*.blocks.*.attn.relative_position_bias_table",
        "stages.*.blocks.*.relative_position_bias.relative_position_bias_table",
    ),
    Rule("layers.*.blocks.*.attn.", "stages.*.blocks.*.attention."),
    Rule("layers.*.blocks.*.mlp.", "stages.*.blocks.*.mlp."),
    Rule("norm.", "layernorm."),
]
SWIN_CLASSIFIER = [Rule("head.fc.", "classifier."), *nest(SWIN, "", "swin.")]
BEIT = [  # below the classifier
    Rule("cls_token", "embeddings.cls_token"),
    Rule("pos_embed", "embeddings.position_encoding.position_embeddings"),
    Rule("patch_embed.proj.", "embeddings.stem.projection."),
    Rule("rel_pos_bias.relative_position_bias_table", "encoder.relative_position_bias.relative_position_bias_table"),
    Rule("blocks.*.gamma_1", "encoder.layers.*.layer_scale1.scale"),
    Rule("blocks.*.gamma_2", "encoder.layers.*.layer_scale2.scale"),
    Rule("blocks.*.norm1.", "encoder.layers.*.layer_norm1."),
    Rule("blocks.*.norm2.", "encoder.layers.*.layer_norm2."),
    Rule(
        "blocks.*.attn.relative_position_bias_table",
        "encoder.layers.*.relative_position_bias.relative_position_bias_table",
    ),
    Rule("blocks.*.attn.", "encoder.layers.*.attention."),  # qkv.weight, q_bias, v_bias, proj
    Rule("blocks.*.mlp.", "encoder.layers.*.mlp."),
    Rule("norm.", "layernorm."),  # [CLS] pooling: the final norm on the tokens
    Rule("fc_norm.", "layernorm."),  # mean pooling: the norm after pooling
]
WEIGHT_TABLES = {  # config class -> config -> (base model's table, classifier's table)
    VitlmViTConfig: lambda config: (TRANSFORMER, CLASSIFIER),
    VitlmHybridConfig: lambda config: (TRANSFORMER, CLASSIFIER),
    VitlmPiTConfig: lambda config: pit_tables(config),
    VitlmSwinConfig: lambda config: (SWIN, SWIN_CLASSIFIER),
}

# timm's interpolation names -> PIL filters (torchvision resizes PIL images with these)
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def load(spec: str, checkpoint: str | Path | None = None, random_weights: bool = False) -> Converted:
    """Convert `timm:<spec>`; `checkpoint` is a local .safetensors file that timm loads instead of downloading;
    `random_weights` builds the architecture with timm's random initialisation instead."""
    import timm

    source = f"timm:{spec}"
    try:
        skeleton = timm.create_model(spec, pretrained=False, device="meta")
    except RuntimeError as error:  # an unknown model name or pretrained tag
        raise ValueError(f"{source}: {error} (`timm.list_models(pretrained=True)` lists timm's models)") from None
    config = vitlm_config(skeleton, source)
    processor = image_processor(timm.data.resolve_data_config({}, model=skeleton), source)

    overlay = None
    if checkpoint is not None:
        check_checkpoint(checkpoint)
        overlay = {"file": str(checkpoint)}
    try:
        timm_model = timm.create_model(spec, pretrained=not random_weights, pretrained_cfg_overlay=overlay)
    except (RuntimeError, AssertionError) as error:
        if checkpoint is None:
            raise
        # torch's load_state_dict (missing, unexpected or mis-shaped weights) or timm's own checks of them
        raise ValueError(f"checkpoint {checkpoint} does not fit timm's {spec}: {error}") from None
    return Converted(convert_model(timm_model, config, source), processor)


def convert_model(timm_model, config: VitlmViTConfig, source: str):
    """The vitlm model of `config` (from [`vitlm_config`]) holding `timm_model`'s weights."""
    has_classifier = timm_model.num_classes > 0
    model = uninitialized(MODEL_CLASSES[type(config), has_classifier], config)
    if type(timm_model).__name__ == "Beit":  # a ViT config, with BEiT's own weight names
        rules = [*HEADS, *nest(BEIT, "", "vit.")] if has_classifier else BEIT
    else:
        rules = WEIGHT_TABLES[type(config)](config)[has_classifier]
    return load_weights(model, timm_model.state_dict(), rules, source)


def pit_tables(config: VitlmPiTConfig) -> tuple[list[Rule], list[Rule]]:
    """The PiT tables, with the class tokens' rule: one (1, tokens, width) parameter split into vitlm's tokens."""
    tokens = "embeddings.cls_token"
    if config.use_distillation_token:
        tokens = (tokens, "embeddings.distillation_token")
    rules = [Rule("cls_token", tokens, TOKENS_FIRST), *PIT]
    return rules, [*HEADS, *nest(rules, "", "vit.")]


def vitlm_config(model, source: str) -> VitlmViTConfig | VitlmSwinConfig:
    """The vitlm config of a timm model (meta-device models work), or UnsupportedSourceError naming every feature
    vitlm cannot reproduce exactly."""
    if type(model).__name__ == "PoolingVisionTransformer":
        return pit_config(model, source)
    if type(model).__name__ == "SwinTransformer":
        return swin_config(model, source)
    if type(model).__name__ == "Beit":
        return beit_config(model, source)
    problems = unsupported_features(model)
    if problems:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent " + "; ".join(problems))

    from timm.layers import LayerScale, Mlp

    block, embed = model.blocks[0], model.patch_embed
    height, width = embed.img_size
    kwargs = dict(
        image_size=height if height == width else [height, width],
        patch_size=embed.proj.kernel_size[0],
        num_channels=model.in_chans,
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc2.in_features,
        mlp_type="mlp" if type(block.mlp) is Mlp else "swiglu",
        layerscale_value=block.ls1.init_values if isinstance(block.ls1, LayerScale) else None,
        num_register_tokens=model.num_reg_tokens,
        prefix_position_embeddings=not model.no_embed_class,
        hidden_act=activation_name(block.mlp.act),
        layer_norm_eps=block.norm1.eps,
        qkv_bias=block.attn.qkv.bias is not None,
        use_cls_token=model.cls_token is not None,
        use_distillation_token=hasattr(model, "dist_token"),
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        pooling="cls" if model.global_pool == "token" else "mean",
    )
    kwargs.update(classifier_fields(model))
    if is_hybrid(model):
        backbone = embed.backbone
        stages = [stage.blocks for stage in backbone.stages]
        kwargs.update(
            backbone_depths=[len(blocks) for blocks in stages],
            backbone_stem_width=backbone.stem.conv.out_channels,
            backbone_width_factor=max(stages[0][0].conv3.out_channels // 256, 1),
            backbone_num_groups=backbone.stem.norm.num_groups,
            backbone_std_conv_eps=backbone.stem.conv.eps,
        )
        config_class = VitlmHybridConfig
    else:
        kwargs["patch_bias"] = embed.proj.bias is not None
        config_class = VitlmViTConfig
    try:
        config = config_class(**kwargs)
    except ValueError as error:
        raise UnsupportedSourceError(f"{source}: {error}") from error
    if is_hybrid(model) and [blocks[-1].conv3.out_channels for blocks in stages] != config.backbone_widths:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent ResNetV2 stage widths other than 256 x 2^i")
    return config


def beit_config(model, source: str) -> VitlmViTConfig:
    """The vitlm config of a timm `Beit` (BEiT, BEiT v2): a ViT with layer scale, query and value biases, a relative
    position bias per block or shared, and [CLS] or mean pooling (the LayerNorm then after pooling)."""
    from timm.layers import Mlp
    from timm.models.beit import Attention, Block

    problems = []
    blocks = list(model.blocks)
    if any(type(block) is not Block or type(block.attn) is not Attention for block in blocks):
        problems.append("blocks other than timm's BEiT blocks")
    first = blocks[0]
    width = model.embed_dim
    if any(type(block.mlp) is not Mlp for block in blocks):
        problems.append(f"{type(first.mlp).__name__} MLP")
    elif any(block.mlp.fc1.bias is None or not isinstance(block.mlp.norm, nn.Identity) for block in blocks):
        problems.append("an MLP without biases or with a norm inside (scale_mlp)")
    if first.attn.qkv.weight.shape[0] != 3 * width:
        problems.append("an attention width other than embed_dim (attn_head_dim)")
    if (first.attn.q_bias is None) != (first.attn.v_bias is None):
        problems.append("a query bias without a value bias")
    if model.global_pool not in ("token", "avg"):
        problems.append(f"global_pool={model.global_pool!r}")
    if model.global_pool == "avg":
        beit_norms = model.fc_norm is not None and isinstance(model.norm, nn.Identity)
    else:
        beit_norms = model.fc_norm is None and not isinstance(model.norm, nn.Identity)
    if not beit_norms:
        problems.append("a final norm other than BEiT's (the tokens' with [CLS] pooling, the mean's with average)")
    relative, bias_window = "none", None
    if model.rel_pos_bias is not None:
        relative, bias_window = "shared", model.rel_pos_bias.window_size
    if first.attn.relative_position_bias_table is not None:
        relative, bias_window = "per_layer", first.attn.window_size
    if bias_window is not None and tuple(bias_window) != tuple(model.patch_embed.grid_size):
        problems.append("a relative position bias over a window other than the patch grid")
    if activation_name(first.mlp.act) is None:
        problems.append(f"the {type(first.mlp.act).__name__} activation")
    if problems:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent " + "; ".join(dict.fromkeys(problems)))
    height, width_pixels = model.patch_embed.img_size
    try:
        return VitlmViTConfig(
            image_size=height if height == width_pixels else [height, width_pixels],
            patch_size=model.patch_embed.proj.kernel_size[0],
            num_channels=model.patch_embed.proj.in_channels,
            hidden_size=width,
            num_hidden_layers=len(blocks),
            num_attention_heads=first.attn.num_heads,
            intermediate_size=first.mlp.fc1.out_features,
            hidden_act=activation_name(first.mlp.act),
            layer_norm_eps=first.norm1.eps,
            qkv_bias=first.attn.q_bias is not None,
            key_bias=False,
            position_embedding_type="learned" if model.pos_embed is not None else "none",
            relative_position_bias=relative,
            # only the initial value, which timm does not keep: BEiT's own 0.1 (the weights hold the trained scales)
            layerscale_value=0.1 if first.gamma_1 is not None else None,
            pooling="mean" if model.global_pool == "avg" else "cls",
            norm_after_pooling=model.global_pool == "avg",
            **classifier_fields(model),
        )
    except ValueError as error:
        raise UnsupportedSourceError(f"{source}: {error}") from error


def classifier_fields(model) -> dict:
    """The config fields of a timm model's classifier: its class count and, where timm knows them, the class names."""
    if model.num_classes == 0:
        return {}
    fields = {"num_labels": model.num_classes}
    labels = label_names(model)
    if labels is not None:
        fields["id2label"] = dict(enumerate(labels))
        fields["label2id"] = {label: index for index, label in enumerate(labels)}
    return fields


def pit_config(model, source: str) -> VitlmPiTConfig:
    """The vitlm config of a timm `PoolingVisionTransformer`, or UnsupportedSourceError naming what vitlm cannot
    reproduce exactly."""
    problems = pit_unsupported_features(model)
    if problems:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent " + "; ".join(problems))
    conv = model.patch_embed.conv
    blocks = [stage.blocks for stage in model.transformers]
    first = blocks[0][0]
    height, width = model.patch_embed.img_size
    kwargs = dict(
        image_size=height if height == width else [height, width],
        patch_size=conv.kernel_size[0],
        stride=conv.stride[0],
        num_channels=model.in_chans,
        depths=[len(stage) for stage in blocks],
        hidden_sizes=[stage[0].norm1.normalized_shape[0] for stage in blocks],
        num_heads=[stage[0].attn.num_heads for stage in blocks],
        mlp_ratio=first.mlp.fc1.out_features / first.norm1.normalized_shape[0],
        hidden_act=activation_name(first.mlp.act),
        layer_norm_eps=first.norm1.eps,
        qkv_bias=first.attn.qkv.bias is not None,
        use_distillation_token=model.num_tokens == 2,
        **classifier_fields(model),
    )
    try:
        config = VitlmPiTConfig(**kwargs)
    except ValueError as error:
        raise UnsupportedSourceError(f"{source}: {error}") from error
    widths = [block.mlp.fc1.out_features for stage in blocks for block in stage]
    if widths != [size for size, depth in zip(config.intermediate_sizes, config.depths) for _ in range(depth)]:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent MLP widths other than int(width * mlp_ratio)")
    return config


def pit_unsupported_features(model) -> list[str]:
    from timm.models.vision_transformer import Block

    problems = []
    if model.global_pool != "token":
        problems.append(f"global_pool={model.global_pool!r} (vitlm's PiT pools the class token)")
    if model.num_tokens == 2 and model.num_classes == 0:
        # timm's features then average the class and distillation tokens; vitlm's base model pools the class token
        problems.append("a distilled PiT without classifiers (num_classes=0)")
    conv = model.patch_embed.conv
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
        problems.append("a non-square patch embedding")
    if conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.bias is None:
        problems.append("a padded, dilated or bias-free patch embedding")
    norms = [model.norm]
    shapes = set()
    for index, stage in enumerate(model.transformers):
        width = stage.blocks[0].norm1.normalized_shape[0]
        if not isinstance(stage.norm, nn.Identity):
            problems.append("a norm at the start of a stage")
        pool = stage.pool
        if (pool is None) != (index == 0):
            problems.append("token pooling other than before every stage but the first")
        elif pool is not None:
            pool_conv = pool.conv
            if (
                pool_conv.kernel_size != (3, 3)
                or pool_conv.stride != (2, 2)
                or pool_conv.padding != (1, 1)
                or pool_conv.groups != pool_conv.in_channels
                or pool_conv.padding_mode != "zeros"
                or pool_conv.bias is None
            ):
                problems.append("a token pooling other than a zero-padded depthwise 3x3 stride-2 conv with bias")
        for block in stage.blocks:
            problems += block_problems(block, width)
            if type(block) is Block:
                norms += [block.norm1, block.norm2]
                shapes.add((block.mlp.fc1.out_features / width, block.attn.qkv.bias is not None, type(block.mlp.act)))
    if len(shapes) > 1:
        problems.append("blocks with different MLP ratios, qkv biases or activations")
    for norm in norms:
        if not (isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None):
            problems.append(f"{type(norm).__name__} norms (vitlm uses affine LayerNorm)")
    if len({norm.eps for norm in norms if isinstance(norm, nn.LayerNorm)}) > 1:
        problems.append("LayerNorms with different eps")
    return list(dict.fromkeys(problems))


def swin_config(model, source: str) -> VitlmSwinConfig:
    """The config of timm's `SwinTransformer`, checked block by block against what vitlm computes from it."""
    from timm.layers import Mlp, PatchEmbed
    from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, WindowAttention

    problems = []
    stages = list(model.layers)
    blocks = [block for stage in stages for block in stage.blocks]
    if type(model.patch_embed) is not PatchEmbed or not isinstance(model.patch_embed.norm, nn.LayerNorm):
        problems.append("a patch embedding other than a conv followed by a LayerNorm")
    else:
        problems += patch_projection_problems(model.patch_embed.proj)
    if model.global_pool != "avg":
        problems.append(f"global_pool={model.global_pool!r} (vitlm averages the final tokens)")
    if any(type(block) is not SwinTransformerBlock for block in blocks):
        problems.append("blocks other than SwinTransformerBlock")
    elif any(type(block.attn) is not WindowAttention or type(block.mlp) is not Mlp for block in blocks):
        problems.append("attention or MLP other than WindowAttention and Mlp")
    elif any(block.always_partition for block in blocks):
        problems.append("always_partition=True")
    elif any(block.attn.qkv.out_features != 3 * block.dim for block in blocks):
        problems.append("a head dimension other than width / heads (head_dim)")
    elif len({block.attn.window_size for block in blocks}) > 1:
        problems.append(
            f"window sizes that differ between blocks ({sorted({block.attn.window_size for block in blocks})}): "
            "per-stage windows, or windows timm clamped to a small feature map at the resolution it was built for"
        )
    for stage in stages[1:]:
        if type(stage.downsample) is not PatchMerging:
            problems.append("downsampling other than patch merging")
    norms = [model.norm, model.patch_embed.norm, *(m for b in blocks for m in (b.norm1, b.norm2))]
    norms += [stage.downsample.norm for stage in stages[1:] if type(stage.downsample) is PatchMerging]
    if any(not isinstance(norm, nn.LayerNorm) or norm.bias is None for norm in norms):
        problems.append("norms other than affine LayerNorm")
    elif len({norm.eps for norm in norms}) > 1:
        problems.append("LayerNorms with different eps")
    if problems:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent " + "; ".join(dict.fromkeys(problems)))

    first = blocks[0]
    height, width = model.patch_embed.img_size
    activations = {activation_name(block.mlp.act) for block in blocks}
    kwargs = dict(
        image_size=height if height == width else [height, width],
        patch_size=model.patch_embed.proj.kernel_size[0],
        num_channels=model.in_chans,
        embed_dim=model.embed_dim,
        depths=[len(stage.blocks) for stage in stages],
        num_heads=[stage.blocks[0].attn.num_heads for stage in stages],
        window_size=first.attn.window_size[0]
        if len(set(first.attn.window_size)) == 1
        else list(first.attn.window_size),
        mlp_ratio=first.mlp.fc1.out_features / first.dim,
        qkv_bias=first.attn.qkv.bias is not None,
        hidden_act=activations.pop() if len(activations) == 1 else None,
        layer_norm_eps=first.norm1.eps,
    )
    if kwargs["hidden_act"] is None:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent activations other than one GELU variant")
    kwargs.update(classifier_fields(model))
    try:
        config = VitlmSwinConfig(**kwargs)
    except ValueError as error:
        raise UnsupportedSourceError(f"{source}: {error}") from error
    if any(int(block.dim * config.mlp_ratio) != block.mlp.fc1.out_features for block in blocks):
        raise UnsupportedSourceError(
            f"{source}: vitlm cannot represent MLP widths that are not one ratio of the width"
        )
    # the windows and shifts vitlm picks at timm's resolution must be timm's (they differ for non-square maps)
    for index, (stage, grid) in enumerate(zip(stages, config.stage_grids(height, width))):
        window, shift = stage_windows(*grid, to_pair(config.window_size))
        for number, block in enumerate(stage.blocks):
            expected = (window, shift if number % 2 else (0, 0))
            if (tuple(block.window_size), tuple(block.shift_size)) != expected:
                raise UnsupportedSourceError(
                    f"{source}: stage {index} uses windows {tuple(block.window_size)} shifted by "
                    f"{tuple(block.shift_size)} where vitlm (as the original Swin) uses {expected[0]} shifted by "
                    f"{expected[1]} (a non-square feature map?)"
                )
    return config


def is_hybrid(model) -> bool:
    return hasattr(model.patch_embed, "backbone")


def unsupported_features(model) -> list[str]:
    from timm.layers import Attention, GluMlp, HybridEmbed, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block

    name = type(model).__name__
    if name not in ("VisionTransformer", "VisionTransformerDistilled"):
        return [f"timm's {name} (only VisionTransformer and DeiT's VisionTransformerDistilled map onto vitlm)"]
    problems = []
    if model.pos_embed is None:
        problems.append("no position embedding (pos_embed='none')")
    if model.num_reg_tokens and not model.no_embed_class:
        problems.append("register tokens with rows in the position table (reg_tokens without no_embed_class)")
    if model.global_pool not in ("token", "avg"):
        problems.append(
            f"global_pool={model.global_pool!r} (vitlm pools the class token or averages the patch tokens)"
        )
    if model.global_pool == "avg" and model.pool_include_prefix and model.num_prefix_tokens:
        problems.append("average pooling over the class token too (pool_include_prefix=True)")
    if not isinstance(model.fc_norm, nn.Identity):
        problems.append("the final norm after pooling (fc_norm)")
    elif isinstance(model.norm, nn.Identity):
        problems.append("no final norm (final_norm=False)")
    if hasattr(model, "dist_token") and model.num_classes == 0:
        # timm's features then average the class and distillation tokens; vitlm's base model pools the class token
        problems.append("a DeiT distilled model without classifiers (num_classes=0)")

    norms = [norm for norm in (model.norm_pre, model.norm) if not isinstance(norm, nn.Identity)]
    for block in model.blocks:
        problems += block_problems(block, model.embed_dim)
        if type(block) is Block:
            norms += [block.norm1, block.norm2]
    shapes = {
        (
            b.attn.num_heads,
            b.mlp.fc1.out_features,
            type(b.mlp),
            type(b.ls1),
            b.attn.qkv.bias is not None,
            activation_name(b.mlp.act),
        )
        for b in model.blocks
        if type(b) is Block and type(b.attn) is Attention and type(b.mlp) in (Mlp, GluMlp)
    }
    if len(shapes) > 1:
        problems.append("blocks of different shapes or activations")

    for norm in norms:
        if not (isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None):
            problems.append(f"{type(norm).__name__} norms (vitlm uses affine LayerNorm)")
    if len({norm.eps for norm in norms if isinstance(norm, nn.LayerNorm)}) > 1:
        problems.append("LayerNorms with different eps")

    embed = model.patch_embed
    if type(embed) is PatchEmbed:
        if not isinstance(embed.norm, nn.Identity):
            problems.append("a norm in the patch embedding (embed_norm_layer)")
        problems += patch_projection_problems(embed.proj)
    elif type(embed) is HybridEmbed:
        problems += hybrid_backbone_problems(embed)
    else:
        problems.append(f"a {type(embed).__name__} patch embedding")
    return list(dict.fromkeys(problems))


def block_problems(block, width: int) -> list[str]:
    """What vitlm's `VitlmBlock` cannot reproduce of a timm `Block` of `width` channels."""
    from timm.layers import Attention, GluMlp, LayerScale, Mlp
    from timm.models.vision_transformer import Block

    if type(block) is not Block:
        return [f"{type(block).__name__} blocks"]
    problems = []
    scales = {type(block.ls1), type(block.ls2)}
    if scales not in ({nn.Identity}, {LayerScale}) or any(
        getattr(ls, "inplace", False) for ls in (block.ls1, block.ls2)
    ):
        problems.append("layer scale other than timm's LayerScale on both branches")
    attn, mlp = block.attn, block.mlp
    if type(attn) is not Attention:
        problems.append(f"{type(attn).__name__} attention")
    else:
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            problems.append("qk_norm")
        if not isinstance(attn.norm, nn.Identity):
            problems.append("a norm inside attention (scale_attn_norm)")
        if getattr(attn, "gate", None) is not None:
            problems.append("gated attention")
        if attn.attn_dim != width:
            problems.append("an attention width other than embed_dim (attn_head_dim)")
        if attn.proj.bias is None:
            problems.append("projections without bias (proj_bias=False)")
    if type(mlp) is GluMlp:
        if mlp.gate_last or mlp.chunk_dim != -1:
            problems.append("a GluMlp gating with the second half of fc1 (vitlm gates with the first, SwiGLUPacked)")
    elif type(mlp) is not Mlp:
        problems.append(f"{type(mlp).__name__} MLP")
    if type(mlp) in (Mlp, GluMlp):
        if not isinstance(mlp.norm, nn.Identity):
            problems.append("a norm inside the MLP (scale_mlp_norm)")
        if mlp.fc1.bias is None or mlp.fc2.bias is None:
            problems.append("projections without bias (proj_bias=False)")
        if activation_name(mlp.act) is None:
            problems.append(f"the {type(mlp.act).__name__} activation")
    return problems


def patch_projection_problems(proj) -> list[str]:
    if not isinstance(proj, nn.Conv2d):
        return ["a patch embedding without projection (proj=False)"]
    kernel = proj.kernel_size
    if kernel[0] != kernel[1] or proj.stride != kernel or proj.padding != (0, 0) or proj.dilation != (1, 1):
        return ["non-square or overlapping patches"]
    return []


def hybrid_backbone_problems(embed) -> list[str]:
    """vitlm's hybrid stem is timm's `_resnetv2` backbone of `vit_*_r26_*` / `vit_*_r50_*`: a non-pre-activation
    ResNetV2 of bottlenecks with 'same'-padded weight-standardized convs, GroupNorm and a 7x7 conv + max-pool stem."""
    from timm.layers import GroupNormAct, StdConv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame
    from timm.models.resnetv2 import Bottleneck, DownsampleConv, ResNetV2

    backbone = embed.backbone
    if type(backbone) is not ResNetV2:
        return [f"a {type(backbone).__name__} hybrid backbone (vitlm's hybrids use a ResNetV2)"]
    problems = patch_projection_problems(embed.proj)
    if not problems and embed.proj.bias is None:
        problems.append("a hybrid patch projection without bias")
    stem = backbone.stem
    if "norm" not in stem._modules and "conv" in stem._modules:
        problems.append("a pre-activation ResNetV2 (preact=True)")
    elif list(stem._modules) != ["conv", "norm", "pool"]:
        problems.append("a ResNetV2 stem other than conv-norm-pool (stem_type 'deep', 'tiered' or 'fixed')")
    elif type(stem.conv) is not StdConv2dSame or type(stem.pool) is not MaxPool2dSame:
        problems.append("a ResNetV2 stem without TensorFlow 'SAME' padding (stem_type other than 'same')")
    elif stem.conv.kernel_size != (7, 7) or stem.conv.stride != (2, 2):
        problems.append("a ResNetV2 stem other than a 7x7 stride-2 convolution")
    if not isinstance(backbone.norm, nn.Identity):
        problems.append("a pre-activation ResNetV2 (preact=True)")

    blocks = [stage.blocks for stage in backbone.stages]
    if not blocks:
        problems.append("a ResNetV2 backbone without stages")
    if any(type(block) is not Bottleneck for stage in blocks for block in stage):
        problems.append("pre-activation or basic ResNetV2 blocks (preact=True)")
    elif blocks:
        if any(type(stage[0].downsample) is not DownsampleConv for stage in blocks):
            problems.append("ResNetV2 average-pool downsampling (avg_down=True)")
        if [stage[0].conv2.stride[0] for stage in blocks] != [1] + [2] * (len(blocks) - 1):
            problems.append("ResNetV2 stage strides other than 1, 2, 2, ... (output_stride)")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if any(type(conv) is not StdConv2dSame for conv in convs):
        problems.append("ResNetV2 convolutions other than StdConv2dSame (padding other than 'same')")
    elif any(conv.dilation != (1, 1) or conv.groups != 1 for conv in convs) or len({c.eps for c in convs}) > 1:
        problems.append("dilated, grouped or differently standardized ResNetV2 convolutions")
    norms = [m for m in backbone.modules() if isinstance(m, nn.GroupNorm)]
    if any(type(norm) is not GroupNormAct for norm in norms) or len(norms) != len(convs):
        problems.append("ResNetV2 norms other than GroupNorm")
    elif len({norm.num_groups for norm in norms}) > 1 or any(norm.eps != 1e-5 or not norm.affine for norm in norms):
        problems.append("ResNetV2 GroupNorms with other groups or eps than vitlm's (one group count, eps 1e-5)")
    elif any(type(norm.act) not in (nn.ReLU, nn.Identity) for norm in norms):
        problems.append("ResNetV2 activations other than ReLU")
    return problems


def activation_name(act) -> str | None:
    """transformers' name for the same activation function, or None."""
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[act.approximate]
    if type(act) is nn.SiLU:
        return "silu"
    return {GELU: "gelu", GELUTanh: "gelu_pytorch_tanh", QuickGELU: "quick_gelu"}.get(type(act))


def label_names(model) -> list[str] | None:
    """Class names timm knows without a download: the pretrained config's, or ImageNet's (guessed from the class
    count, as timm's own inference script does)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    names = getattr(model, "pretrained_cfg", {}).get("label_names")
    if names is None and (subset := infer_imagenet_subset(model)):
        names = ImageNetInfo(subset).label_descriptions()
    if not isinstance(names, (list, tuple)) or len(names) != model.num_classes:
        return None
    return [str(name) for name in names]


def image_processor(data_config: dict, source: str = "timm") -> VitlmImageProcessor:
    """The processor reproducing `timm.data.create_transform(**data_config)` (timm's eval transform) exactly."""
    height, width = data_config["input_size"][-2:]
    crop_mode = data_config.get("crop_mode") or "center"
    # timm's rule: resize to floor(size / crop_pct), then center crop to size
    scale = [math.floor(side / data_config["crop_pct"]) for side in (height, width)]
    if crop_mode == "squash":
        size = {"height": scale[0], "width": scale[1]}
    elif crop_mode == "center" and scale[0] == scale[1]:
        size = {"shortest_edge": scale[0]}
    else:
        raise UnsupportedSourceError(
            f"{source}: vitlm's image processor cannot reproduce timm's crop_mode={crop_mode!r} at input size "
            f"{height}x{width} (only 'center' with a square input and 'squash')"
        )
    interpolation = data_config["interpolation"]
    if interpolation not in PIL_RESAMPLE:
        raise UnsupportedSourceError(f"{source}: vitlm's image processor has no {interpolation!r} interpolation")
    return VitlmImageProcessor(
        size=size,
        resample=PIL_RESAMPLE[interpolation],
        crop_size={"height": height, "width": width},
        image_mean=list(data_config["mean"]),
        image_std=list(data_config["std"]),
    )
