"""transformers -> vitlm: CLIP, ViT and Swin models as transformers itself builds them.

A spec is what follows `hf:` in a source: a Hub repo id (`openai/clip-vit-base-patch32`) or a local folder.
transformers' own `from_pretrained` reads the weights (safetensors only) and its Auto classes the processor, so legacy
weight names and config fields are settled by transformers; this module then translates the config and maps the
state dict. `to_transformers` goes the other way with the same weight tables, reversed.

Converted exactly:

- `CLIPModel` -> `VitlmDualEncoderModel`. The text tower pools at the first `eos_token_id`, as transformers does.
  Configs from before transformers fixed CLIP's special-token ids say `eos_token_id: 2`, and transformers then pools
  at the highest id of each sequence (`argmax`): with CLIP's vocabulary that is the first end-of-text token, whose id
  is the last of the vocabulary, so such models convert with `eos_token_id = vocab_size - 1` once the repo's tokenizer
  confirms that layout, and are refused otherwise (text without an end-of-text token, which the tokenizer never
  produces, is rejected by vitlm where transformers would pool at its highest id). The repo's own tokenizer is kept, so
  token ids are the source's.
- `CLIPVisionModel` -> `VitlmViTModel`. `pooler_output`, `hidden_states` and `attentions` equal transformers'.
  transformers returns CLIP's `last_hidden_state` before the final LayerNorm (applied to the pooled [CLS] state
  only), vitlm after it, like every other ViT: vitlm's `last_hidden_state` is `post_layernorm` of transformers'.
- `ViTModel` -> `VitlmViTModel`, its dense + tanh pooler as the pre-logits layer (`representation_size`); a repo saved
  without pooler converts without one (vitlm's `pooler_output` is then the [CLS] state, transformers' None).
- `ViTForImageClassification` -> `VitlmViTForImageClassification`, labels kept.
- `Dinov2Model` / `Dinov2WithRegistersModel` -> `VitlmViTModel` with layer scale (and register tokens, and the SwiGLU
  MLP where `use_swiglu_ffn`); `Dinov2ForImageClassification` / `Dinov2WithRegistersForImageClassification` ->
  `VitlmViTForImageClassification` pooling [CLS] and the patches' mean side by side (`pooling="cls_mean"`), as their
  classifier reads. The mask token, used by transformers only when given `bool_masked_pos` (DINOv2's iBOT training),
  is not carried over; transformers' DINOv2 interpolates its position table for any other input size, vitlm when
  asked (`interpolate_pos_encoding=True`), the same bicubic way (antialiased with registers).
- `OwlViTForObjectDetection` -> `VitlmDualEncoderForObjectDetection`: the CLIP towers as for `CLIPModel` (OWL-ViT's
  `post_layernorm` applied to every token is vitlm's final LayerNorm), the LayerNorm after merging the [CLS] token, and
  the class and box heads. transformers' OWL-ViT text tower always pools at the highest token id, so it converts like a
  legacy CLIP config (the tokenizer's end-of-text id must be the vocabulary's last). transformers masks the queries
  whose first token id is 0 (all-padding rows, `input_ids[..., 0] > 0`); vitlm rejects text without an end-of-text
  token and takes the mask as `query_mask` instead. (`OwlViTProcessor` pads missing queries with the text " ", which
  neither masks.) Image queries pick the same token as transformers' `image_guided_detection`.
- `ViTMAEForPreTraining` -> `VitlmViTForMaskedImageModeling`: the same masking for the same `noise`, and the same
  logits and loss. transformers stores MAE's fixed 2D sin-cos tables (encoder and decoder) as frozen weights, vitlm
  computes them: a model converts only when both tables are that formula's, with zeros for [CLS]. At other resolutions
  (`interpolate_pos_encoding=True`) vitlm evaluates the formula at stretched positions where transformers resizes its
  stored tables (the decoder's along the flattened sequence), so outputs there differ.
- `SwinModel` / `SwinForImageClassification` -> `VitlmSwinModel` / `VitlmSwinForImageClassification`, labels kept;
  `last_hidden_state`, `pooler_output` and logits equal transformers'. transformers pads images whose sides are not
  multiples of the patch size, vitlm refuses them; transformers' hidden states are taken after each stage's patch
  merging, vitlm's before it (each stage's own feature map). transformers clamps a stage's window to a small map for
  good (a later, larger input keeps the clamped window and no shift); vitlm decides per input, as a freshly built
  transformers model does. Absolute position embeddings (`use_absolute_embeddings`) are refused.
- The image processor (`CLIPImageProcessor`, `ViTImageProcessor`) -> `VitlmImageProcessor`, equal to transformers'
  PIL backend; its default torchvision backend resamples uint8 tensors instead of PIL images, which moves some
  values (a sixth on smooth test images) by one or two levels out of 255, up to four when shrinking pixel noise.
  A crop larger than the resized image pads as the torchvision backend does (the PIL backend pads a pixel further).

Refused with `UnsupportedSourceError`, naming what: other model types and architectures (ViT's masked image
modeling, CLIP's projection-only or classification variants, OWLv2 with its objectness head and pad-to-square
preprocessing, ...), an OWL-ViT class head whose width (the text hidden size) is not `projection_dim`, MAE position
tables other than the fixed sin-cos formula's (trained, altered or left at zero), pooler activations other than tanh,
non-square patches, a `head_dim` other than `hidden_size / num_attention_heads`, weights left unloaded or unused by
transformers, image processors that pad or resize to other size specs, and weights that are not safetensors.
"""

