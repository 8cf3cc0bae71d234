"""Swin Transformer (Liu et al., 2021): windowed self-attention with shifted windows and a learned relative position
bias, in stages joined by patch merging, as timm's `swin_*` and transformers' `SwinModel`.

The blocks are vitlm's pre-LN blocks attending within windows ([`VitlmWindowBlock`]); patch merging, window
partition and the relative position bias live in `layers.py`, for the next family to reuse.
"""

from typing import Unpack

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_vitlm import VitlmSwinConfig, to_pair
from .layers import (
    VitlmAttention,
    VitlmPatchEmbeddings,
    VitlmPatchMerging,
    VitlmWindowBlock,
    shifted_window_mask,
)
from .modeling_vit import VitlmPreTrainedModel


def stage_windows(height: int, width: int, window_size: tuple[int, int]):
    """The (window, shift) of a stage on a height x width map, by the original Swin's rule: where the map's shorter
    side is no longer than the window, the window shrinks to that side and does not shift."""
    if min(height, width) <= min(window_size):
        side = min(height, width)
        return (side, side), (0, 0)
    return tuple(window_size), (window_size[0] // 2, window_size[1] // 2)


class VitlmSwinStage(nn.Module):
    """Patch merging (every stage after the first), then blocks alternating plain and shifted windows. Takes and
    returns tokens (batch, height * width, channels), row-major on the map, so that the recorded `hidden_states`
    have transformers' layout; `grid_size` is the input's map, the output's is [`VitlmSwinConfig.stage_grids`]'s."""

    def __init__(self, config: VitlmSwinConfig, index: int, drop_path_rates: list[float]):
        super().__init__()
        stage = config.stage_config(index)
        self.window_size = to_pair(config.window_size)
        self.downsample = (
            VitlmPatchMerging(config, config.stage_widths[index - 1], stage.hidden_size) if index > 0 else None
        )
        self.blocks = nn.ModuleList(VitlmWindowBlock(stage, self.window_size, rate) for rate in drop_path_rates)

    def forward(self, hidden_states, grid_size: tuple[int, int], **kwargs: Unpack[TransformersKwargs]):
        hidden_states = hidden_states.unflatten(1, tuple(grid_size))
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        height, width = hidden_states.shape[1:3]
        window_size, shift_size = stage_windows(height, width, self.window_size)
        shift_mask = None
        if any(shift_size):  # one mask for every shifted block of the stage
            padded = (-(-height // window_size[0]) * window_size[0], -(-width // window_size[1]) * window_size[1])
            shift_mask = shifted_window_mask(
                *padded, window_size, shift_size, hidden_states.dtype, hidden_states.device
            )
        for index, block in enumerate(self.blocks):
            shifted = index % 2 == 1 and shift_mask is not None
            hidden_states = block(
                hidden_states,
                window_size,
                shift_size if shifted else (0, 0),
                shift_mask if shifted else None,
                **kwargs,
            )
        return hidden_states.flatten(1, 2)


_SWIN_AUTO_MAP = {
    "AutoModel": "modeling_swin.VitlmSwinModel",
    "AutoModelForImageClassification": "modeling_swin.VitlmSwinForImageClassification",
}


class VitlmSwinPreTrainedModel(VitlmPreTrainedModel):
    config_class = VitlmSwinConfig
    base_model_prefix = "swin"
    main_input_name = "pixel_values"
    _no_split_modules = ["VitlmWindowBlock", "VitlmPatchMerging"]
    # `hidden_states`: the stem's tokens, then each stage's output (one feature map per resolution, as a backbone
    # reads them); `attentions`: every block's, per window (batch * windows, heads, window tokens, window tokens)
    _can_record_outputs = {"hidden_states": VitlmSwinStage, "attentions": VitlmAttention}
    _remote_auto_map = _SWIN_AUTO_MAP


class VitlmSwinModel(VitlmSwinPreTrainedModel):
    """Outputs the final stage's layer-normalized tokens (batch, tokens, hidden_size), row-major on its map, and
    their mean as the pooled output (Swin has no [CLS] token)."""

    pipeline_tag = "image-feature-extraction"

    def __init__(self, config: VitlmSwinConfig):
        super().__init__(config)
        self.patch_embeddings = VitlmPatchEmbeddings(config.stage_config(0))
        self.embedding_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        total = sum(config.depths)
        # plain Python: models may be built under a meta-device context, where tensors hold no values
        rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        starts = [sum(config.depths[:index]) for index in range(len(config.depths))]
        self.stages = nn.ModuleList(
            VitlmSwinStage(config, index, rates[start : start + depth])
            for index, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @property
    def pooled_size(self) -> int:
        return self.config.hidden_size

    def get_input_embeddings(self):
        return self.patch_embeddings

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        interpolate_pos_encoding (`bool`): accepted for the towers' common signature; Swin's relative position bias
            needs no resizing, any multiple of `patch_size` runs as it is.
        """
        pixel_values = pixel_values.to(self.dtype) if torch.is_tensor(pixel_values) else pixel_values
        embeddings = self.patch_embeddings(pixel_values)
        grids = self.config.stage_grids(*pixel_values.shape[-2:])
        hidden_states = self.dropout(self.embedding_norm(embeddings.flatten(2).transpose(1, 2)))
        # each stage reads the previous one's map (the first, the stem's)
        for stage, grid_size in zip(self.stages, [grids[0], *grids[:-1]]):
            hidden_states = stage(hidden_states, grid_size, **kwargs)
        last_hidden_state = self.layernorm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=last_hidden_state.mean(1))


class VitlmSwinForImageClassification(VitlmSwinPreTrainedModel):
    """A linear classifier on the mean of the final tokens; the loss (single-label, multi-label or regression)
    follows `config.problem_type` as in transformers."""

    pipeline_tag = "image-classification"

    def __init__(self, config: VitlmSwinConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.swin = VitlmSwinModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput | tuple:
        outputs = self.swin(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["VitlmSwinModel", "VitlmSwinForImageClassification", "stage_windows"]
