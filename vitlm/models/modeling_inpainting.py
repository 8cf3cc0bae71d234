"""The inpainting head: MAE-style masked patch reconstruction on a ViT encoder.

Inpainting an image (resizing it and its mask to the model's resolution, pasting the prediction back) is the image
processor's: `VitlmImageProcessor.prepare_inpainting` and `post_process_inpainting`.
"""

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_vitlm import VitlmViTMAEConfig
from .inpainting_utils import patchify
from .layers import VitlmEncoder, grid_positions, sincos_2d_position_embeddings
from .modeling_vit import VitlmViTModel, VitlmViTPreTrainedModel

# The Auto classes an MAE repo answers to with `trust_remote_code=True`: the same as vitlm registers locally.
MAE_REMOTE_AUTO_MAP = {
    "AutoModel": "modeling_inpainting.VitlmViTMAEModel",
    "AutoModelForMaskedImageModeling": "modeling_inpainting.VitlmViTForMaskedImageModeling",
}


class VitlmViTMAEModel(VitlmViTModel):
    """The encoder of an MAE model, as `AutoModel` loads it from an MAE model's folder (transformers' `ViTMAEModel`
    plays that part): a plain ViT encoder whose config also carries the head's fields."""

    config_class = VitlmViTMAEConfig
    _remote_auto_map = MAE_REMOTE_AUTO_MAP


@dataclass
class VitlmMaskedImageModelingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): mean squared error over the masked patches (per-patch normalized targets when
        `config.norm_pix_loss`).
    logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`): predicted
        pixels of every patch, in the processor's normalized pixel space; `unpatchify` makes them an image, and
        `VitlmImageProcessor.post_process_inpainting` pastes them into the input image.
    mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 1 for masked patches, 0 for visible ones.
    ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`): where each patch went in the
        visible-then-masked order, as in MAE.
    hidden_states, attentions: the encoder's, when requested.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class VitlmViTForMaskedImageModeling(VitlmViTPreTrainedModel):
    """MAE: the ViT encoder sees only the visible patches; a lightweight decoder of the same blocks fills in mask
    tokens at every masked position and predicts all patches' pixels. Patches are masked at random
    (`config.mask_ratio`, or by `noise` as in transformers' ViTMAE) or exactly as given by `bool_masked_pos`."""

    config_class = VitlmViTMAEConfig
    pipeline_tag = "image-to-image"
    _remote_auto_map = MAE_REMOTE_AUTO_MAP

    def __init__(self, config: VitlmViTMAEConfig):
        if config.model_type != VitlmViTMAEConfig.model_type:  # not isinstance: remote code may load its module twice
            raise ValueError(
                f"{type(self).__name__} needs a VitlmViTMAEConfig (the MAE head's fields), got a {config.model_type} "
                "config: `VitlmViTMAEConfig.from_encoder_config(config, ...)` makes one from a VitlmViTConfig"
            )
        super().__init__(config)
        self.vit = VitlmViTModel(config)
        self.decoder_config = config.decoder_config()
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.decoder = VitlmEncoder(self.decoder_config)
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.num_channels)
        self.post_init()

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        # the decoder's config is derived from this one, not a sub-config transformers knows of: it follows the encoder
        self.decoder_config._attn_implementation_internal = self.config._attn_implementation

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.normal_(self.mask_token, std=self.config.initializer_range)

    def masking(self, batch_size, num_patches, noise=None, bool_masked_pos=None, device=None):
        """Returns (indices of the kept patches, ids_restore, mask) for MAE's visible-then-masked order."""
        if bool_masked_pos is not None:
            if bool_masked_pos.shape != (batch_size, num_patches):
                raise ValueError(
                    f"`bool_masked_pos` must have shape {(batch_size, num_patches)} (batch, patches), "
                    f"got {tuple(bool_masked_pos.shape)}"
                )
            counts = bool_masked_pos.sum(dim=1)
            if (counts != counts[0]).any():
                raise ValueError("every image of a batch must mask the same number of patches; pass them one by one")
            num_keep = num_patches - int(counts[0])
            # visible patches first, in grid order
            order = torch.argsort(bool_masked_pos.to(device).int(), dim=1, stable=True)
        else:
            if noise is None:
                noise = torch.rand(batch_size, num_patches, device=device)
            elif noise.shape != (batch_size, num_patches):
                raise ValueError(
                    f"`noise` must have shape {(batch_size, num_patches)} (batch, patches), got {tuple(noise.shape)}"
                )
            noise = noise.to(device)
            num_keep = int(num_patches * (1 - self.config.mask_ratio))
            order = torch.argsort(noise, dim=1)
        if num_keep == 0 and self.config.num_prefix_tokens == 0:
            raise ValueError("masking every patch leaves the encoder nothing to read without a [CLS] token")
        ids_restore = torch.argsort(order, dim=1)
        mask = torch.ones(batch_size, num_patches, device=order.device)
        mask[:, :num_keep] = 0
        return order[:, :num_keep], ids_restore, mask.gather(1, ids_restore)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VitlmMaskedImageModelingOutput | tuple:
        r"""
        noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*): the patches with the
            `(1 - mask_ratio)` smallest values stay visible (transformers' ViTMAE convention).
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): exactly which
            patches to mask; takes precedence over `noise`.
        """
        patch_size, prefix = self.config.patch_size, self.config.num_prefix_tokens
        grid_size = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
        num_patches = grid_size[0] * grid_size[1]
        keep, ids_restore, mask = self.masking(
            pixel_values.shape[0], num_patches, noise, bool_masked_pos, pixel_values.device
        )
        encoded = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            keep_indices=keep,
            return_dict=True,
            **kwargs,
        )

        hidden_states = self.decoder_embed(encoded.last_hidden_state)
        batch_size, width = hidden_states.shape[0], hidden_states.shape[-1]
        mask_tokens = self.mask_token.expand(batch_size, num_patches - keep.shape[1], -1)
        patch_states = torch.cat([hidden_states[:, prefix:], mask_tokens], dim=1)
        patch_states = patch_states.gather(1, ids_restore[..., None].expand(-1, -1, width))
        reference = self.config.grid_size if interpolate_pos_encoding else (None, None)
        table = sincos_2d_position_embeddings(
            width,
            grid_positions(grid_size[0], reference[0], patch_states.device),
            grid_positions(grid_size[1], reference[1], patch_states.device),
        )
        hidden_states = torch.cat([hidden_states[:, :prefix], patch_states + table.to(patch_states.dtype)], dim=1)
        decoded = self.decoder(hidden_states).last_hidden_state
        logits = self.decoder_pred(self.decoder_norm(decoded))[:, prefix:]

        target = patchify(pixel_values, patch_size)
        if self.config.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((logits - target) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum().clamp(min=1)

        return VitlmMaskedImageModelingOutput(
            loss=loss,
            logits=logits,
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


__all__ = ["VitlmViTMAEModel", "VitlmViTForMaskedImageModeling"]