from pathlib import Path

import PIL.Image
import torch

from ..models import (
    VitlmDualEncoderConfig,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmImageProcessor,
    VitlmSwinConfig,
    VitlmSwinForImageClassification,
    VitlmSwinModel,
    VitlmTextConfig,
    VitlmViTConfig,
    VitlmViTForImageClassification,
    VitlmViTForMaskedImageModeling,
    VitlmViTMAEConfig,
    VitlmViTModel,
)
from ..models.layers import grid_positions, sincos_2d_position_embeddings
from . import Converted, UnsupportedSourceError, uninitialized
from .weights import Rule, leading_dims, load_weights, nest

# architecture -> the model_type its config must have
ARCHITECTURES = {
    "CLIPModel": "clip",
    "CLIPVisionModel": "clip_vision_model",
    "ViTModel": "vit",
    "ViTForImageClassification": "vit",
    "OwlViTForObjectDetection": "owlvit",
    "ViTMAEForPreTraining": "vit_mae",
    "Dinov2Model": "dinov2",
    "Dinov2ForImageClassification": "dinov2",
    "Dinov2WithRegistersModel": "dinov2_with_registers",
    "Dinov2WithRegistersForImageClassification": "dinov2_with_registers",
    "SwinModel": "swin",
    "SwinForImageClassification": "swin",
    "BeitModel": "beit",
    "BeitForImageClassification": "beit",
}
DEFAULT_ARCHITECTURES = {
    "clip": "CLIPModel",
    "clip_vision_model": "CLIPVisionModel",
    "vit": "ViTModel",
    "owlvit": "OwlViTForObjectDetection",
    "vit_mae": "ViTMAEForPreTraining",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "swin": "SwinModel",
    "beit": "BeitModel",
}
# model types refused whatever the architecture, with the reason
UNSUPPORTED_MODEL_TYPES = {
    "owlv2": "OWLv2's objectness head and its preprocessing (padding to a square, anti-aliased resizing) have no "
    "vitlm counterpart",
}
IMAGE_PROCESSORS = (
    "CLIPImageProcessor",
    "ViTImageProcessor",
    "OwlViTImageProcessor",
    "BitImageProcessor",  # DINOv2's
    "BeitImageProcessor",
)
LEGACY_CLIP_EOS_ID = 2  # transformers then pools at argmax(input_ids)
# float32 (vitlm) against float64 (MAE, transformers) evaluation of the sin-cos tables: 4e-6 on a 64x64 grid
SINCOS_TOLERANCE = 1e-4

