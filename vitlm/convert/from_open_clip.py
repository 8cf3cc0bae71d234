"""open_clip -> vitlm: CLIP-architecture dual encoders with open_clip's own ViT and text transformer.

A spec is what follows `open_clip:` in a source: `<model_name>[/<pretrained_tag>]` (`ViT-B-32/laion2b_s34b_b79k`,
`ViT-B-32-quickgelu/openai`; the tag may also be a local weights file), or `hf-hub:<org>/<repo>` / `local-dir:<path>`.
open_clip builds the model and loads the weights itself (`create_model_and_transforms`), so downloads, checkpoint
formats and position-embedding resizing are exactly open_clip's; this module then translates the config and maps the
state dict.

Converted exactly: `CLIP`, and `CustomTextCLIP` with open_clip's `TextTransformer`; GELU, QuickGELU or tanh-GELU
MLPs; any LayerNorm eps; with or without `ln_pre` (`no_ln_pre`); class-token or average pooling (`pool_type` "tok" /
"avg"; `final_ln_after_pool` with the class token, since a LayerNorm acts on each token alone); learned or fixed
sin-cos position tables (stored as weights); `patch_dropout` (inactive at inference); plain `custom` blocks; a
scalar or 1-element logit scale; a logit bias (SigLIP-style sigmoid loss); text pooled at the end-of-text token
("argmax" or "eos"); CLIP's BPE tokenizer; "shortest" (square) and "squash" resizing, bicubic or bilinear.

Refused with `UnsupportedSourceError`, naming the feature: timm / ModifiedResNet image towers, Hugging Face text
towers, CoCa, attentional pooling, layer scale, qk-norm / cosine attention / head scaling / extra NormFormer norms,
other activations, average pooling with `final_ln_after_pool`, a text class token, bidirectional text attention,
other text pooling, a text projection with bias or none, non-CLIP vocabularies and tokenizers, and "longest" or
non-square "shortest" resizing.
"""

from pathlib import Path

import PIL.Image
from torch import nn

from ..clip_bpe import clip_tokenizer
from ..models import (
    VitlmDualEncoderConfig,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmImageProcessor,
    VitlmTextConfig,
    VitlmViTConfig,
)
from ..models.configuration_vitlm import to_pair
from . import Converted, UnsupportedSourceError, check_checkpoint, uninitialized
from .weights import SCALAR, TRANSPOSE, Rule, leading_dims, load_weights, nest

SCHEMAS = ("hf-hub:", "local-dir:")
CLIP_VOCAB_SIZE, CLIP_BOS_ID, CLIP_EOS_ID, CLIP_PAD_ID = 49408, 49406, 49407, 0
POOLING = {"tok": "cls", "avg": "mean"}
# open_clip evaluates with bicubic when trained with random interpolation
INTERPOLATIONS = {
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "random": PIL.Image.Resampling.BICUBIC,
}

# weight tables: open_clip's names -> vitlm's (see `weights`)
BLOCK = [  # under one resblock; both attentions hold q, k, v fused along dim 0 in that order, like vitlm's `qkv`
    Rule("*.ln_1.", "*.layer_norm1."),
    Rule("*.attn.in_proj_weight", "*.attention.qkv.weight"),
    Rule("*.attn.in_proj_bias", "*.attention.qkv.bias"),
    Rule("*.attn.out_proj.", "*.attention.proj."),
    Rule("*.ln_2.", "*.layer_norm2."),
    Rule("*.mlp.c_fc.", "*.mlp.fc1."),
    Rule("*.mlp.c_proj.", "*.mlp.fc2."),
]
TEXT = [
    Rule("token_embedding.weight", "text_model.token_embedding.weight"),
    Rule("positional_embedding", "text_model.position_embedding.weight"),
    *nest(BLOCK, "transformer.resblocks.", "text_model.encoder.layers."),
    Rule("ln_final.", "text_model.final_layer_norm."),
    # open_clip multiplies `x @ proj` with a (width, embed) matrix; a Linear stores (embed, width)
    Rule("text_projection", "text_projection.weight", TRANSPOSE),
]
WEIGHTS = [
    Rule("visual.conv1.weight", "vision_model.embeddings.stem.projection.weight"),
    Rule("visual.class_embedding", "vision_model.embeddings.cls_token", leading_dims(2)),
    Rule(
        "visual.positional_embedding", "vision_model.embeddings.position_encoding.position_embeddings", leading_dims(1)
    ),
    Rule("visual.ln_pre.", "vision_model.pre_layernorm."),
    *nest(BLOCK, "visual.transformer.resblocks.", "vision_model.encoder.layers."),
    Rule("visual.ln_post.", "vision_model.layernorm."),
    Rule("visual.proj", "visual_projection.weight", TRANSPOSE),
    # `CLIP` unpacks its text tower onto the model, `CustomTextCLIP` keeps it under `text.`
    *TEXT,
    *nest(TEXT, "text.", ""),
    Rule("logit_scale", "logit_scale", SCALAR),
    Rule("logit_bias", "logit_bias", SCALAR),
]


