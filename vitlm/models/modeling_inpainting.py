"""The inpainting head: MAE-style masked patch reconstruction on a ViT encoder, and `inpaint(image, mask)`."""

import math
from dataclasses import dataclass
from typing import Unpack

import numpy as np
import PIL.Image
import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_vitlm import VitlmViTConfig, to_pair
from .layers import EncoderShape, VitlmEncoder, grid_positions, sincos_2d_position_embeddings
from .modeling_vit import VitlmViTModel, VitlmViTPreTrainedModel


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(batch, channels, H, W) -> (batch, patches, patch_size**2 * channels), patches row-major, channels last."""
    batch, channels, height, width = pixel_values.shape
    patches = pixel_values.reshape(batch, channels, height // patch_size, patch_size, width // patch_size, patch_size)
    return torch.einsum("nchpwq->nhwpqc", patches).reshape(batch, -1, patch_size**2 * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """The inverse of `patchify`."""
    batch, (grid_height, grid_width) = patches.shape[0], grid_size
    patches = patches.reshape(batch, grid_height, grid_width, patch_size, patch_size, -1)
    return torch.einsum("nhwpqc->nchpwq", patches).reshape(
        batch, -1, grid_height * patch_size, grid_width * patch_size
    )


def poisson_fill(
    values: torch.Tensor,
    unknown: torch.Tensor,
    guide: torch.Tensor | None = None,
    regions: torch.Tensor | None = None,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    """`values` (channels, height, width) with its `unknown` (height, width) pixels replaced by the surface that
    meets the known pixels at the region's edge and, inside, changes from pixel to pixel as `guide` does (Poisson
    image editing, Pérez et al. 2003). Only steps between two neighbours of the same `regions` (height, width) label
    above 0 are followed (default: all); without a guide the fill is the smoothest surface through the known pixels
    (Laplace's equation). The image's own edge reflects. Solved by conjugate gradients on the 4-neighbour grid in
    float64; a region that touches no known pixel keeps only the guide's steps, around zero."""
    values = values.double()
    inside = unknown.to(values.device, torch.float64).expand_as(values)
    known = values * (1 - inside)
    stencil = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    stencil = stencil.to(values.device).expand(len(values), 1, 3, 3)

    def neighbour_sum(x):
        return nn.functional.conv2d(x[None], stencil, padding=1, groups=len(x))[0]

    degree = neighbour_sum(torch.ones_like(values))  # 4 inside the image, fewer on its edge

    def laplacian(x):  # of a field that is zero on the known pixels, restricted to the unknown ones
        return (degree * x - neighbour_sum(x)) * inside

    target = neighbour_sum(known)
    if guide is not None:
        guide = guide.double()
        regions = torch.ones_like(unknown, dtype=torch.long) if regions is None else regions.long()
        regions = regions.to(values.device)
        height, width = regions.shape
        padded_guide = nn.functional.pad(guide, (1, 1, 1, 1))
        padded_regions = nn.functional.pad(regions, (1, 1, 1, 1))
        for down, right in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rows, cols = slice(1 + down, height + 1 + down), slice(1 + right, width + 1 + right)
            same_region = (padded_regions[rows, cols] == regions) & (regions > 0)
            target = target + same_region * (guide - padded_guide[:, rows, cols])
    solution = torch.zeros_like(values)
    residual = target * inside
    direction, norm = residual.clone(), residual.pow(2).sum()
    stop = tolerance**2 * norm
    for _ in range(10 * max(values.shape[-2:])):  # CG needs O(side) steps on a grid; this bound is never the limit
        if norm <= stop:
            break
        product = laplacian(direction)
        step = norm / (direction * product).sum()
        solution += step * direction
        residual -= step * product
        new_norm = residual.pow(2).sum()
        direction = residual + (new_norm / norm) * direction
        norm = new_norm
    return known + solution


@dataclass
class VitlmMaskedImageModelingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`): mean squared error over the masked patches (per-patch normalized targets when
        `config.norm_pix_loss`).
    logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`): predicted
        pixels of every patch, in the processor's normalized pixel space; `unpatchify` makes them an image.
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

    pipeline_tag = "image-to-image"
    _remote_auto_map = {
        **VitlmViTPreTrainedModel._remote_auto_map,
        "AutoModelForMaskedImageModeling": "modeling_inpainting.VitlmViTForMaskedImageModeling",
    }

    def __init__(self, config: VitlmViTConfig):
        super().__init__(config)
        self.vit = VitlmViTModel(config)
        shape = EncoderShape(
            config.decoder_hidden_size,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
        )
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.decoder = VitlmEncoder(config, shape=shape, drop_path_rate=0.0)  # MAE's decoder has no stochastic depth
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.num_channels)
        self.post_init()

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

    def pixels_to_fill(self, mask: np.ndarray) -> torch.Tensor:
        """(height, width) bool at the model's resolution: the pixels `mask` (at the image's own size) covers once
        the image is resized to the model's, widened by the reach of the resampling kernel (2 pixels for bicubic,
        more when shrinking; none along an axis already at the model's size), so that no masked pixel leaks into a
        pixel treated as known, nor a visible one into the filled area when the prediction is resized back."""
        height, width = to_pair(self.config.image_size)
        coverage = PIL.Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), PIL.Image.Resampling.BOX)
        # an axis already at the model's size is not resampled (PIL skips it), so nothing leaks along it
        reach = [
            0 if side == size else math.ceil(2 * max(1.0, side / size))
            for side, size in zip((height, width), mask.shape)
        ]
        covered = torch.from_numpy(np.asarray(coverage) > 0)[None, None].float()
        return nn.functional.max_pool2d(covered, [2 * r + 1 for r in reach], stride=1, padding=reach)[0, 0] > 0

    def patches_to_fill(self, mask: np.ndarray) -> torch.Tensor:
        """(grid_height, grid_width) bool: the patches holding any of `pixels_to_fill(mask)`."""
        return self._patches_holding(self.pixels_to_fill(mask))

    def _patches_holding(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(pixels[None, None].float(), self.config.patch_size)[0, 0] > 0

    @torch.no_grad()
    def inpaint(self, image, mask, image_processor, blend: bool = True) -> PIL.Image.Image:
        """Fill the pixels where `mask` is set and return every other pixel unchanged.

        Args:
            image (`PIL.Image.Image` or `np.ndarray` of shape `(height, width, 3)`, uint8): the image, at any size.
            mask (`PIL.Image.Image` or `np.ndarray` of shape `(height, width)`): nonzero where to inpaint.
            image_processor: the model's image processor (its mean, std and resampling).
            blend (`bool`): Poisson-blend the prediction into the image. Whole patches are predicted, so the model
                never sees the visible pixels that share a patch with masked ones; blending keeps the prediction's
                own detail (its steps from pixel to pixel) and takes its level from the real pixels around the mask
                (`poisson_fill`). Without it the patches are pasted as predicted and a seam can show.

        The whole image is resized to the model's resolution, every patch the mask touches is masked and
        reconstructed, and the predicted pixels are resized back and composited inside the mask only: outside it
        the result equals the input (as RGB) bit for bit. Returns an RGB image of the input's size.
        """
        if not (image_processor.do_rescale and image_processor.do_normalize):
            raise ValueError("`inpaint` maps predictions back to pixels through the processor's rescale and normalize")
        if self.config.norm_pix_loss:
            raise ValueError(
                "this model predicts per-patch normalized pixels (norm_pix_loss=True), whose mean and variance are "
                "unknown for masked patches; inpainting needs a model trained with norm_pix_loss=False"
            )
        original = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image)
        mask = np.asarray(mask.convert("L") if isinstance(mask, PIL.Image.Image) else mask) != 0
        if original.ndim != 3 or original.shape[2] != 3 or original.dtype != np.uint8:
            raise ValueError(f"`image` must be a PIL image or a (height, width, 3) uint8 array, got {original.shape}")
        if mask.shape != original.shape[:2]:
            raise ValueError(f"`mask` has size {mask.shape}, the image {original.shape[:2]}: they must match")
        if not mask.any():
            return PIL.Image.fromarray(original)

        height, width = to_pair(self.config.image_size)
        patch_size = self.config.patch_size
        grid_size = (height // patch_size, width // patch_size)
        pixel_values = image_processor(
            PIL.Image.fromarray(original),
            size={"height": height, "width": width},
            do_center_crop=False,
            return_tensors="pt",
        )["pixel_values"].to(self.device, self.dtype)
        unknown = self.pixels_to_fill(mask)
        bool_masked_pos = self._patches_holding(unknown).reshape(1, -1).to(self.device)

        logits = self(pixel_values, bool_masked_pos=bool_masked_pos).logits
        patches = torch.where(bool_masked_pos[..., None], logits, patchify(pixel_values, patch_size))
        filled = unpatchify(patches, patch_size, grid_size)[0].float().cpu()
        if blend:
            # each masked patch is its own region: a step between two patches' predictions is not detail the model
            # drew, only their separate errors, so it is not kept
            patch_ids = torch.arange(1, grid_size[0] * grid_size[1] + 1) * bool_masked_pos.reshape(-1).cpu()
            regions = patch_ids.reshape(grid_size).repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
            filled = poisson_fill(pixel_values[0].float().cpu(), unknown, filled, regions).float()
        mean = torch.tensor(image_processor.image_mean).view(-1, 1, 1)
        std = torch.tensor(image_processor.image_std).view(-1, 1, 1)
        filled = ((filled * std + mean) / image_processor.rescale_factor).round().clamp(0, 255)
        filled = PIL.Image.fromarray(filled.byte().permute(1, 2, 0).numpy())
        filled = np.asarray(filled.resize((original.shape[1], original.shape[0]), resample=image_processor.resample))
        return PIL.Image.fromarray(np.where(mask[..., None], filled, original))


__all__ = ["VitlmViTForMaskedImageModeling", "patchify", "poisson_fill", "unpatchify"]