# weight tables: transformers' names -> vitlm's (see `weights`), one per architecture, built from towers and blocks
CLIP_BLOCK = [  # under one encoder layer
    Rule(("*.self_attn.q_proj.", "*.self_attn.k_proj.", "*.self_attn.v_proj."), "*.attention.qkv."),
    Rule("*.self_attn.out_proj.", "*.attention.proj."),
    Rule("*.layer_norm1.", "*.layer_norm1."),
    Rule("*.layer_norm2.", "*.layer_norm2."),
    Rule("*.mlp.", "*.mlp."),
]
CLIP_VISION = [
    Rule("embeddings.class_embedding", "embeddings.cls_token", leading_dims(2)),
    Rule("embeddings.patch_embedding.weight", "embeddings.stem.projection.weight"),
    Rule("embeddings.position_embedding.weight", "embeddings.position_encoding.position_embeddings", leading_dims(1)),
    Rule("pre_layrnorm.", "pre_layernorm."),
    *nest(CLIP_BLOCK, "encoder.layers.", "encoder.layers."),
    Rule("post_layernorm.", "layernorm."),
]
CLIP_TEXT = [
    Rule("embeddings.token_embedding.weight", "token_embedding.weight"),
    Rule("embeddings.position_embedding.weight", "position_embedding.weight"),
    *nest(CLIP_BLOCK, "encoder.layers.", "encoder.layers."),
    Rule("final_layer_norm.", "final_layer_norm."),
]
CLIP = [
    *nest(CLIP_VISION, "vision_model.", "vision_model."),
    *nest(CLIP_TEXT, "text_model.", "text_model."),
    Rule("visual_projection.weight", "visual_projection.weight"),
    Rule("text_projection.weight", "text_projection.weight"),
    Rule("logit_scale", "logit_scale"),
]
OWLVIT = [
    Rule("owlvit.vision_model.pre_layernorm.", "dual_encoder.vision_model.pre_layernorm."),  # spelled right here
    *nest(CLIP, "owlvit.", "dual_encoder."),
    Rule("layer_norm.", "layer_norm."),  # after merging the [CLS] token into the patch tokens
    Rule("class_head.", "class_head."),
    Rule("box_head.", "box_head."),
]
VIT_BLOCK = [  # under one encoder layer
    Rule(("*.attention.q_proj.", "*.attention.k_proj.", "*.attention.v_proj."), "*.attention.qkv."),
    Rule("*.attention.o_proj.", "*.attention.proj."),
    Rule("*.layernorm_before.", "*.layer_norm1."),
    Rule("*.layernorm_after.", "*.layer_norm2."),
    Rule("*.mlp.", "*.mlp."),
]
VIT = [
    Rule("embeddings.cls_token", "embeddings.cls_token"),
    Rule("embeddings.position_embeddings", "embeddings.position_encoding.position_embeddings"),
    Rule("embeddings.patch_embeddings.projection.", "embeddings.stem.projection."),
    *nest(VIT_BLOCK, "layers.", "encoder.layers."),
    Rule("layernorm.", "layernorm."),
    Rule("pooler.dense.", "pooler.0."),
]
VIT_CLASSIFIER = [*nest(VIT, "vit.", "vit."), Rule("classifier.", "classifier.")]
DINOV2_MLP = {  # under one encoder layer, by vitlm's `mlp_type`
    "mlp": [Rule("*.mlp.", "*.mlp.")],
    # the gate first, as vitlm's fc1 holds it
    "swiglu": [Rule(("*.mlp.gate_proj.", "*.mlp.up_proj."), "*.mlp.fc1."), Rule("*.mlp.down_proj.", "*.mlp.fc2.")],
}
DINOV2_BLOCK = [  # under one encoder layer, with one of DINOV2_MLP
    Rule(("*.attention.q_proj.", "*.attention.k_proj.", "*.attention.v_proj."), "*.attention.qkv."),
    Rule("*.attention.o_proj.", "*.attention.proj."),
    Rule("*.norm1.", "*.layer_norm1."),
    Rule("*.norm2.", "*.layer_norm2."),
    Rule("*.layer_scale1.lambda1", "*.layer_scale1.scale"),
    Rule("*.layer_scale2.lambda1", "*.layer_scale2.scale"),
]
DINOV2_EMBEDDINGS = [
    Rule("embeddings.cls_token", "embeddings.cls_token"),
    Rule("embeddings.register_tokens", "embeddings.register_tokens"),
    Rule("embeddings.position_embeddings", "embeddings.position_encoding.position_embeddings"),
    Rule("embeddings.patch_embeddings.projection.", "embeddings.stem.projection."),
    Rule("layernorm.", "layernorm."),
]


BEIT_BLOCK = [  # under one encoder layer
    Rule(
        ("*.attention.q_proj.weight", "*.attention.k_proj.weight", "*.attention.v_proj.weight"),
        "*.attention.qkv.weight",
    ),
    Rule("*.attention.q_proj.bias", "*.attention.q_bias"),
    Rule("*.attention.v_proj.bias", "*.attention.v_bias"),
    Rule("*.attention.o_proj.", "*.attention.proj."),
    Rule("*.layernorm_before.", "*.layer_norm1."),
    Rule("*.layernorm_after.", "*.layer_norm2."),
    Rule("*.lambda_1", "*.layer_scale1.scale"),
    Rule("*.lambda_2", "*.layer_scale2.scale"),
    Rule("*.relative_position_bias.", "*.relative_position_bias."),
    Rule("*.mlp.", "*.mlp."),
]
BEIT = [
    Rule("embeddings.cls_token", "embeddings.cls_token"),
    Rule("embeddings.mask_token", "embeddings.mask_token"),
    Rule("embeddings.position_embeddings", "embeddings.position_encoding.position_embeddings"),
    Rule("embeddings.patch_embeddings.projection.", "embeddings.stem.projection."),
    Rule("shared_position_bias.", "encoder.relative_position_bias."),
    *nest(BEIT_BLOCK, "layers.", "encoder.layers."),
    Rule("layernorm.", "layernorm."),  # [CLS] pooling: the tokens' final norm
    Rule("pooler.layernorm.", "layernorm."),  # mean pooling: the norm after pooling
]