def load(spec: str, checkpoint: str | Path | None = None, random_weights: bool = False) -> Converted:
    """Build `spec` with open_clip (downloading the tag's weights, or reading `checkpoint` instead) and convert it.
    A model name alone names no weights: it is refused unless `random_weights`."""
    import open_clip

    if spec.startswith(SCHEMAS):
        if checkpoint is not None or random_weights:
            raise ValueError(f"{spec!r} names its weights itself: it takes neither a checkpoint nor random weights")
        name, tag = spec, ""
    else:
        name, _, tag = spec.partition("/")
        if name not in open_clip.list_models():
            raise ValueError(f"open_clip has no model {name!r} (`open_clip.list_models()` lists them, e.g. ViT-B-32)")
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag and tag not in tags and not Path(tag).is_file():
            raise ValueError(
                f"{tag!r} is not one of open_clip's pretrained tags for {name!r} ({', '.join(tags) or 'none'}) "
                "nor a weights file"
            )
        if tag and tag not in tags:
            check_checkpoint(tag)  # a local weights file in the tag's place
        if random_weights and tag:
            raise ValueError(f"random weights and the pretrained tag {tag!r} exclude each other: pass one of them")
        if not (tag or checkpoint or random_weights):
            example = f"open_clip:{name}/{tags[0]}" if tags else f"open_clip:{name}/<weights file>"
            raise ValueError(
                f"open_clip:{name} names no pretrained weights: add a tag ({example}), pass a checkpoint file, or ask "
                "for random weights explicitly (--random-weights, random_weights=True)"
            )
    pretrained, preprocess = tag or None, {}
    if checkpoint is not None:
        check_checkpoint(checkpoint)
        pretrained = str(checkpoint)
        if tag:
            # the local file stands in for the tag's download; the tag still decides the preprocessing
            tag_config = open_clip.get_pretrained_cfg(name, tag)
            if not tag_config:
                raise ValueError(f"{tag!r} is not one of open_clip's pretrained tags for {name!r}")
            preprocess = {
                f"image_{key}": tag_config.get(key) for key in ("mean", "std", "interpolation", "resize_mode")
            }
    try:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, **preprocess)
    except (RuntimeError, AssertionError) as error:
        if pretrained is not None and not Path(pretrained).is_file():
            # the tag's weights, which open_clip downloads itself: an unreachable Hub or a missing file
            raise OSError(f"open_clip:{spec}: {error}") from None
        if pretrained is None:
            raise
        # torch's load_state_dict (missing, unexpected or mis-shaped weights) or open_clip's own checks of them
        raise ValueError(f"checkpoint {pretrained} does not fit open_clip's {name}: {error}") from None
    return convert_model(model, open_clip.get_tokenizer(name), source=f"open_clip:{spec}")


def convert_model(model: nn.Module, tokenizer, source: str = "open_clip model") -> Converted:
    """Convert a built open_clip model, given the tokenizer `open_clip.get_tokenizer` returns for it."""
    import open_clip

    features = unsupported_features(model, tokenizer)
    if features:
        raise UnsupportedSourceError(f"{source}: vitlm cannot represent {'; '.join(features)}; nothing was converted")
    config = convert_config(model)
    vitlm_model = load_weights(uninitialized(VitlmDualEncoderModel, config), model.state_dict(), WEIGHTS, source)
    processor = VitlmDualEncoderProcessor(
        convert_image_processor(open_clip.get_model_preprocess_cfg(model)),
        clip_tokenizer(context_length=config.text_config.max_position_embeddings),
    )
    return Converted(vitlm_model, processor)


