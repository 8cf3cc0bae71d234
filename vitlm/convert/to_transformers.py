"""vitlm -> transformers: dual encoders as `CLIPModel`, ViTs as `ViTModel` / `ViTForImageClassification`, ViTs with
layer scale (DINOv2) as `Dinov2Model` / `Dinov2ForImageClassification` (`Dinov2WithRegisters*` with registers),
Swins as `SwinModel` / `SwinForImageClassification`.

The weight tables are `from_transformers`' read backwards, so a transformers model converted to vitlm and back has its
original state dict. Whatever transformers' classes cannot represent is refused with `UnsupportedSourceError`, naming
it, before anything is written: hybrid CNN stems, sin-cos or rotary positions, mean pooling, a distillation token,
stochastic depth, a sigmoid loss with its logit bias; for CLIP also a missing `pre_norm`, a patch bias, attention
without qkv bias, a pre-logits layer, hidden dropout, non-square images and an end-of-text id of 2 (which transformers
reads as its legacy argmax pooling); for `ViTModel` a `pre_norm` or a patch projection without bias, and no pre-logits
layer (transformers' `ViTModel` always has its dense + tanh pooler); for `ViTForImageClassification` a pre-logits
layer (its classifier reads the [CLS] state); for Swin non-square windows. transformers' Swin applies stochastic depth
(`drop_path_rate`, kept) to the attention branch only, vitlm's to both branches: training differs, inference not.
Layer scale, register tokens, a SwiGLU MLP, a LayerNorm after pooling,
antialiased position resizing and a position table without the [CLS] row are refused for CLIP and ViT; DINOv2 takes
layer scale, registers (with antialiased resizing, as transformers' registers model does) and SwiGLU (with `silu` and
transformers' width rule), and pools [CLS] (its classifier [CLS] and the patches' mean, `pooling="cls_mean"`). The
exported DINOv2 gets a zero mask token, which transformers uses only when given `bool_masked_pos`.

Processors become `CLIPProcessor` / `ViTImageProcessor` with the same options. Two differences are transformers':
its image processors floor half-pixel crop offsets where torchvision (open_clip, timm) rounds them, so a model
converted from those crops some images one pixel off after export (a warning says so); and its default torchvision
backend resamples uint8 tensors, a level or two away from PIL. The tokenizer becomes a plain `CLIPTokenizer` on the
same vocabulary and merges, padding with `<|endoftext|>` as transformers' CLIP does (open_clip pads with id 0; the text
embedding reads the first end-of-text token, so padding never reaches it) and normalizing text without open_clip's
ftfy-style cleaning.
"""

import json
import os
from pathlib import Path

from transformers import (
    BeitConfig,
    BeitForImageClassification,
    BeitModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    SwinConfig,
    SwinForImageClassification,
    SwinModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)
from transformers.utils import logging

from ..models import (
    VitlmDualEncoderConfig,
    VitlmDualEncoderModel,
    VitlmImageProcessor,
    VitlmSwinConfig,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
    VitlmViTConfig,
    VitlmViTForImageClassification,
    VitlmViTModel,
)
from ..models.configuration_vitlm import to_pair
from . import Converted, UnsupportedSourceError, check_out_dir, save, uninitialized
from .from_transformers import (
    BEIT,
    CLIP,
    LEGACY_CLIP_EOS_ID,
    VIT,
    VIT_CLASSIFIER,
    dinov2_rules,
    swin_classifier_rules,
    swin_rules,
)
from .weights import Rule, load_weights, nest, reverse

logger = logging.get_logger(__name__)
EXPORTABLE = (
    VitlmDualEncoderModel,
    VitlmViTModel,
    VitlmViTForImageClassification,
    VitlmSwinModel,
    VitlmSwinForImageClassification,
)
TO_CLIP, TO_VIT, TO_VIT_CLASSIFIER = reverse(CLIP), reverse(VIT), reverse(VIT_CLASSIFIER)


def to_clip_model(model: VitlmDualEncoderModel) -> CLIPModel:
    """The dual encoder as a transformers `CLIPModel` computing the same embeddings and logits."""
    config = model.config
    problems = vision_problems(config.vision_config, "CLIP") + text_problems(config.text_config)
    if config.loss_type == "sigmoid":
        problems.append("a sigmoid loss with a logit bias (loss_type='sigmoid')")
    refuse_if(problems, "CLIPModel")
    clip_model = load_weights(uninitialized(CLIPModel, clip_config(config)), model.state_dict(), TO_CLIP, "CLIPModel")
    return clip_model.to(model.dtype)