def dinov2_rules(mlp_type: str) -> list[Rule]:
    """transformers' DINOv2 base model -> vitlm's ViT, but for the mask token (iBOT's masked-token training input, see
    the module docstring), which the converter drops and the export adds."""
    return [*DINOV2_EMBEDDINGS, *nest([*DINOV2_BLOCK, *DINOV2_MLP[mlp_type]], "encoder.layer.", "encoder.layers.")]


# MAE's fixed sin-cos tables, which vitlm computes: `convert_vit_mae` checks them instead of mapping them
MAE_SINCOS_TABLES = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")
VIT_MAE = [
    *(Rule(key, None) for key in MAE_SINCOS_TABLES),
    *nest(VIT, "vit.", "vit."),
    Rule("decoder.decoder_embed.", "decoder_embed."),
    Rule("decoder.mask_token", "mask_token"),
    *nest(VIT_BLOCK, "decoder.decoder_layers.", "decoder.layers."),
    Rule("decoder.decoder_norm.", "decoder_norm."),
    Rule("decoder.decoder_pred.", "decoder_pred."),
]


def swin_rules(num_stages: int) -> list[Rule]:
    """transformers' `SwinModel` names -> vitlm's: transformers merges patches at the end of a stage, vitlm at the
    start of the next one."""
    return [
        Rule("embeddings.patch_embeddings.projection.", "patch_embeddings.projection."),
        Rule("embeddings.norm.", "embedding_norm."),
        Rule(
            (
                "encoder.layers.*.blocks.*.attention.q_proj.",
                "encoder.layers.*.blocks.*.attention.k_proj.",
                "encoder.layers.*.blocks.*.attention.v_proj.",
            ),
            "stages.*.blocks.*.attention.qkv.",
        ),
        Rule("encoder.layers.*.blocks.*.attention.o_proj.", "stages.*.blocks.*.attention.proj."),
        Rule(
            "encoder.layers.*.blocks.*.attention.relative_position_bias.relative_position_bias_table",
            "stages.*.blocks.*.relative_position_bias.relative_position_bias_table",
        ),
        Rule("encoder.layers.*.blocks.*.layernorm_before.", "stages.*.blocks.*.layer_norm1."),
        Rule("encoder.layers.*.blocks.*.layernorm_after.", "stages.*.blocks.*.layer_norm2."),
        Rule("encoder.layers.*.blocks.*.mlp.", "stages.*.blocks.*.mlp."),
        *(Rule(f"encoder.layers.{i}.downsample.", f"stages.{i + 1}.downsample.") for i in range(num_stages - 1)),
        Rule("layernorm.", "layernorm."),
    ]


def swin_classifier_rules(num_stages: int) -> list[Rule]:
    return [*nest(swin_rules(num_stages), "swin.", "swin."), Rule("classifier.", "classifier.")]


