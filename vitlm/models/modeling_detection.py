"""Open-vocabulary detection head (OWL-ViT): every patch token of a dual encoder's image tower predicts a box and a
class embedding, scored against text (or image) query embeddings. No anchors, no non-maximum suppression."""

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .box_utils import box_iou, center_to_corners, generalized_box_iou
from .configuration_vitlm import VitlmDualEncoderConfig
from .loss_detection import DetectionLoss
from .modeling_dual_encoder import VitlmDualEncoderModel
from .modeling_vit import VitlmPreTrainedModel


def box_bias(grid_height: int, grid_width: int, device=None) -> torch.Tensor:
    """Inverse-sigmoid prior putting each token's box at its patch (OWL-ViT's: the patch's bottom-right corner, one
    patch in size), so the box head predicts offsets relative to the token's position."""
    xs = torch.arange(1, grid_width + 1, dtype=torch.float32, device=device) / grid_width
    ys = torch.arange(1, grid_height + 1, dtype=torch.float32, device=device) / grid_height
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    corners = torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1).clip(0.0, 1.0)
    sizes = torch.tensor([1.0 / grid_width, 1.0 / grid_height], device=device).expand_as(corners)
    boxes = torch.cat([corners, sizes], dim=-1)
    return torch.log(boxes + 1e-4) - torch.log1p(-boxes + 1e-4)


def unit(embeddings: torch.Tensor) -> torch.Tensor:
    """OWL-ViT's normalization of class and query embeddings (with an epsilon, unlike `F.normalize`)."""
    return embeddings / (embeddings.norm(dim=-1, keepdim=True) + 1e-6)