def to_vit_model(
    model: VitlmViTModel | VitlmViTForImageClassification,
) -> ViTModel | ViTForImageClassification:
    """A vitlm ViT as transformers' `ViTModel` (which needs the pre-logits layer: its pooler) or a classifier as
    `ViTForImageClassification`."""
    config = model.config
    classifier = isinstance(model, VitlmViTForImageClassification)
    target = "ViTForImageClassification" if classifier else "ViTModel"
    problems = vision_problems(config, "ViT")
    if classifier and config.representation_size:
        problems.append("a pre-logits layer before the classifier (representation_size)")
    if not classifier and not config.representation_size:
        problems.append("no pooler (representation_size=None; ViTModel's pooler is a dense + tanh layer)")
    refuse_if(problems, target)
    vit_model = uninitialized(ViTForImageClassification if classifier else ViTModel, vit_config(config))
    vit_model = load_weights(vit_model, model.state_dict(), TO_VIT_CLASSIFIER if classifier else TO_VIT, target)
    return vit_model.to(model.dtype)


def to_dinov2_model(model: VitlmViTModel | VitlmViTForImageClassification):
    """A vitlm ViT with layer scale as transformers' DINOv2 (with registers where it has them): `Dinov2Model`
    pooling [CLS], or an image classifier reading [CLS] and the patches' mean."""
    import torch

    config = model.config
    classifier = isinstance(model, VitlmViTForImageClassification)
    registers = config.num_register_tokens > 0
    name = "Dinov2WithRegisters" if registers else "Dinov2"
    target = f"{name}ForImageClassification" if classifier else f"{name}Model"
    problems = [problem for problem in vision_problems(config, "DINOv2") if "pooling" not in problem]
    if config.pooling != ("cls_mean" if classifier else "cls"):
        problems.append(f"{config.pooling} pooling ({target} pools {'[CLS] and the mean' if classifier else '[CLS]'})")
    if config.interpolate_antialias != registers:
        problems.append(f"position resizing {'with' if config.interpolate_antialias else 'without'} antialiasing")
    mlp_ratio = config.intermediate_size // config.hidden_size  # an int in transformers' DINOv2 configs
    if config.mlp_type == "swiglu":
        mlp_ratio = 4  # transformers derives the SwiGLU width from it: two thirds, rounded up to a multiple of 8
        if (
            int(config.hidden_size * 4 * 2 / 3) + 7
        ) // 8 * 8 != config.intermediate_size or config.hidden_act != "silu":
            problems.append("a SwiGLU MLP other than transformers' (silu, two thirds of 4 x hidden_size rounded to 8)")
    elif config.hidden_size * mlp_ratio != config.intermediate_size:
        problems.append(f"an MLP width {config.intermediate_size} other than an integer mlp_ratio x hidden_size")
    refuse_if(problems, target)
    config_class = Dinov2WithRegistersConfig if registers else Dinov2Config
    dinov2_config = config_class(
        image_size=to_pair(config.image_size)[0],
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        mlp_ratio=mlp_ratio,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        drop_path_rate=config.drop_path_rate,
        qkv_bias=config.qkv_bias,
        layerscale_value=config.layerscale_value,
        use_swiglu_ffn=config.mlp_type == "swiglu",
        initializer_range=config.initializer_range,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
        **({"num_register_tokens": config.num_register_tokens} if registers else {}),
    )
    classes = {
        (False, False): Dinov2Model,
        (False, True): Dinov2ForImageClassification,
        (True, False): Dinov2WithRegistersModel,
        (True, True): Dinov2WithRegistersForImageClassification,
    }
    dinov2 = uninitialized(classes[registers, classifier], dinov2_config)
    state = model.state_dict()
    prefix = "vit." if classifier else ""
    state[f"{prefix}embeddings.mask_token"] = torch.zeros(1, config.hidden_size, dtype=model.dtype)
    # the mask token has no vitlm counterpart: a zero one is handed to the table
    rules = [Rule("embeddings.mask_token", "embeddings.mask_token"), *reverse(dinov2_rules(config.mlp_type))]
    if classifier:
        rules = [*nest(rules, "vit.", dinov2.base_model_prefix + "."), Rule("classifier.", "classifier.")]
    return load_weights(dinov2, state, rules, target).to(model.dtype)