def load(spec: str, checkpoint: str | Path | None = None, random_weights: bool = False) -> Converted:
    """Load `spec` (a Hub repo id or a local folder) with transformers and convert it."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    if checkpoint is not None or random_weights:
        raise ValueError(
            "a checkpoint or random weights are for open_clip and timm sources; an hf: source names its weights itself"
        )
    if spec.startswith(("/", ".")) and not Path(spec).is_dir():
        raise FileNotFoundError(f"hf:{spec}: no such folder (a Hub repo id looks like org/name)")
    source = f"hf:{spec}"
    config = AutoConfig.from_pretrained(spec)
    architecture = source_architecture(config, source)
    image_processor = convert_image_processor(AutoImageProcessor.from_pretrained(spec), source)
    if architecture == "CLIPModel":
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = convert_clip(load_source_model(architecture, spec, source), tokenizer, source)
        return Converted(model, VitlmDualEncoderProcessor(image_processor, tokenizer))
    if architecture == "OwlViTForObjectDetection":
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = convert_owlvit(load_source_model(architecture, spec, source), tokenizer, source)
        return Converted(model, VitlmDualEncoderProcessor(image_processor, tokenizer))
    if architecture == "CLIPVisionModel":
        return Converted(convert_clip_vision(load_source_model(architecture, spec, source), source), image_processor)
    if architecture == "ViTMAEForPreTraining":
        return Converted(convert_vit_mae(load_source_model(architecture, spec, source), source), image_processor)
    if architecture.startswith("Dinov2"):
        return Converted(convert_dinov2(load_source_model(architecture, spec, source), source), image_processor)
    if architecture.startswith("Beit"):
        return Converted(convert_beit(load_source_model(architecture, spec, source), source), image_processor)
    if architecture.startswith("Swin"):
        return Converted(convert_swin(load_source_model(architecture, spec, source), source), image_processor)
    return Converted(convert_vit(load_source_model(architecture, spec, source), source), image_processor)


def source_architecture(config, source: str) -> str:
    """The supported transformers class that `config` describes, or an `UnsupportedSourceError`."""
    if config.model_type in UNSUPPORTED_MODEL_TYPES:
        raise UnsupportedSourceError(
            f"{source} is a {config.model_type!r} model: {UNSUPPORTED_MODEL_TYPES[config.model_type]}"
        )
    architectures = getattr(config, "architectures", None) or [DEFAULT_ARCHITECTURES.get(config.model_type)]
    architecture = architectures[0] if len(architectures) == 1 else None
    if ARCHITECTURES.get(architecture) != config.model_type:
        supported = ", ".join(ARCHITECTURES)
        raise UnsupportedSourceError(
            f"{source} is a {config.model_type!r} model ({', '.join(map(str, architectures))}); vitlm converts "
            f"transformers' {supported}"
        )
    return architecture


def load_source_model(architecture: str, spec: str, source: str):
    """The source model, in float32, loaded by transformers from safetensors weights that fill it exactly."""
    import transformers

    try:
        model, info = getattr(transformers, architecture).from_pretrained(
            spec, use_safetensors=True, dtype=torch.float32, output_loading_info=True
        )
    except OSError as error:
        if "safetensors" not in str(error):
            raise
        raise UnsupportedSourceError(
            f"{source} has no safetensors weights: vitlm never unpickles weight files (pytorch_model.bin); convert "
            f"them to safetensors first ({error})"
        ) from error
    # a ViTModel saved without its pooler (add_pooling_layer=False) loads with a random one: convert without it
    missing = {key for key in info["missing_keys"] if not (architecture == "ViTModel" and key.startswith("pooler."))}
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise UnsupportedSourceError(
            f"{source}: transformers' {architecture} does not hold these weights exactly (missing "
            f"{sorted(missing)[:5]}, unused {sorted(info['unexpected_keys'])[:5]}, shape mismatches "
            f"{sorted(info['mismatched_keys'])[:5]})"
        )
    if architecture == "ViTModel" and info["missing_keys"]:
        model.pooler = None
    return model.eval()


def convert_clip(model, tokenizer, source: str = "transformers CLIPModel") -> VitlmDualEncoderModel:
    """A transformers `CLIPModel` as a vitlm dual encoder; `tokenizer` is the repo's, read for legacy configs."""
    config = VitlmDualEncoderConfig(
        vision_config=clip_vision_config(model.config.vision_config, source),
        text_config=clip_text_config(model.config.text_config, tokenizer, source),
        projection_dim=model.config.projection_dim,
        logit_scale_init_value=model.config.logit_scale_init_value,
    )
    return load_weights(uninitialized(VitlmDualEncoderModel, config), model.state_dict(), CLIP, source)


def convert_owlvit(
    model, tokenizer, source: str = "transformers OwlViTForObjectDetection"
) -> VitlmDualEncoderForObjectDetection:
    """A transformers `OwlViTForObjectDetection` as a vitlm detection model; `tokenizer` is the repo's."""
    config = model.config
    if config.text_config.hidden_size != config.projection_dim:
        # the class head embeds image tokens at the text width, compared with projected text: equal in OWL-ViT's models
        raise UnsupportedSourceError(
            f"{source}: a class head of width {config.text_config.hidden_size} (the text hidden size) while queries "
            f"are projected to {config.projection_dim} (vitlm's class head outputs projection_dim)"
        )
    vitlm_config = VitlmDualEncoderConfig(
        vision_config=clip_vision_config(config.vision_config, source),
        text_config=clip_text_config(
            config.text_config, tokenizer, source, argmax_pooling="OWL-ViT's text pooling at the highest token id"
        ),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )
    return load_weights(
        uninitialized(VitlmDualEncoderForObjectDetection, vitlm_config), model.state_dict(), OWLVIT, source
    )


