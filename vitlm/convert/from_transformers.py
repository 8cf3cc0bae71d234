"""transformers -> vitlm: CLIP and ViT models as transformers itself builds them.

A spec is what follows `hf:` in a source: a Hub repo id (`openai/clip-vit-base-patch32`) or a local folder.
transformers' own `from_pretrained` reads the weights (safetensors only) and its Auto classes the processor, so legacy
weight names and config fields are settled by transformers; this module then translates the config and maps the
state dict. `to_transformers` goes the other way with the same weight tables.

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
from tqdm.auto import tqdm

from ..models import (
    VitlmDualEncoderConfig,
    VitlmDualEncoderForObjectDetection,
    VitlmDualEncoderModel,
    VitlmDualEncoderProcessor,
    VitlmImageProcessor,
    VitlmTextConfig,
    VitlmViTConfig,
    VitlmViTForImageClassification,
    VitlmViTForMaskedImageModeling,
    VitlmViTMAEConfig,
    VitlmViTModel,
)
from ..models.layers import grid_positions, sincos_2d_position_embeddings
from . import Converted, UnsupportedSourceError, load_converted_state_dict, uninitialized

# architecture -> the model_type its config must have
ARCHITECTURES = {
    "CLIPModel": "clip",
    "CLIPVisionModel": "clip_vision_model",
    "ViTModel": "vit",
    "ViTForImageClassification": "vit",
    "OwlViTForObjectDetection": "owlvit",
    "ViTMAEForPreTraining": "vit_mae",
}
DEFAULT_ARCHITECTURES = {
    "clip": "CLIPModel",
    "clip_vision_model": "CLIPVisionModel",
    "vit": "ViTModel",
    "owlvit": "OwlViTForObjectDetection",
    "vit_mae": "ViTMAEForPreTraining",
}
# model types refused whatever the architecture, with the reason
UNSUPPORTED_MODEL_TYPES = {
    "owlv2": "OWLv2's objectness head and its preprocessing (padding to a square, anti-aliased resizing) have no "
    "vitlm counterpart",
}
IMAGE_PROCESSORS = ("CLIPImageProcessor", "ViTImageProcessor", "OwlViTImageProcessor")
LEGACY_CLIP_EOS_ID = 2  # transformers then pools at argmax(input_ids)
# float32 (vitlm) against float64 (MAE, transformers) evaluation of the sin-cos tables: 4e-6 on a 64x64 grid
SINCOS_TOLERANCE = 1e-4

# A weight table lists (vitlm name, transformers names, leading dims): the transformers tensors, concatenated along
# dim 0 (q, k, v into vitlm's fused qkv), gain `leading dims` singleton dimensions in front to become vitlm's.
KeyMap = list[tuple[str, tuple[str, ...], int]]

CLIP_BLOCK = {
    "attention.proj": "self_attn.out_proj",
    "layer_norm1": "layer_norm1",
    "layer_norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
CLIP_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
VIT_BLOCK = {
    "attention.proj": "attention.o_proj",
    "layer_norm1": "layernorm_before",
    "layer_norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
VIT_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")


def load(spec: str, checkpoint: str | Path | None = None) -> Converted:
    """Load `spec` (a Hub repo id or a local folder) with transformers and convert it."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    if checkpoint is not None:
        raise ValueError("`checkpoint` is for open_clip and timm sources; an hf: source names its folder itself")
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
    key_map = clip_key_map(model.config.vision_config.num_hidden_layers, model.config.text_config.num_hidden_layers)
    state_dict = map_state_dict(model.state_dict(), key_map, source)
    return load_converted_state_dict(uninitialized(VitlmDualEncoderModel, config), state_dict, source)


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
    key_map = [
        *clip_key_map(
            config.vision_config.num_hidden_layers,
            config.text_config.num_hidden_layers,
            ours="dual_encoder.",
            theirs="owlvit.",
            pre_layernorm="pre_layernorm",
        ),
        *_params("layer_norm", "layer_norm"),
    ]
    for head, layers in (
        ("class_head", ("dense0", "logit_shift", "logit_scale")),
        ("box_head", ("dense0", "dense1", "dense2")),
    ):
        key_map += [entry for layer in layers for entry in _params(f"{head}.{layer}", f"{head}.{layer}")]
    state_dict = map_state_dict(model.state_dict(), key_map, source)
    return load_converted_state_dict(
        uninitialized(VitlmDualEncoderForObjectDetection, vitlm_config), state_dict, source
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
    state_dict = dict(model.state_dict())
    grid_size = vitlm_config.grid_size
    check_sincos_table(state_dict.pop("vit.embeddings.position_embeddings"), grid_size, "position_embeddings", source)
    check_sincos_table(state_dict.pop("decoder.decoder_pos_embed"), grid_size, "decoder_pos_embed", source)
    key_map = [
        *vit_key_map(vitlm_config.num_hidden_layers, "vit.", "vit.", False, vitlm_config.qkv_bias, learned=False),
        *_params("decoder_embed", "decoder.decoder_embed"),
        ("mask_token", ("decoder.mask_token",), 0),
        *encoder_key_map(
            "decoder.layers.",
            "decoder.decoder_layers.",
            config.decoder_num_hidden_layers,
            VIT_BLOCK,
            VIT_QKV,
            vitlm_config.qkv_bias,
        ),
        *_params("decoder_norm", "decoder.decoder_norm"),
        *_params("decoder_pred", "decoder.decoder_pred"),
    ]
    state_dict = map_state_dict(state_dict, key_map, source)
    return load_converted_state_dict(uninitialized(VitlmViTForMaskedImageModeling, vitlm_config), state_dict, source)


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
    state_dict = map_state_dict(model.state_dict(), clip_vision_key_map(config.num_hidden_layers, "", ""), source)
    return load_converted_state_dict(uninitialized(VitlmViTModel, config), state_dict, source)


def convert_vit(model, source: str = "transformers ViT") -> VitlmViTModel | VitlmViTForImageClassification:
    """A transformers `ViTModel` (with or without pooler) or `ViTForImageClassification` as its vitlm counterpart."""
    classifier = type(model).__name__ == "ViTForImageClassification"
    base = model.vit if classifier else model
    config = vit_config(model.config, pooler=base.pooler is not None, source=source)
    prefix = "vit." if classifier else ""
    key_map = vit_key_map(config.num_hidden_layers, prefix, prefix, base.pooler is not None, config.qkv_bias)
    if classifier and config.num_labels > 0:
        key_map += _params("classifier", "classifier")
    vitlm_model = uninitialized(VitlmViTForImageClassification if classifier else VitlmViTModel, config)
    return load_converted_state_dict(vitlm_model, map_state_dict(model.state_dict(), key_map, source), source)


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
        **_encoder_config(config, source, qkv_bias=config.qkv_bias),
        **extra,
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
        "intermediate_size": config.intermediate_size,
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


def _params(ours: str, theirs: str, names: tuple[str, ...] = ("weight", "bias")) -> KeyMap:
    return [(f"{ours}.{name}", (f"{theirs}.{name}",), 0) for name in names]


def encoder_key_map(ours: str, theirs: str, num_layers: int, block: dict, qkv: tuple, qkv_bias: bool) -> KeyMap:
    key_map = []
    for index in range(num_layers):
        our_layer, their_layer = f"{ours}{index}.", f"{theirs}{index}."
        for name in ("weight", "bias") if qkv_bias else ("weight",):
            key_map.append((f"{our_layer}attention.qkv.{name}", tuple(f"{their_layer}{p}.{name}" for p in qkv), 0))
        for our_name, their_name in block.items():
            key_map += _params(our_layer + our_name, their_layer + their_name)
    return key_map


def clip_vision_key_map(
    num_layers: int, ours: str = "vision_model.", theirs: str = "vision_model.", pre_layernorm: str = "pre_layrnorm"
) -> KeyMap:
    return [
        (f"{ours}embeddings.cls_token", (f"{theirs}embeddings.class_embedding",), 2),
        (f"{ours}embeddings.stem.projection.weight", (f"{theirs}embeddings.patch_embedding.weight",), 0),
        (
            f"{ours}embeddings.position_encoding.position_embeddings",
            (f"{theirs}embeddings.position_embedding.weight",),
            1,
        ),
        *_params(f"{ours}pre_layernorm", f"{theirs}{pre_layernorm}"),
        *encoder_key_map(f"{ours}encoder.layers.", f"{theirs}encoder.layers.", num_layers, CLIP_BLOCK, CLIP_QKV, True),
        *_params(f"{ours}layernorm", f"{theirs}post_layernorm"),
    ]


def clip_key_map(
    vision_layers: int, text_layers: int, ours: str = "", theirs: str = "", pre_layernorm: str = "pre_layrnorm"
) -> KeyMap:
    """CLIP's weights, under `ours` and `theirs` prefixes (OWL-ViT nests them; its pre-LayerNorm name is spelled
    right)."""
    text_ours, text_theirs = f"{ours}text_model.", f"{theirs}text_model."
    return [
        *clip_vision_key_map(vision_layers, f"{ours}vision_model.", f"{theirs}vision_model.", pre_layernorm),
        (f"{text_ours}token_embedding.weight", (f"{text_theirs}embeddings.token_embedding.weight",), 0),
        (f"{text_ours}position_embedding.weight", (f"{text_theirs}embeddings.position_embedding.weight",), 0),
        *encoder_key_map(
            f"{text_ours}encoder.layers.", f"{text_theirs}encoder.layers.", text_layers, CLIP_BLOCK, CLIP_QKV, True
        ),
        *_params(f"{text_ours}final_layer_norm", f"{text_theirs}final_layer_norm"),
        (f"{ours}visual_projection.weight", (f"{theirs}visual_projection.weight",), 0),
        (f"{ours}text_projection.weight", (f"{theirs}text_projection.weight",), 0),
        (f"{ours}logit_scale", (f"{theirs}logit_scale",), 0),
    ]


def vit_key_map(
    num_layers: int, ours: str, theirs: str, pooler: bool, qkv_bias: bool = True, learned: bool = True
) -> KeyMap:
    """`learned=False` leaves out the position table (MAE's fixed one, which vitlm computes)."""
    position = (
        f"{ours}embeddings.position_encoding.position_embeddings",
        (f"{theirs}embeddings.position_embeddings",),
        0,
    )
    return [
        (f"{ours}embeddings.cls_token", (f"{theirs}embeddings.cls_token",), 0),
        *([position] if learned else []),
        *_params(f"{ours}embeddings.stem.projection", f"{theirs}embeddings.patch_embeddings.projection"),
        *encoder_key_map(f"{ours}encoder.layers.", f"{theirs}layers.", num_layers, VIT_BLOCK, VIT_QKV, qkv_bias),
        *_params(f"{ours}layernorm", f"{theirs}layernorm"),
        *(_params(f"{ours}pooler.0", f"{theirs}pooler.dense") if pooler else []),
    ]


def map_state_dict(state_dict: dict[str, torch.Tensor], key_map: KeyMap, source: str) -> dict[str, torch.Tensor]:
    """transformers' weights under vitlm's names, refusing any weight the table leaves out."""
    unused = sorted(set(state_dict) - {key for _, keys, _ in key_map for key in keys})
    if unused:
        raise UnsupportedSourceError(f"{source}: weights without a vitlm counterpart: {unused[:5]}")
    converted = {}
    for ours, theirs, leading_dims in tqdm(key_map, desc=f"Mapping {source} weights", unit="tensor"):
        tensor = torch.cat([state_dict[key] for key in theirs]) if len(theirs) > 1 else state_dict[theirs[0]]
        converted[ours] = tensor[(None,) * leading_dims]
    return converted


def unmap_state_dict(state_dict: dict[str, torch.Tensor], key_map: KeyMap) -> dict[str, torch.Tensor]:
    """The inverse of `map_state_dict`: vitlm's weights under transformers' names."""
    converted = {}
    for ours, theirs, leading_dims in tqdm(key_map, desc="Mapping vitlm weights", unit="tensor"):
        tensor = state_dict[ours]
        tensor = tensor.reshape(tensor.shape[leading_dims:])
        converted.update(zip(theirs, tensor.chunk(len(theirs)) if len(theirs) > 1 else [tensor]))
    return converted