def to_swin_model(
    model: VitlmSwinModel | VitlmSwinForImageClassification,
) -> SwinModel | SwinForImageClassification:
    """A vitlm Swin as transformers' `SwinModel`, or a classifier as `SwinForImageClassification`."""
    config = model.config
    classifier = isinstance(model, VitlmSwinForImageClassification)
    target = "SwinForImageClassification" if classifier else "SwinModel"
    if not isinstance(config.window_size, int):
        refuse_if([f"non-square windows {config.window_size}"], target)
    rules = (swin_classifier_rules if classifier else swin_rules)(len(config.depths))
    swin_model = uninitialized(SwinForImageClassification if classifier else SwinModel, swin_config(config))
    return load_weights(swin_model, model.state_dict(), reverse(rules), target).to(model.dtype)


def swin_config(config: VitlmSwinConfig) -> SwinConfig:
    names = (
        "image_size",
        "patch_size",
        "num_channels",
        "embed_dim",
        "depths",
        "num_heads",
        "window_size",
        "mlp_ratio",
        "qkv_bias",
        "hidden_act",
        "layer_norm_eps",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "drop_path_rate",
        "initializer_range",
        "id2label",
        "label2id",
        "problem_type",
    )
    return SwinConfig(**{name: getattr(config, name) for name in names})


def to_beit_model(model: VitlmViTModel | VitlmViTForImageClassification) -> BeitModel | BeitForImageClassification:
    """A vitlm ViT with BEiT's attention (query and value biases, no key bias) as transformers' `BeitModel` (with its
    pooler: the patches' mean and a LayerNorm, or the [CLS] state) or `BeitForImageClassification`."""
    config = model.config
    classifier = isinstance(model, VitlmViTForImageClassification)
    target = "BeitForImageClassification" if classifier else "BeitModel"
    problems = [
        problem
        for problem in vision_problems(config, "BEiT")
        if not problem.startswith(
            (
                "a relative position bias",
                "none position",
                "a mask token",
                "mean pooling",
                "attention without a key",
                "the final LayerNorm after pooling",
            )
        )
    ]
    if config.num_register_tokens or config.mlp_type != "mlp":
        problems.append("register tokens or a SwiGLU MLP")
    if not (config.qkv_bias and not config.key_bias):
        problems.append("attention other than BEiT's (query and value biases, no key bias)")
    if config.position_embedding_type not in ("learned", "none"):
        problems.append(f"{config.position_embedding_type} position embeddings")
    if (config.pooling, config.norm_after_pooling) not in (("mean", True), ("cls", False)):
        problems.append(
            f"{config.pooling} pooling with the LayerNorm {'after' if config.norm_after_pooling else 'before'}"
        )
    if config.interpolate_antialias:
        problems.append("antialiased position resizing (interpolate_antialias)")
    refuse_if(problems, target)
    height, width = to_pair(config.image_size)
    beit_config = BeitConfig(
        image_size=height if height == width else [height, width],
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        drop_path_rate=config.drop_path_rate,
        use_mask_token=config.use_mask_token,
        use_absolute_position_embeddings=config.position_embedding_type == "learned",
        use_relative_position_bias=config.relative_position_bias == "per_layer",
        use_shared_relative_position_bias=config.relative_position_bias == "shared",
        layer_scale_init_value=config.layerscale_value or 0.0,
        use_mean_pooling=config.pooling == "mean",
        initializer_range=config.initializer_range,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
        **_encoder_config(config),
    )
    # the final LayerNorm is the pooler's with mean pooling, the tokens' with [CLS] pooling
    pooled_norm = "pooler.layernorm." if config.pooling == "mean" else "layernorm."
    table = [rule for rule in BEIT if rule.target != "layernorm." or rule.source == pooled_norm]
    rules = reverse(table)
    if classifier:
        rules = [*nest(rules, "vit.", "beit."), Rule("classifier.", "classifier.")]
    beit = uninitialized(BeitForImageClassification if classifier else BeitModel, beit_config)
    return load_weights(beit, model.state_dict(), rules, target).to(model.dtype)