def convert_vit_mae(model, source: str = "transformers ViTMAEForPreTraining") -> VitlmViTForMaskedImageModeling:
    """A transformers `ViTMAEForPreTraining` as a vitlm masked-image-modeling model."""
    config = model.config
    decoder_shape = {
        "decoder_hidden_size": config.decoder_hidden_size,
        "decoder_num_hidden_layers": config.decoder_num_hidden_layers,
        "decoder_num_attention_heads": config.decoder_num_attention_heads,
        "decoder_intermediate_size": config.decoder_intermediate_size,
    }
    # transformers' decoder copies the encoder's config, head_dim included
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.decoder_num_attention_heads != config.decoder_hidden_size:
        raise UnsupportedSourceError(
            f"{source}: a head_dim of {head_dim} with {config.decoder_num_attention_heads} decoder heads and "
            f"decoder_hidden_size {config.decoder_hidden_size} (vitlm splits it evenly among the heads)"
        )
    vitlm_config = VitlmViTMAEConfig.from_encoder_config(
        vit_config(config, pooler=False, source=source, position_embedding_type="sincos2d"),
        mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss,
        **decoder_shape,
    )
    state_dict = model.state_dict()
    for key in MAE_SINCOS_TABLES:
        check_sincos_table(state_dict[key], vitlm_config.grid_size, key.rpartition(".")[2], source)
    return load_weights(uninitialized(VitlmViTForMaskedImageModeling, vitlm_config), state_dict, VIT_MAE, source)


def check_sincos_table(table: torch.Tensor, grid_size: tuple[int, int], name: str, source: str):
    """Refuse a stored MAE position table unless it is what vitlm computes: zeros for [CLS], then the 2D sin-cos
    table of the patch grid."""
    width = table.shape[-1]
    ys, xs = (grid_positions(length, None, table.device) for length in grid_size)
    expected = torch.cat([table.new_zeros(1, width), sincos_2d_position_embeddings(width, ys, xs)])[None]
    if table.shape != expected.shape or (table.float() - expected).abs().max() > SINCOS_TOLERANCE:
        raise UnsupportedSourceError(
            f"{source}: `{name}` is not MAE's fixed 2D sin-cos table (with zeros for [CLS]), which vitlm computes "
            "instead of storing; a trained, altered or zero table has no vitlm counterpart"
        )


def convert_clip_vision(model, source: str = "transformers CLIPVisionModel") -> VitlmViTModel:
    """A transformers `CLIPVisionModel` as a vitlm ViT (see the module docstring on `last_hidden_state`)."""
    config = clip_vision_config(model.config, source)
    return load_weights(uninitialized(VitlmViTModel, config), model.state_dict(), CLIP_VISION, source)


def convert_vit(model, source: str = "transformers ViT") -> VitlmViTModel | VitlmViTForImageClassification:
    """A transformers `ViTModel` (with or without pooler) or `ViTForImageClassification` as its vitlm counterpart."""
    classifier = type(model).__name__ == "ViTForImageClassification"
    base = model.vit if classifier else model
    config = vit_config(model.config, pooler=base.pooler is not None, source=source)
    vitlm_model = uninitialized(VitlmViTForImageClassification if classifier else VitlmViTModel, config)
    return load_weights(vitlm_model, model.state_dict(), VIT_CLASSIFIER if classifier else VIT, source)


def convert_dinov2(model, source: str = "transformers DINOv2") -> VitlmViTModel | VitlmViTForImageClassification:
    """A transformers `Dinov2Model` / `Dinov2WithRegistersModel` or their image classifiers as vitlm ViTs."""
    classifier = type(model).__name__.endswith("ForImageClassification")
    config = model.config
    intermediate_size = int(config.hidden_size * config.mlp_ratio)
    if config.use_swiglu_ffn:  # two thirds of the MLP width, rounded up to a multiple of 8, as transformers builds it
        intermediate_size = (int(intermediate_size * 2 / 3) + 7) // 8 * 8
    vitlm_config = vit_config(
        config,
        pooler=False,
        source=source,
        intermediate_size=intermediate_size,
        hidden_act="silu" if config.use_swiglu_ffn else config.hidden_act,
        mlp_type="swiglu" if config.use_swiglu_ffn else "mlp",
        layerscale_value=config.layerscale_value,
        num_register_tokens=getattr(config, "num_register_tokens", 0),
        # transformers resizes the position table of DINOv2 with registers antialiased, of DINOv2 without not
        interpolate_antialias=config.model_type == "dinov2_with_registers",
        drop_path_rate=config.drop_path_rate,
        pooling="cls_mean" if classifier else "cls",
    )
    rules = [Rule("embeddings.mask_token", None), *dinov2_rules(vitlm_config.mlp_type)]
    if classifier:
        rules = [*nest(rules, model.base_model_prefix + ".", "vit."), Rule("classifier.", "classifier.")]
    vitlm_model = uninitialized(VitlmViTForImageClassification if classifier else VitlmViTModel, vitlm_config)
    return load_weights(vitlm_model, model.state_dict(), rules, source)