def unsupported_features(model: nn.Module, tokenizer) -> list[str]:
    """What in `model`, its preprocessing or its tokenizer vitlm cannot represent exactly; empty when it converts."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import TextTransformer, VisionTransformer

    if type(model) not in (CLIP, CustomTextCLIP):
        return [f"open_clip {type(model).__name__} models"]
    text = getattr(model, "text", model)  # CLIP unpacks its text tower onto itself
    towers = [] if isinstance(model.visual, VisionTransformer) else [f"the {type(model.visual).__name__} image tower"]
    if not isinstance(text, (CLIP, TextTransformer)):
        towers.append(f"the {type(text).__name__} text tower")
    if towers:
        return towers
    features = _image_features(model.visual) + _text_features(model, text) + _tokenizer_features(tokenizer)
    return features + _preprocess_features(open_clip.get_model_preprocess_cfg(model))


def _image_features(visual) -> list[str]:
    features = []
    if visual.attn_pool is not None:
        features.append("attentional pooling (attentional_pool)")
    if visual.pool_type not in POOLING:
        features.append(f"image pooling {visual.pool_type!r}")
    elif visual.final_ln_after_pool and visual.pool_type == "avg":
        # with the class token it is exact: a LayerNorm normalizes each token on its own
        features.append("a LayerNorm after average pooling (final_ln_after_pool)")
    if visual.patch_size[0] != visual.patch_size[1]:
        features.append(f"non-square patches {visual.patch_size}")
    if visual.proj is None:
        features.append("an image tower without projection")
    return features + _encoder_features("image", visual.transformer, [visual.ln_pre, visual.ln_post])


def _text_features(model, text) -> list[str]:
    features = []
    if getattr(text, "cls_emb", None) is not None:
        features.append("a text class token (embed_cls)")
    if text.attn_mask is None:
        features.append("bidirectional text attention (no_causal_mask)")
    pool_type, eos_id = (model.text_pool_type, model.text_eos_id) if text is model else (text.pool_type, text.eos_id)
    # vitlm pools at the first end-of-text token; with CLIP's vocabulary that token has the highest id ("argmax")
    if pool_type != "argmax" and not (pool_type == "eos" and eos_id == CLIP_EOS_ID):
        features.append(f"text pooling {pool_type!r}")
    if text.text_projection is None:
        features.append("a text tower without projection (proj_type='none')")
    elif isinstance(text.text_projection, nn.Linear):  # open_clip uses a Linear only for proj_bias=True
        features.append("a text projection bias (proj_bias)")
    if text.token_embedding.num_embeddings != CLIP_VOCAB_SIZE:
        features.append(f"a {text.token_embedding.num_embeddings}-token vocabulary (CLIP's has {CLIP_VOCAB_SIZE})")
    return features + _encoder_features("text", text.transformer, [text.ln_final])


def _encoder_features(tower: str, transformer, norms: list[nn.Module]) -> list[str]:
    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

    features = []
    for block in transformer.resblocks:
        if isinstance(block, CustomResidualAttentionBlock):
            attn = block.attn
            extras = {
                "query/key LayerNorms (qk_norm)": not isinstance(attn.ln_q, nn.Identity),
                "scaled cosine attention (scaled_cosine_attn)": attn.logit_scale is not None,
                "per-head attention scales (scale_heads)": attn.head_scale is not None,
                "a LayerNorm inside attention (scale_attn_inner)": not isinstance(attn.ln_inner, nn.Identity),
                "a LayerNorm after attention (scale_attn)": not isinstance(block.ln_attn, nn.Identity),
                "a LayerNorm inside the MLP (scale_fc)": not isinstance(block.mlp.ln, nn.Identity),
            }
            features += [f"{tower} {name}" for name, present in extras.items() if present]
        elif not isinstance(block, ResidualAttentionBlock):
            features.append(f"{tower} {type(block).__name__} blocks")
            continue
        elif block.attn.bias_k is not None or block.attn.add_zero_attn:
            features.append(f"{tower} attention with key/value bias tokens")
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            features.append(f"{tower} layer scale (ls_init_value)")
        if _hidden_act(block.mlp.gelu) is None:
            features.append(f"{tower} activation {block.mlp.gelu}")
    norms = [m for m in [*transformer.modules(), *norms] if isinstance(m, nn.LayerNorm)]
    if len({norm.eps for norm in norms}) > 1:
        features.append(f"{tower} LayerNorms with different eps")
    if any(norm.weight is None or norm.bias is None for norm in norms):
        features.append(f"{tower} LayerNorms without weight or bias")
    return list(dict.fromkeys(features))


def _hidden_act(activation: nn.Module) -> str | None:
    """The transformers activation computing exactly what open_clip's does, or None."""
    from open_clip.transformer import QuickGELU

    if type(activation) is QuickGELU:
        return "quick_gelu"
    if type(activation) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[activation.approximate]
    return None


