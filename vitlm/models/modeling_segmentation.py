"""Semantic segmentation heads. Segmenter (Strudel et al., 2021) over an image tower: per-patch class logits from a
linear decoder or from the mask transformer (learned class embeddings processed jointly with the patch tokens).
Open-vocabulary segmentation over a dual encoder: every cell of the token grid scored against text queries (its token
projected as the image embedding is, MaskCLIP, plus a learned correction), with a "nothing" logit of 0 as the
background. Both return logits on the last token grid (split into sub-patches where configured); the image processor's
`post_process_semantic_segmentation` upsamples them to the images' pixels."""

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SemanticSegmenterOutput
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_vitlm import VitlmDualEncoderConfig, VitlmSegmenterConfig
from .layers import VitlmEncoder
from .modeling_detection import VitlmDualEncoderPatchQueryModel, unit
from .modeling_dual_encoder import VISION_MODEL_CLASSES, VitlmDualEncoderModel
from .modeling_vit import VitlmPreTrainedModel

# label-map value of pixels the loss ignores (transformers' `semantic_loss_ignore_index`)
IGNORE_INDEX = 255
# the mask transformer's initial temperature on its cosine scores (CLIP's 1 / 0.07, about 14)
MASK_SCALE_INIT = 1 / 0.07
# the open-vocabulary head labels each token's 2 x 2 sub-cells (`VitlmSubPatchSplit`); a dual encoder's config holds no
# field of a head
OPEN_VOCABULARY_SUBPATCH_FACTOR = 2