def convert_swin(model, source: str = "transformers Swin") -> VitlmSwinModel | VitlmSwinForImageClassification:
    """A transformers `SwinModel` or `SwinForImageClassification` as its vitlm counterpart."""
    classifier = type(model).__name__ == "SwinForImageClassification"
    config = swin_config(model.config, source)
    vitlm_model = uninitialized(VitlmSwinForImageClassification if classifier else VitlmSwinModel, config)
    rules = (swin_classifier_rules if classifier else swin_rules)(len(config.depths))
    return load_weights(vitlm_model, model.state_dict(), rules, source)


def swin_config(config, source: str) -> VitlmSwinConfig:
    if config.use_absolute_embeddings:
        raise UnsupportedSourceError(f"{source}: absolute position embeddings (use_absolute_embeddings=True)")
    patch_size = config.patch_size if isinstance(config.patch_size, int) else list(config.patch_size)
    if not isinstance(patch_size, int):
        if len(set(patch_size)) != 1:
            raise UnsupportedSourceError(f"{source}: non-square patches {patch_size}")
        patch_size = patch_size[0]
    try:
        return VitlmSwinConfig(
            image_size=config.image_size if isinstance(config.image_size, int) else list(config.image_size),
            patch_size=patch_size,
            num_channels=config.num_channels,
            embed_dim=config.embed_dim,
            depths=list(config.depths),
            num_heads=list(config.num_heads),
            window_size=config.window_size,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=config.qkv_bias,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            drop_path_rate=config.drop_path_rate,
            initializer_range=config.initializer_range,
            id2label=config.id2label,
            label2id=config.label2id,
            problem_type=config.problem_type,
        )
    except ValueError as error:
        raise UnsupportedSourceError(f"{source}: {error}") from error


def convert_beit(model, source: str = "transformers BEiT") -> VitlmViTModel | VitlmViTForImageClassification:
    """A transformers `BeitModel` (with its pooler) or `BeitForImageClassification` as its vitlm counterpart."""
    classifier = type(model).__name__ == "BeitForImageClassification"
    config = model.config
    base = model.beit if classifier else model
    if base.pooler is None:
        raise UnsupportedSourceError(f"{source}: a BeitModel without its pooler (add_pooling_layer=False)")
    if config.use_relative_position_bias and config.use_shared_relative_position_bias:
        raise UnsupportedSourceError(f"{source}: both a shared and a per-layer relative position bias")
    relative = "per_layer" if config.use_relative_position_bias else "none"
    relative = "shared" if config.use_shared_relative_position_bias else relative
    try:
        vitlm_config = vit_config(
            config,
            pooler=False,
            source=source,
            qkv_bias=True,  # transformers' BEiT biases queries and values, never keys
            key_bias=False,
            position_embedding_type="learned" if config.use_absolute_position_embeddings else "none",
            relative_position_bias=relative,
            layerscale_value=config.layer_scale_init_value if config.layer_scale_init_value > 0 else None,
            pooling="mean" if config.use_mean_pooling else "cls",
            norm_after_pooling=config.use_mean_pooling,
            use_mask_token=config.use_mask_token,
            drop_path_rate=config.drop_path_rate,
        )
    except ValueError as error:
        raise UnsupportedSourceError(f"{source}: {error}") from error
    rules = [*nest(BEIT, "beit.", "vit."), Rule("classifier.", "classifier.")] if classifier else BEIT
    vitlm_model = uninitialized(VitlmViTForImageClassification if classifier else VitlmViTModel, vitlm_config)
    return load_weights(vitlm_model, model.state_dict(), rules, source)


def clip_vision_config(config, source: str) -> VitlmViTConfig:
    if not isinstance(config.image_size, int) or not isinstance(config.patch_size, int):
        raise UnsupportedSourceError(
            f"{source}: non-square image or patch size ({config.image_size}, {config.patch_size}); transformers' CLIP "
            "itself assumes square ones"
        )
    return VitlmViTConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        patch_bias=False,
        pre_norm=True,
        attention_probs_dropout_prob=config.attention_dropout,
        initializer_range=config.initializer_range,
        **_encoder_config(config, source),
    )