def _tokenizer_features(tokenizer) -> list[str]:
    from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

    if type(tokenizer) is not SimpleTokenizer:
        return [f"a {type(tokenizer).__name__} tokenizer (vitlm has CLIP's BPE)"]
    features = []
    if tokenizer.vocab_size != CLIP_VOCAB_SIZE:
        features.append("additional special tokens")
    if tokenizer.clean_fn is not get_clean_fn("lower"):
        features.append(f"tokenizer text cleaning {tokenizer.clean_fn.__name__}")
    if tokenizer.reduction_fn is not None:
        features.append("tokenizer reduction_mask")
    return features


def _preprocess_features(preprocess_cfg: dict) -> list[str]:
    features = []
    if preprocess_cfg.get("interpolation", "bicubic") not in INTERPOLATIONS:
        features.append(f"{preprocess_cfg['interpolation']!r} interpolation")
    height, width = to_pair(preprocess_cfg["size"])
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash") or (resize_mode == "shortest" and height != width):
        features.append(f"{resize_mode!r} resizing to {height}x{width}")
    return features


def convert_config(model: nn.Module) -> VitlmDualEncoderConfig:
    """The vitlm config of a supported open_clip model (see `unsupported_features`)."""
    visual, text = model.visual, getattr(model, "text", model)
    height, width = visual.image_size
    vision_config = VitlmViTConfig(
        image_size=height if height == width else [height, width],
        patch_size=visual.patch_size[0],
        patch_bias=False,
        pooling=POOLING[visual.pool_type],
        pre_norm=not isinstance(visual.ln_pre, nn.Identity),
        **_encoder_config(visual.transformer),
    )
    text_config = VitlmTextConfig(
        vocab_size=text.token_embedding.num_embeddings,
        max_position_embeddings=text.positional_embedding.shape[0],
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
        pad_token_id=CLIP_PAD_ID,
        **_encoder_config(text.transformer),
    )
    bias = (
        {} if model.logit_bias is None else {"loss_type": "sigmoid", "logit_bias_init_value": model.logit_bias.item()}
    )
    return VitlmDualEncoderConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=visual.proj.shape[1],
        logit_scale_init_value=model.logit_scale.item(),
        **bias,
    )


def _encoder_config(transformer) -> dict:
    block = transformer.resblocks[0]
    return {
        "hidden_size": transformer.width,
        "num_hidden_layers": len(transformer.resblocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.c_fc.out_features,
        "hidden_act": _hidden_act(block.mlp.gelu),
        "layer_norm_eps": block.ln_1.eps,
        "qkv_bias": block.attn.in_proj_bias is not None,
    }


def convert_image_processor(preprocess_cfg: dict) -> VitlmImageProcessor:
    """open_clip's inference transform (`image_transform(..., is_train=False)`) as a vitlm image processor."""
    height, width = to_pair(preprocess_cfg["size"])
    squash = preprocess_cfg.get("resize_mode", "shortest") == "squash"
    return VitlmImageProcessor(
        size={"height": height, "width": width} if squash else {"shortest_edge": height},
        resample=INTERPOLATIONS[preprocess_cfg.get("interpolation", "bicubic")],
        do_center_crop=not squash,
        crop_size={"height": height, "width": width},
        image_mean=preprocess_cfg.get("mean"),  # None: OpenAI's statistics, open_clip's default too
        image_std=preprocess_cfg.get("std"),
    )