def semantic_segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of (batch, classes, grid_height, grid_width) logits, bilinearly upsampled to the
    (batch, height, width) label maps; pixels labelled `IGNORE_INDEX` are left out."""
    if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"`labels` must be (batch, height, width) label maps for the {logits.shape[0]} images, got shape "
            f"{tuple(labels.shape)}"
        )
    labels = labels.long()
    valid = labels[labels != IGNORE_INDEX]
    if valid.numel() and (valid.min() < 0 or valid.max() >= logits.shape[1]):
        raise ValueError(
            f"`labels` hold class {int(valid.max() if valid.max() >= logits.shape[1] else valid.min())}, outside "
            f"0 .. {logits.shape[1] - 1} (or {IGNORE_INDEX}, ignored)"
        )
    upsampled = nn.functional.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return nn.functional.cross_entropy(upsampled, labels, ignore_index=IGNORE_INDEX)


class VitlmSubPatchSplit(nn.Module):
    """Splits every token of a (batch, height, width, width) grid into `factor` x `factor` sub-tokens by a linear map
    (a learned pixel shuffle, as SETR's progressive upsampling learns it), so that a head labels cells smaller than
    the tower's patches: bilinear upsampling of patch logits cannot place a boundary inside a patch. Initialized so
    that every sub-token equals its token."""

    def __init__(self, width: int, factor: int):
        super().__init__()
        self.factor = factor
        # parameters of its own, not an nn.Linear, which the models' weight init would draw at random afterwards
        self.weight = nn.Parameter(torch.empty(factor * factor * width, width))
        self.bias = nn.Parameter(torch.empty(factor * factor * width))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        batch_size, height, width, channels = grid.shape
        factor = self.factor
        split = nn.functional.linear(grid, self.weight, self.bias).reshape(
            batch_size, height, width, factor, factor, channels
        )
        return split.permute(0, 1, 3, 2, 4, 5).reshape(batch_size, height * factor, width * factor, channels)


@torch.no_grad()
def init_subpatch_split(module: VitlmSubPatchSplit):
    width = module.weight.shape[1]
    init.copy_(module.weight, torch.eye(width, device=module.weight.device).repeat(module.factor**2, 1))
    init.zeros_(module.bias)


class VitlmMaskTransformer(nn.Module):
    """Segmenter's mask transformer: one learned embedding per class joins the patch tokens through a few blocks;
    each patch's class scores are the cosines of its projected embedding with the projected class embeddings, scaled
    and shifted per class. (Segmenter normalizes the scores over the classes with a LayerNorm instead; dividing by
    their spread, which is tiny at initialization, magnifies rounding differences between attention back-ends by
    orders of magnitude, where a learned scale starts as a plain temperature.)"""

    def __init__(self, config: VitlmSegmenterConfig):
        super().__init__()
        self.decoder_config = config.decoder_config()
        width = self.decoder_config.hidden_size
        self.input_projection = nn.Linear(width, width)
        self.class_embeddings = nn.Parameter(torch.zeros(1, config.num_labels, width))
        self.blocks = VitlmEncoder(self.decoder_config)
        self.norm = nn.LayerNorm(width, eps=self.decoder_config.layer_norm_eps)
        self.patch_projection = nn.Linear(width, width, bias=False)
        self.class_projection = nn.Linear(width, width, bias=False)
        self.mask_scale = nn.Parameter(torch.empty(config.num_labels))
        self.mask_bias = nn.Parameter(torch.empty(config.num_labels))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(batch, patches, width) -> (batch, patches, classes)."""
        num_patches = patches.shape[1]
        classes = self.class_embeddings.expand(patches.shape[0], -1, -1).to(patches.dtype)
        hidden_states = torch.cat([self.input_projection(patches), classes], dim=1)
        hidden_states = self.norm(self.blocks(hidden_states).last_hidden_state)
        patch_embeds = nn.functional.normalize(self.patch_projection(hidden_states[:, :num_patches]), dim=-1)
        class_embeds = nn.functional.normalize(self.class_projection(hidden_states[:, num_patches:]), dim=-1)
        return patch_embeds @ class_embeds.transpose(1, 2) * self.mask_scale + self.mask_bias


class VitlmViTForSemanticSegmentation(VitlmPreTrainedModel):
    """Segmenter over a ViT, hybrid, PiT or Swin tower (`config.vision_config`): the tower's final patch tokens (a
    hierarchical tower's last stage; prefix tokens dropped) go through the decoder `config.decoder_type` chooses.
    `logits` are (batch, num_labels, grid_height, grid_width); with `labels` ((batch, height, width) class maps, 255
    ignored) the loss is the per-pixel cross-entropy of the logits upsampled to the labels' size."""

    config_class = VitlmSegmenterConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    pipeline_tag = "image-segmentation"
    _remote_auto_map = {
        "AutoModelForSemanticSegmentation": "modeling_segmentation.VitlmViTForSemanticSegmentation",
    }

    def __init__(self, config: VitlmSegmenterConfig):
        super().__init__(config)
        self.vit = VISION_MODEL_CLASSES[config.vision_config.model_type](config.vision_config)
        width = config.vision_config.hidden_size
        factor = config.subpatch_factor
        self.subpatch_split = VitlmSubPatchSplit(width, factor) if factor > 1 else None
        self.decoder = (
            nn.Linear(width, config.num_labels) if config.decoder_type == "linear" else VitlmMaskTransformer(config)
        )
        self.post_init()

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        if isinstance(self.decoder, VitlmMaskTransformer):
            # the decoder's config is derived from this one, not a sub-config transformers knows of
            self.decoder.decoder_config._attn_implementation_internal = self.config._attn_implementation

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VitlmSubPatchSplit):
            init_subpatch_split(module)
        if isinstance(module, VitlmMaskTransformer):
            init.trunc_normal_(module.class_embeddings, std=self.config.initializer_range)
            init.constant_(module.mask_scale, MASK_SCALE_INIT)
            init.zeros_(module.mask_bias)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*): class per pixel, 255 for
            pixels to ignore.
        interpolate_pos_encoding (`bool`): run at a resolution other than the configured one.
        """
        outputs = self.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs)
        vision_config = self.config.vision_config
        patches = outputs.last_hidden_state[:, vision_config.num_prefix_tokens :]
        grid = vision_config.output_grid(*pixel_values.shape[-2:])
        if self.subpatch_split is not None:
            patches = self.subpatch_split(patches.reshape(patches.shape[0], *grid, -1))
            grid = patches.shape[1:3]
            patches = patches.flatten(1, 2)
        logits = self.decoder(patches).transpose(1, 2).reshape(patches.shape[0], -1, *grid)
        loss = semantic_segmentation_loss(logits, labels) if labels is not None else None
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@dataclass
class VitlmOpenVocabularySegmenterOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): per-pixel cross-entropy over the background and the queries.
    logits (`torch.FloatTensor` of shape `(batch_size, 1 + num_queries, grid_height, grid_width)`): channel 0 the
        background ("nothing", a constant 0: a patch belongs to a query whose logit is above it), then one channel
        per query.
    query_embeds (`torch.FloatTensor` of shape `(batch_size, num_queries, projection_dim)`): the queries.
    vision_model_output, text_model_output: the towers' outputs (text only for text queries).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(v.to_tuple() if k.endswith("_model_output") else v for k, v in self.items())


class VitlmDualEncoderForSemanticSegmentation(VitlmDualEncoderPatchQueryModel):
    """Open-vocabulary segmentation on a dual encoder: each cell of the token grid split 2 x 2 gets a class embedding,
    its token projected into the shared space as the image embedding is (MaskCLIP) plus a learned correction from the
    detector's per-token features split into sub-tokens (`VitlmSubPatchSplit`), scored against text queries as the
    dual encoder scores images (temperature times cosine), then shifted and scaled per cell by the detector's class
    head; a patch is background unless a query's logit
    exceeds 0. Fine-tunes on label maps whose class k > 0 is query k - 1. Segment any labels with the processor:

        >>> inputs = processor(images=image, text=[template.format(label) for label in labels], return_tensors="pt")
        >>> outputs = model(**inputs)
        >>> label_map = processor.image_processor.post_process_semantic_segmentation(
        ...     outputs, target_sizes=[image.size[::-1]])[0]  # 0: background, k: labels[k - 1]
    """

    pipeline_tag = "image-segmentation"
    _remote_auto_map = {
        **VitlmDualEncoderModel._remote_auto_map,
        "AutoModelForSemanticSegmentation": "modeling_segmentation.VitlmDualEncoderForSemanticSegmentation",
    }

    def __init__(self, config: VitlmDualEncoderConfig):
        super().__init__(config)
        if self.dual_encoder.vision_model.pooled_size != config.vision_config.hidden_size:
            raise ValueError(
                "open-vocabulary segmentation projects each token as the image embedding is projected: it needs a "
                "tower whose pooled output is one token wide (pooling 'cls' or 'mean', no representation layer)"
            )
        self.subpatch_split = VitlmSubPatchSplit(config.vision_config.hidden_size, OPEN_VOCABULARY_SUBPATCH_FACTOR)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VitlmSubPatchSplit):
            init_subpatch_split(module)
        if module is self.class_head.dense0:
            # the learned correction starts at 0: the class embeddings are then the projected tokens (MaskCLIP)
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    def class_embeddings(self, features, tokens) -> torch.Tensor:
        """Normalized per-cell class embeddings: each token projected into the shared space as the image embedding
        is (MaskCLIP's zero-shot segmentation: a mean-pooled tower's image embedding is the mean of these), plus the
        class head's learned correction from the split OWL-ViT features."""
        projected = self.dual_encoder.visual_projection(tokens)
        return unit(projected + self.class_head.dense0(features))

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VitlmOpenVocabularySegmenterOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size * num_queries, length)`): text queries, `num_queries`
            per image in order.
        query_embeds (`torch.FloatTensor` of shape `(batch_size, num_queries, projection_dim)`): queries given as
            embeddings instead; then `input_ids` is not read.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*): 0 for background, k for
            query k - 1, 255 for pixels to ignore.
        """
        features, vision_outputs = self.image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        tokens = vision_outputs.last_hidden_state[:, self.config.vision_config.num_prefix_tokens :]
        tokens = tokens.reshape(features.shape)
        factor = self.subpatch_split.factor
        tokens = tokens.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
        features = self.subpatch_split(features)
        batch_size, grid = features.shape[0], features.shape[1:3]
        text_outputs = None
        if query_embeds is None:
            query_embeds, text_outputs = self.text_query_embeddings(input_ids, attention_mask, batch_size, **kwargs)
        if query_embeds.shape[0] != batch_size:
            raise ValueError(
                f"`query_embeds` holds queries for {query_embeds.shape[0]} images, the batch has {batch_size}"
            )
        features = features.flatten(1, 2)
        class_embeds = self.class_embeddings(features, tokens.flatten(1, 2))
        # the dual encoder's image-text logits (its temperature times the cosine), then the detector's class head's
        # learned per-cell shift and (positive) scale: calibrated as the dual encoder's from the start
        head = self.class_head
        cosine = torch.einsum("bpd,bqd->bpq", class_embeds, unit(query_embeds))
        similarity = cosine * self.dual_encoder.logit_scale.exp()
        query_logits = (similarity + head.logit_shift(features)) * (nn.functional.elu(head.logit_scale(features)) + 1)
        logits = torch.cat([query_logits.new_zeros(*query_logits.shape[:2], 1), query_logits], dim=-1)
        logits = logits.transpose(1, 2).reshape(batch_size, -1, *grid)
        loss = semantic_segmentation_loss(logits, labels) if labels is not None else None
        return VitlmOpenVocabularySegmenterOutput(
            loss=loss,
            logits=logits,
            query_embeds=query_embeds,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


__all__ = [
    "IGNORE_INDEX",
    "VitlmDualEncoderForSemanticSegmentation",
    "VitlmViTForSemanticSegmentation",
    "semantic_segmentation_loss",
]