def vision_problems(config: VitlmViTConfig, family: str) -> list[str]:
    """What of a vision tower transformers' CLIP or ViT (`family`) cannot represent."""
    if not isinstance(config, VitlmViTConfig):  # a hierarchical tower (PiT): none of the fields below applies
        return [f"a {config.model_type} image tower (transformers' {family} is a plain ViT)"]
    problems = []
    if config.model_type != VitlmViTConfig.model_type:
        problems.append("a hybrid CNN stem")
    if config.position_embedding_type != "learned":
        problems.append(f"{config.position_embedding_type} position embeddings")
    if config.pooling != "cls":
        problems.append(f"{config.pooling} pooling")
    if config.use_distillation_token:
        problems.append("a distillation token")
    if not config.prefix_position_embeddings:
        problems.append("no position for [CLS] (prefix_position_embeddings=False)")
    if config.use_mask_token:
        problems.append("a mask token (use_mask_token)")
    if config.relative_position_bias != "none":
        problems.append(f"a relative position bias ({config.relative_position_bias})")
    if config.qkv_bias and not config.key_bias:
        problems.append("attention without a key bias (key_bias=False)")
    if config.norm_after_pooling:
        problems.append("the final LayerNorm after pooling (norm_after_pooling)")
    if family in ("DINOv2", "BEiT"):  # their converters check the options they take
        if config.pre_norm:
            problems.append("a LayerNorm before the encoder (pre_norm)")
        if not config.patch_bias or config.representation_size:
            problems.append("a patch projection without bias or a pre-logits layer")
        return problems
    if config.layerscale_value:
        problems.append("layer scale (layerscale_value)")
    if config.num_register_tokens:
        problems.append("register tokens")
    if config.mlp_type != "mlp":
        problems.append(f"a {config.mlp_type} MLP")
    if config.interpolate_antialias:
        problems.append("antialiased position resizing (interpolate_antialias)")
    if config.drop_path_rate:
        problems.append("stochastic depth (drop_path_rate)")
    if family == "ViT":
        if config.pre_norm:
            problems.append("a LayerNorm before the encoder (pre_norm)")
        if not config.patch_bias:
            problems.append("a patch projection without bias (patch_bias=False)")
        return problems
    if not config.pre_norm:
        problems.append("no LayerNorm before the encoder (pre_norm=False)")
    if config.patch_bias:
        problems.append("a patch projection bias (patch_bias)")
    if not config.qkv_bias:
        problems.append("image attention without qkv bias")
    if config.representation_size:
        problems.append("a pre-logits layer (representation_size)")
    if config.hidden_dropout_prob:
        problems.append("image hidden dropout")
    if len(set(to_pair(config.image_size))) > 1:
        problems.append(f"non-square images {config.image_size}")
    return problems


def text_problems(config) -> list[str]:
    problems = []
    if not config.qkv_bias:
        problems.append("text attention without qkv bias")
    if config.hidden_dropout_prob:
        problems.append("text hidden dropout")
    if config.eos_token_id == LEGACY_CLIP_EOS_ID:
        problems.append("an end-of-text id of 2 (transformers' CLIP then pools at the highest token id)")
    return problems


def refuse_if(problems: list[str], target: str):
    if problems:
        raise UnsupportedSourceError(f"transformers' {target} cannot represent {'; '.join(problems)}")


def clip_config(config: VitlmDualEncoderConfig) -> CLIPConfig:
    vision, text = config.vision_config, config.text_config
    return CLIPConfig(
        vision_config={
            "image_size": to_pair(vision.image_size)[0],
            "patch_size": vision.patch_size,
            "num_channels": vision.num_channels,
            "attention_dropout": vision.attention_probs_dropout_prob,
            "initializer_range": vision.initializer_range,
            "projection_dim": config.projection_dim,
            **_encoder_config(vision),
        },
        text_config={
            "vocab_size": text.vocab_size,
            "max_position_embeddings": text.max_position_embeddings,
            "attention_dropout": text.attention_probs_dropout_prob,
            "initializer_range": text.initializer_range,
            "projection_dim": config.projection_dim,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "pad_token_id": text.pad_token_id,
            **_encoder_config(text),
        },
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def vit_config(config: VitlmViTConfig) -> ViTConfig:
    return ViTConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        qkv_bias=config.qkv_bias,
        pooler_output_size=config.representation_size,
        pooler_act="tanh",
        initializer_range=config.initializer_range,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
        **_encoder_config(config),
    )


def _encoder_config(config) -> dict:
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act")
    return {name: getattr(config, name) for name in names} | {"layer_norm_eps": config.layer_norm_eps}