def clip_text_config(config, tokenizer, source: str, argmax_pooling: str | None = None) -> VitlmTextConfig:
    """`argmax_pooling` names a text tower that pools at the highest token id whatever the config says (OWL-ViT)."""
    special_ids = {name: getattr(config, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if argmax_pooling is None and special_ids["eos_token_id"] == LEGACY_CLIP_EOS_ID:
        argmax_pooling = "legacy text pooling at the highest token id (config eos_token_id 2)"
    if argmax_pooling is not None:
        # transformers pools at argmax(input_ids): the first end-of-text token only if that is the vocabulary's last
        if tokenizer.eos_token_id != config.vocab_size - 1:
            raise UnsupportedSourceError(
                f"{source}: {argmax_pooling}, while the tokenizer's end-of-text id {tokenizer.eos_token_id} is not "
                f"the vocabulary's last ({config.vocab_size - 1})"
            )
        special_ids = {name: getattr(tokenizer, name) for name in special_ids}
    elif not isinstance(special_ids["eos_token_id"], int):
        raise UnsupportedSourceError(
            f"{source}: text pooling at several end-of-text ids {special_ids['eos_token_id']}"
        )
    return VitlmTextConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        attention_probs_dropout_prob=config.attention_dropout,
        initializer_range=config.initializer_range,
        **_encoder_config(config, source),
        **special_ids,
    )


def vit_config(config, pooler: bool, source: str, **extra) -> VitlmViTConfig:
    """`extra`: further VitlmViTConfig fields."""
    patch_size = config.patch_size
    if not isinstance(patch_size, int):
        if len(set(patch_size)) != 1:
            raise UnsupportedSourceError(f"{source}: non-square patches {patch_size}")
        patch_size = patch_size[0]
    if pooler and config.pooler_act != "tanh":
        raise UnsupportedSourceError(f"{source}: a pooler with {config.pooler_act!r} activation (vitlm's uses tanh)")
    return VitlmViTConfig(
        image_size=config.image_size if isinstance(config.image_size, int) else list(config.image_size),
        patch_size=patch_size,
        num_channels=config.num_channels,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        representation_size=config.pooler_output_size if pooler else None,
        initializer_range=config.initializer_range,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
        # BEiT's config has no `qkv_bias` (its converter passes the biases it has)
        **{**_encoder_config(config, source, qkv_bias=getattr(config, "qkv_bias", True)), **extra},
    )


def _encoder_config(config, source: str, qkv_bias: bool = True) -> dict:
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.num_attention_heads != config.hidden_size:
        raise UnsupportedSourceError(
            f"{source}: a head_dim of {head_dim} with {config.num_attention_heads} heads and hidden_size "
            f"{config.hidden_size} (vitlm splits hidden_size evenly among the heads)"
        )
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        # DINOv2's configs derive it from `mlp_ratio`: its converter passes it (a None left here is refused)
        "intermediate_size": getattr(config, "intermediate_size", None),
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "qkv_bias": qkv_bias,
    }


def convert_image_processor(processor, source: str = "transformers image processor") -> VitlmImageProcessor:
    """A transformers `CLIPImageProcessor` or `ViTImageProcessor` (either backend) as a vitlm image processor."""
    name = type(processor).__name__.removesuffix("Pil")
    size = {key: value for key, value in dict(processor.size or {}).items() if value is not None}
    problems = [] if name in IMAGE_PROCESSORS else [f"a {name}"]
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        problems.append(f"resizing to {size}")
    if getattr(processor, "do_pad", False):
        problems.append("padding (do_pad)")
    if problems:
        raise UnsupportedSourceError(f"{source}: vitlm's image processor cannot do {'; '.join(problems)}")
    crop_size = {key: value for key, value in dict(processor.crop_size or {}).items() if value is not None}
    return VitlmImageProcessor(
        do_resize=bool(processor.do_resize),
        size=size,
        resample=PIL.Image.Resampling(int(processor.resample)),
        do_center_crop=bool(processor.do_center_crop),
        crop_size=crop_size or None,
        crop_rounding="floor",
        do_rescale=bool(processor.do_rescale),
        rescale_factor=processor.rescale_factor,
        do_normalize=bool(processor.do_normalize),
        image_mean=processor.image_mean,
        image_std=processor.image_std,
        # Converting is a no-op on the RGB images that transformers' models accept (without it, a gray or RGBA image
        # would reach the model with 1 or 4 channels and fail there).
        do_convert_rgb=True,
    )
