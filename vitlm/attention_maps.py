"""Where a vision transformer looks: attention rollout and last-layer [CLS] attention as heatmaps over the image.

    >>> maps = attention_map(model, image, image_processor, method="rollout")
    >>> maps.heatmap.shape == (image.height, image.width), maps.overlay  # a PIL image of the heat over the picture

Works for ViT and hybrid models (their heads included) and the image tower of a dual encoder.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torch import nn

from .models.configuration_vitlm import to_pair

METHODS = ("rollout", "cls")


@dataclass
class AttentionMap:
    """`heatmap` (height, width) float32 at the image's resolution, scaled so that its maximum is 1 and its minimum
    is at least 0; `overlay` the image with the heatmap blended over it in a jet colour map."""

    heatmap: np.ndarray
    overlay: PIL.Image.Image


def vision_tower(model: nn.Module) -> nn.Module:
    """The module computing image tokens: the model itself, its `vit` (heads) or its `vision_model` (dual encoder,
    also inside the detection head)."""
    model = getattr(model, "dual_encoder", model)  # the detection head wraps a dual encoder
    for name in ("vision_model", "vit"):
        if hasattr(model, name):
            return getattr(model, name)
    return model


@torch.no_grad()
def attention_heatmaps(model: nn.Module, pixel_values: torch.Tensor, method: str = "rollout") -> torch.Tensor:
    """(batch, height, width) maps at the resolution of `pixel_values`, each scaled to a maximum of 1.

    `cls`: the last layer's attention from the pooling query ([CLS], or the mean of the patch queries for a
    mean-pooled model) to each patch, averaged over heads. `rollout` (Abnar & Zuidema, 2020): every layer's
    head-averaged attention with the residual added (0.5 A + 0.5 I, rows renormalized), multiplied through the depth,
    read from the same query.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    tower = vision_tower(model)
    config = tower.config
    attentions = tower(pixel_values, output_attentions=True, return_dict=True).attentions
    layers = [layer.float().mean(dim=1) for layer in attentions]  # (batch, tokens, tokens), averaged over heads
    if method == "rollout":
        identity = torch.eye(layers[0].shape[-1], device=layers[0].device)
        flow = identity
        for attention in layers:
            mixed = 0.5 * attention + 0.5 * identity
            flow = (mixed / mixed.sum(dim=-1, keepdim=True)) @ flow
    else:
        flow = layers[-1]
    prefix = config.num_prefix_tokens
    query = flow[:, 0] if config.pooling == "cls" else flow[:, prefix:].mean(dim=1)
    grid = (pixel_values.shape[-2] // config.stem_stride, pixel_values.shape[-1] // config.stem_stride)
    patches = query[:, prefix:].reshape(-1, 1, *grid)
    heat = nn.functional.interpolate(
        patches, size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=False
    )
    heat = heat[:, 0].clamp(min=0)
    return heat / heat.amax(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(heat.dtype).tiny)


def jet(heat: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, blue through cyan, yellow to red."""
    channels = [np.clip(1.5 - np.abs(4 * heat - offset), 0, 1) for offset in (3, 2, 1)]
    return (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)


def attention_map(
    model: nn.Module, image, image_processor, method: str = "rollout", alpha: float = 0.5
) -> AttentionMap:
    """The attention heatmap of one image at its own resolution, and an overlay. The whole image is resized to the
    model's input size (no crop), so that the heatmap covers all of it."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}")
    image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))
    config = vision_tower(model).config
    height, width = to_pair(config.image_size)
    pixel_values = image_processor(
        image, size={"height": height, "width": width}, do_center_crop=False, return_tensors="pt"
    )["pixel_values"].to(model.device, model.dtype)
    heat = attention_heatmaps(model, pixel_values, method)[0]
    heat = nn.functional.interpolate(heat[None, None], size=(image.height, image.width), mode="bilinear")[0, 0]
    heatmap = (heat / heat.max().clamp(min=torch.finfo(heat.dtype).tiny)).clamp(0, 1).cpu().numpy()
    picture = np.asarray(image.convert("RGB"), dtype=np.float32)
    overlay = (1 - alpha) * picture + alpha * jet(heatmap).astype(np.float32)
    return AttentionMap(
        heatmap=heatmap.astype(np.float32), overlay=PIL.Image.fromarray(overlay.round().astype(np.uint8))
    )


__all__ = ["AttentionMap", "attention_heatmaps", "attention_map"]