def to_image_processor(image_processor: VitlmImageProcessor, processor_class=CLIPImageProcessor):
    """The same preprocessing as a transformers `CLIPImageProcessor` or `ViTImageProcessor`."""
    if image_processor.do_center_crop and image_processor.crop_rounding == "round":
        logger.warning(
            "transformers' image processors floor half-pixel crop offsets where this processor rounds them (as "
            "torchvision does): images whose resized side exceeds the crop by 3 modulo 4 are cropped one pixel off"
        )
    return processor_class(
        do_resize=image_processor.do_resize,
        size=dict(image_processor.size),
        resample=int(image_processor.resample),
        do_center_crop=image_processor.do_center_crop,
        crop_size=dict(image_processor.crop_size) if image_processor.do_center_crop else None,
        do_rescale=image_processor.do_rescale,
        rescale_factor=image_processor.rescale_factor,
        do_normalize=image_processor.do_normalize,
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
        do_convert_rgb=image_processor.do_convert_rgb,
    )


def to_clip_tokenizer(tokenizer) -> CLIPTokenizer:
    """A plain transformers `CLIPTokenizer` on the tokenizer's BPE vocabulary and merges."""
    if type(tokenizer) is CLIPTokenizer:
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    bpe = json.loads(backend.to_str())["model"] if backend is not None else {}
    if bpe.get("type") != "BPE":
        raise UnsupportedSourceError(f"a {type(tokenizer).__name__} tokenizer (CLIPTokenizer needs a BPE vocabulary)")
    return CLIPTokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in bpe["merges"]],
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        model_max_length=tokenizer.model_max_length,
    )


def to_clip_processor(processor) -> CLIPProcessor:
    return CLIPProcessor(to_image_processor(processor.image_processor), to_clip_tokenizer(processor.tokenizer))


def export(model_or_folder, out_dir: str | Path, processor=None, overwrite: bool = False) -> Path:
    """Save a vitlm model as its transformers counterpart, with a matching transformers processor, to `out_dir`.

    Args:
        model_or_folder: a vitlm model (then pass `processor`), a `Converted`, or a folder saved by vitlm.
        out_dir: written atomically (a sibling folder renamed into place); an existing non-empty folder is refused
            unless `overwrite`.
        processor: the model's `VitlmDualEncoderProcessor` or `VitlmImageProcessor`, unless `model_or_folder` has it.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite, reads=[model_or_folder])
    if isinstance(model_or_folder, Converted):
        model_or_folder, processor = model_or_folder.model, processor or model_or_folder.processor
    elif isinstance(model_or_folder, (str, os.PathLike)):
        model_or_folder, processor = load_folder(model_or_folder, processor)
    if processor is None:
        raise ValueError("pass the model's `processor` to export it with the model")
    if not isinstance(model_or_folder, EXPORTABLE):
        raise UnsupportedSourceError(
            f"a {type(model_or_folder).__name__}: only vitlm dual encoders, ViTs and Swins export"
        )
    if isinstance(model_or_folder, VitlmDualEncoderModel):
        converted = Converted(to_clip_model(model_or_folder), to_clip_processor(processor))
    else:
        image_processor = to_image_processor(getattr(processor, "image_processor", processor), ViTImageProcessor)
        if isinstance(model_or_folder, (VitlmSwinModel, VitlmSwinForImageClassification)):
            to_model = to_swin_model
        elif getattr(model_or_folder.config, "relative_position_bias", "none") != "none" or not getattr(
            model_or_folder.config, "key_bias", True
        ):
            to_model = to_beit_model
        elif getattr(model_or_folder.config, "layerscale_value", None):
            to_model = to_dinov2_model
        else:
            to_model = to_vit_model
        converted = Converted(to_model(model_or_folder), image_processor)
    return save(converted, out_dir, overwrite=overwrite)


def load_folder(folder, processor=None):
    """The vitlm model saved in `folder` and its processor (unless given)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor

    from .. import models

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    architectures = AutoConfig.from_pretrained(folder).architectures or [""]
    model_class = getattr(models, architectures[0], None)
    if model_class is None or not architectures[0].startswith("Vitlm"):
        raise UnsupportedSourceError(f"{folder} holds a {architectures[0] or 'model of no architecture'}, not vitlm's")
    if not issubclass(model_class, EXPORTABLE):  # refused before loading weights and processor
        raise UnsupportedSourceError(f"a {model_class.__name__}: only vitlm dual encoders, ViTs and Swins export")
    model = model_class.from_pretrained(folder)
    if processor is None:
        auto_class = AutoProcessor if isinstance(model, VitlmDualEncoderModel) else AutoImageProcessor
        processor = auto_class.from_pretrained(folder)
    return model, processor


__all__ = [
    "export",
    "to_clip_model",
    "to_vit_model",
    "to_dinov2_model",
    "to_beit_model",
    "to_swin_model",
    "to_clip_processor",
    "to_image_processor",
    "to_clip_tokenizer",
]