@dataclass
class VitlmObjectDetectionOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): weighted sum of the focal class, L1 box and generalized-IoU losses.
    loss_dict (`dict`, *optional*): the three losses.
    logits (`torch.FloatTensor` of shape `(batch_size, num_patches, num_queries)`): per-token, per-query logits.
    pred_boxes (`torch.FloatTensor` of shape `(batch_size, num_patches, 4)`): boxes as normalized (cx, cy, w, h).
    class_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches, projection_dim)`): normalized per-token
        class embeddings (what image queries are taken from).
    image_embeds (`torch.FloatTensor` of shape `(batch_size, grid_height, grid_width, hidden_size)`): token features.
    query_embeds (`torch.FloatTensor` of shape `(batch_size, num_queries, projection_dim)`): the queries.
    vision_model_output, text_model_output: the towers' outputs (text only for text queries).
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    class_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(v.to_tuple() if k.endswith("_model_output") else v for k, v in self.items())


class VitlmBoxHead(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.dense0 = nn.Linear(width, width)
        self.dense1 = nn.Linear(width, width)
        self.dense2 = nn.Linear(width, 4)
        self.gelu = nn.GELU()

    def forward(self, features):
        return self.dense2(self.gelu(self.dense1(self.gelu(self.dense0(features)))))


class VitlmClassHead(nn.Module):
    """Per-token class embedding, compared with the queries by cosine similarity, then a learned per-token shift
    and (positive) scale."""

    def __init__(self, width: int, projection_dim: int):
        super().__init__()
        self.dense0 = nn.Linear(width, projection_dim)
        self.logit_shift = nn.Linear(width, 1)
        self.logit_scale = nn.Linear(width, 1)

    def forward(self, features, query_embeds=None, query_mask=None):
        class_embeds = unit(self.dense0(features))
        if query_embeds is None:
            return None, class_embeds
        query_embeds = unit(query_embeds)
        logits = torch.einsum("bpd,bqd->bpq", class_embeds, query_embeds)
        logits = (logits + self.logit_shift(features)) * (nn.functional.elu(self.logit_scale(features)) + 1)
        if query_mask is not None:
            logits = torch.where(query_mask[:, None, :].bool(), logits, torch.finfo(logits.dtype).min)
        return logits, class_embeds


class VitlmDualEncoderPatchQueryModel(VitlmPreTrainedModel):
    """What OWL-ViT-style dense heads share: the image tower's final tokens (a hierarchical tower's last stage), each
    multiplied by the [CLS] token (the tokens' mean without one) and layer-normalized, become per-token features; a
    class head scores them against queries, projected text embeddings of the labels or given embeddings. The
    detector adds a box per token, the open-vocabulary segmenter a label per token. Subclasses add their modules, then
    call `post_init`."""

    config_class = VitlmDualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "pixel_values"

    def __init__(self, config: VitlmDualEncoderConfig):
        super().__init__(config)
        width = config.vision_config.hidden_size
        self.dual_encoder = VitlmDualEncoderModel(config)
        self.layer_norm = nn.LayerNorm(width, eps=config.vision_config.layer_norm_eps)
        self.class_head = VitlmClassHead(width, config.projection_dim)

    def image_features(self, pixel_values, interpolate_pos_encoding=False, **kwargs):
        """(per-token features (batch, grid_height, grid_width, hidden), vision tower outputs)."""
        vision_outputs = self.dual_encoder.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        vision_config = self.config.vision_config
        tokens = vision_outputs.last_hidden_state
        prefix = vision_config.num_prefix_tokens
        patches = tokens[:, prefix:]
        # OWL-ViT merges the [CLS] token into every patch token; a tower without one (Swin, a mean-pooled ViT) merges
        # the tokens' mean, its image summary
        image_token = tokens[:, :1] if prefix else patches.mean(dim=1, keepdim=True)
        features = self.layer_norm(patches * image_token)
        grid = vision_config.output_grid(*pixel_values.shape[-2:])  # the last stage's, for a hierarchical tower
        return features.reshape(features.shape[0], *grid, -1), vision_outputs

    def text_query_embeddings(self, input_ids, attention_mask, batch_size: int, **kwargs):
        """(normalized query embeddings (batch_size, num_queries, projection_dim), text tower outputs) of
        `input_ids` holding `num_queries` prompts per image, in order."""
        if input_ids is None:
            raise ValueError("pass text queries as `input_ids` or image queries as `query_embeds`")
        if input_ids.shape[0] == 0:
            raise ValueError("`input_ids` holds no queries: give at least one text to detect")
        if input_ids.shape[0] % batch_size:
            raise ValueError(
                f"`input_ids` holds {input_ids.shape[0]} queries, not a multiple of the {batch_size} images"
            )
        input_ids = input_ids.reshape(batch_size, -1, input_ids.shape[-1])
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(input_ids.shape)
        # the same queries for every image (a label set, as in training and the pipeline): encode them once. A
        # compiled graph cannot branch on values, so it encodes every image's copy (the same embeddings).
        shared = not torch.compiler.is_compiling() and (
            (input_ids == input_ids[:1]).all()
            and (attention_mask is None or (attention_mask == attention_mask[:1]).all())
        )
        if shared:
            input_ids, attention_mask = input_ids[:1], None if attention_mask is None else attention_mask[:1]
        text_outputs = self.dual_encoder.text_model(
            input_ids.flatten(0, 1),
            attention_mask=None if attention_mask is None else attention_mask.flatten(0, 1),
            return_dict=True,
            **kwargs,
        )
        query_embeds = self.dual_encoder.text_projection(text_outputs.pooler_output)
        query_embeds = nn.functional.normalize(query_embeds, dim=-1).reshape(*input_ids.shape[:2], -1)
        return query_embeds.expand(batch_size, -1, -1), text_outputs


class VitlmDualEncoderForObjectDetection(VitlmDualEncoderPatchQueryModel):
    """OWL-ViT on a vitlm dual encoder: the per-token features (`VitlmDualEncoderPatchQueryModel`) feed a box head
    (an MLP predicting offsets from the token's patch) and a class head. Queries are projected text embeddings
    (`input_ids`: `num_queries` prompts per image, flattened) or given embeddings (`query_embeds`, e.g. from
    `image_query_embeddings`). With `labels`, the loss matches tokens to objects one to one (Hungarian matching on
    class + L1 + generalized-IoU costs)."""

    pipeline_tag = "zero-shot-object-detection"
    _remote_auto_map = {
        **VitlmDualEncoderModel._remote_auto_map,
        "AutoModelForZeroShotObjectDetection": "modeling_detection.VitlmDualEncoderForObjectDetection",
    }

    def __init__(self, config: VitlmDualEncoderConfig):
        super().__init__(config)
        self.box_head = VitlmBoxHead(config.vision_config.hidden_size)
        self.detection_loss = DetectionLoss()
        self.post_init()

    def predict_boxes(self, features: torch.Tensor) -> torch.Tensor:
        grid_height, grid_width = features.shape[1:3]
        offsets = self.box_head(features.flatten(1, 2))
        return (offsets + box_bias(grid_height, grid_width, offsets.device).to(offsets.dtype)).sigmoid()

    @torch.no_grad()
    def image_query_embeddings(self, query_pixel_values, interpolate_pos_encoding=False) -> torch.Tensor:
        """One query embedding per image (batch, projection_dim): the class embedding of the token whose box covers
        the query image best (among boxes within 80% of the best IoU with the whole image, the least typical one),
        as OWL-ViT's image-guided detection chooses it."""
        features, _ = self.image_features(query_pixel_values, interpolate_pos_encoding)
        # OWL-ViT ranks the candidates by their unnormalized class embeddings
        raw_class_embeds = self.class_head.dense0(features.flatten(1, 2))
        class_embeds = unit(raw_class_embeds)
        boxes = center_to_corners(self.predict_boxes(features))
        whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=boxes.device, dtype=boxes.dtype)
        queries = []
        for image_boxes, image_embeds, raw_embeds in zip(boxes, class_embeds, raw_class_embeds):
            ious = box_iou(whole, image_boxes)[0][0]
            if (ious == 0).all():
                ious = generalized_box_iou(whole, image_boxes)[0]
            # within 80% of the best overlap; written so that a negative best (generalized IoU) still qualifies
            candidates = (ious >= ious.max() - 0.2 * ious.max().abs()).nonzero()[:, 0]
            similarity = raw_embeds[candidates] @ raw_embeds.mean(dim=0)
            queries.append(image_embeds[candidates[similarity.argmin()]])
        return torch.stack(queries)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VitlmObjectDetectionOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`): the images, the main
            input (`main_input_name`), hence first; pass the queries by name.
        input_ids (`torch.LongTensor` of shape `(batch_size * num_queries, length)`): text queries, `num_queries`
            per image in order.
        query_embeds (`torch.FloatTensor` of shape `(batch_size, num_queries, projection_dim)`): queries given as
            embeddings instead (image queries); then `input_ids` is not read.
        query_mask (`torch.BoolTensor` of shape `(batch_size, num_queries)`): False for padding queries, whose
            logits become the dtype's minimum.
        labels (`list[dict]`): per image, `class_labels` (query indices) and `boxes` (normalized cx, cy, w, h).
        """
        features, vision_outputs = self.image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        batch_size = features.shape[0]
        text_outputs = None
        if query_embeds is None:
            query_embeds, text_outputs = self.text_query_embeddings(input_ids, attention_mask, batch_size, **kwargs)

        if query_embeds.shape[0] != batch_size:
            raise ValueError(
                f"`query_embeds` holds queries for {query_embeds.shape[0]} images, the batch has {batch_size}"
            )
        token_features = features.flatten(1, 2)
        logits, class_embeds = self.class_head(token_features, query_embeds, query_mask)
        pred_boxes = self.predict_boxes(features)
        loss = loss_dict = None
        if labels is not None:
            loss, loss_dict = self.detection_loss(logits, pred_boxes, labels)

        return VitlmObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            class_embeds=class_embeds,
            image_embeds=features,
            query_embeds=query_embeds,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


__all__ = ["VitlmDualEncoderForObjectDetection", "VitlmDualEncoderPatchQueryModel", "box_bias", "unit"]
