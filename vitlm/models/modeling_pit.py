"""The Pooling-based Vision Transformer (PiT, "Rethinking Spatial Dimensions of Vision Transformers"; timm's `pit_*`).

A ViT whose token grid shrinks between stages: an overlapping conv patch embedding with a learned position table on
its grid, then stages of the ViT's own blocks, every stage after the first opened by a token pooling that halves the
grid and widens the tokens (`VitlmTokenPooling`). The final LayerNorm's [CLS] state is the pooled output; the
classifier (with DeiT's distillation head) is the ViT's.
"""

from typing import Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import TransformersKwargs
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vitlm import VitlmPiTConfig
from .layers import (
    VitlmAttention,
    VitlmBlock,
    VitlmPositionEncoding,
    VitlmTokenPooling,
    check_pixel_values,
)
from .modeling_vit import VitlmPreTrainedModel, VitlmViTForImageClassification


class VitlmPiTEmbeddings(nn.Module):
    """The overlapping patch embedding (a `patch_size` conv of step `stride`, unpadded) plus a learned position table
    on its patch grid (none for the prefix tokens, as in timm), prefixed by [CLS] (and the distillation token).
    Returns the tokens and their patch grid."""

    def __init__(self, config: VitlmPiTConfig):
        super().__init__()
        width = config.hidden_sizes[0]
        self.num_channels, self.patch_size, self.stride = config.num_channels, config.patch_size, config.stride
        self.projection = nn.Conv2d(config.num_channels, width, kernel_size=config.patch_size, stride=config.stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, width)) if config.use_distillation_token else None
        # the patch grid's table alone; a learned table has no rotary part (`rope_theta` unused)
        position_config = config.stage_config(
            0, num_prefix_tokens=0, position_embedding_type="learned", rope_theta=None
        )
        self.position_encoding = VitlmPositionEncoding(position_config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        # `patch_size` is a multiple of `stride` (the config's rule): sides divisible by the stride leave no pixel out
        check_pixel_values(pixel_values, self.num_channels, self.stride)
        if min(pixel_values.shape[2:]) < self.patch_size:
            height, width = pixel_values.shape[2:]
            raise ValueError(
                f"image size {height}x{width} is smaller than the model's {self.patch_size}-pixel patches"
            )
        patches = self.projection(pixel_values)
        grid_size = tuple(patches.shape[2:])
        patches, _ = self.position_encoding(patches.flatten(2).transpose(1, 2), grid_size, interpolate_pos_encoding)
        batch_size = patches.shape[0]
        prefix = [t.expand(batch_size, -1, -1) for t in (self.cls_token, self.distillation_token) if t is not None]
        return self.dropout(torch.cat([*prefix, patches], dim=1)), grid_size


class VitlmPiTStage(nn.Module):
    """A token pooling (every stage but the first), then the stage's blocks. Takes and returns the tokens (first, where
    output capturing reads them) and their grid."""

    def __init__(self, config: VitlmPiTConfig, index: int, drop_path_rates: list[float]):
        super().__init__()
        stage = config.stage_config(index)
        self.pooling = (
            VitlmTokenPooling(config.hidden_sizes[index - 1], stage.hidden_size, config.num_prefix_tokens)
            if index
            else None
        )
        self.layers = nn.ModuleList(VitlmBlock(stage, rate) for rate in drop_path_rates)

    def forward(self, hidden_states, grid_size, **kwargs: Unpack[TransformersKwargs]):
        if self.pooling is not None:
            hidden_states, grid_size = self.pooling(hidden_states, grid_size)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return hidden_states, grid_size


_PIT_AUTO_MAP = {
    "AutoModel": "modeling_pit.VitlmPiTModel",
    "AutoModelForImageClassification": "modeling_pit.VitlmPiTForImageClassification",
}


class VitlmPiTPreTrainedModel(VitlmPreTrainedModel):
    config_class = VitlmPiTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    _no_split_modules = ["VitlmBlock", "VitlmPiTEmbeddings", "VitlmTokenPooling"]
    # `hidden_states`: the embeddings, then each stage's output (one width and grid per stage); `attentions`: every
    # block's weights
    _can_record_outputs = {
        "hidden_states": OutputRecorder(VitlmPiTStage, index=0, num_hidden_layers_key="num_stages"),
        "attentions": VitlmAttention,
    }
    _remote_auto_map = _PIT_AUTO_MAP

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VitlmPiTEmbeddings):
            for token in (module.cls_token, module.distillation_token):
                if token is not None:
                    init.trunc_normal_(token, std=self.config.initializer_range)


class VitlmPiTModel(VitlmPiTPreTrainedModel):
    """Outputs the final hidden states (the last stage's tokens after the final LayerNorm) and the pooled [CLS] state.
    With `output_hidden_states`, `hidden_states` holds the embeddings and each stage's tokens (prefix tokens first,
    then the stage's patch grid, row-major)."""

    pipeline_tag = "image-feature-extraction"

    def __init__(self, config: VitlmPiTConfig):
        super().__init__(config)
        self.embeddings = VitlmPiTEmbeddings(config)
        # stochastic depth grows linearly over all blocks of all stages, as in timm (plain Python: models may be built
        # on the meta device)
        total = config.num_hidden_layers
        rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        starts = [sum(config.depths[:index]) for index in range(config.num_stages)]
        self.stages = nn.ModuleList(
            VitlmPiTStage(config, index, rates[start : start + depth])
            for index, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @property
    def pooled_size(self) -> int:
        return self.config.hidden_size

    def get_input_embeddings(self):
        return self.embeddings.projection

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        interpolate_pos_encoding (`bool`): resize the learned position table (bicubic) to the patch grid of an input
            resolution other than `config.image_size`.
        """
        pixel_values = pixel_values.to(self.dtype) if torch.is_tensor(pixel_values) else pixel_values
        hidden_states, grid_size = self.embeddings(pixel_values, interpolate_pos_encoding)
        for stage in self.stages:
            hidden_states, grid_size = stage(hidden_states, grid_size, **kwargs)
        last_hidden_state = self.layernorm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=last_hidden_state[:, 0])


class VitlmPiTForImageClassification(VitlmViTForImageClassification):
    """The ViT's classifier over a PiT: a linear head on the [CLS] state and, with a distillation token, a second head
    on it, the logits being the two heads' mean (timm's distilled PiT at inference)."""

    config_class = VitlmPiTConfig
    base_model_class = VitlmPiTModel
    _no_split_modules = VitlmPiTPreTrainedModel._no_split_modules
    _remote_auto_map = _PIT_AUTO_MAP


__all__ = ["VitlmPiTPreTrainedModel", "VitlmPiTModel", "VitlmPiTForImageClassification"]
