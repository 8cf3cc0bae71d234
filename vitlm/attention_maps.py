"""Where a vision transformer looks: attention rollout and last-layer [CLS] attention as heatmaps over the image.

    >>> maps = attention_map(model, image, image_processor, method="rollout")
    >>> maps.heatmap.shape == (image.height, image.width), maps.overlay  # a PIL image of the heat over the picture

Works for ViT, hybrid, PiT and Swin models (their heads included) and the image tower of a dual encoder. Swin attends
within (shifted) windows: each block's per-window maps are stitched back onto its stage's token grid (the shift undone,
padding dropped), and rollout carries the flow through patch merging, each merged token averaging its 2x2 group.
Rollout through PiT's token pooling gives each pooled token the mean of the 3x3 neighbourhood its depthwise
convolution reads, and each prefix token its own.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torch import nn

from .models.configuration_vitlm import VitlmPiTConfig, VitlmSwinConfig, to_pair
from .models.modeling_swin import stage_windows
from .overlays import blend, jet

METHODS = ("rollout", "cls")


@dataclass
class AttentionMap:
    """`heatmap` (height, width) float32 at the image's resolution, scaled so that its maximum is 1 and its minimum
    is at least 0; `overlay` the image with the heatmap blended over it in the jet colour map (`vitlm.overlays`)."""

    heatmap: np.ndarray
    overlay: PIL.Image.Image


def vision_tower(model: nn.Module) -> nn.Module:
    """The module computing image tokens: the model itself, its `vit` (heads) or its `vision_model` (dual encoder,
    also inside the detection head)."""
    model = getattr(model, "dual_encoder", model)  # the detection head wraps a dual encoder
    for name in ("vision_model", "vit", "swin"):
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
    if isinstance(config, VitlmSwinConfig):
        return upsampled(windowed_flow(config, layers, pixel_values.shape[-2:], method), pixel_values.shape[-2:])
    prefix = config.num_prefix_tokens
    size = pixel_values.shape[-2:]
    # a PiT's stages each have their grid; a plain tower has one stage
    grids = config.stage_grids(*size) if isinstance(config, VitlmPiTConfig) else [config.output_grid(*size)]
    if method == "rollout":
        device = layers[0].device
        flow = torch.eye(layers[0].shape[-1], device=device)
        stage = 0
        for attention in layers:
            if attention.shape[-1] != flow.shape[-2]:  # a token pooling opened the next stage
                flow = pooling_matrix(grids[stage], grids[stage + 1], prefix, device) @ flow
                stage += 1
            mixed = 0.5 * attention + 0.5 * torch.eye(attention.shape[-1], device=device)
            flow = (mixed / mixed.sum(dim=-1, keepdim=True)) @ flow
        grid = grids[0]
    else:
        flow, grid = layers[-1], grids[-1]
    query = flow[:, 0] if config.pooling == "cls" else flow[:, prefix:].mean(dim=1)
    return upsampled(query[:, prefix:].reshape(-1, *grid), pixel_values.shape[-2:])


def pooling_matrix(grid, pooled_grid, prefix: int, device) -> torch.Tensor:
    """(prefix + pooled tokens, prefix + tokens): each prefix token passes to itself; each token of the `pooled_grid`
    averages the in-bounds 3x3 neighbourhood of `grid` that PiT's stride-2 depthwise convolution reads."""
    rows, cols = torch.meshgrid(torch.arange(pooled_grid[0]), torch.arange(pooled_grid[1]), indexing="ij")
    matrix = torch.zeros(prefix + rows.numel(), prefix + grid[0] * grid[1], device=device)
    matrix[:prefix, :prefix] = torch.eye(prefix, device=device)
    for row_offset in (-1, 0, 1):
        for col_offset in (-1, 0, 1):
            source_rows, source_cols = 2 * rows + row_offset, 2 * cols + col_offset
            inside = (source_rows >= 0) & (source_rows < grid[0]) & (source_cols >= 0) & (source_cols < grid[1])
            pooled = prefix + torch.arange(rows.numel()).view_as(rows)[inside]
            matrix[pooled.to(device), (prefix + source_rows[inside] * grid[1] + source_cols[inside]).to(device)] = 1
    return matrix / matrix.sum(dim=1, keepdim=True)


def upsampled(maps: torch.Tensor, size) -> torch.Tensor:
    """(batch, grid height, grid width) maps resized to `size`, clamped at 0 and scaled to a maximum of 1."""
    heat = nn.functional.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    heat = heat[:, 0].clamp(min=0)
    return heat / heat.amax(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(heat.dtype).tiny)


def window_token_positions(grid, window, shift) -> torch.Tensor:
    """(windows, window tokens) row-major index on the `grid` map of each token a shifted-window block attends
    over, in its partition order; -1 for padding. The map was padded to whole windows, then rolled back by `shift`:
    the token at (i, j) of the rolled map is the one at ((i + shift) mod padded height, ...) of the padded map."""
    height, width = grid
    padded = [-(-side // size) * size for side, size in zip(grid, window)]
    rows = (torch.arange(padded[0]) + shift[0]) % padded[0]
    cols = (torch.arange(padded[1]) + shift[1]) % padded[1]
    index = torch.where((rows[:, None] < height) & (cols[None, :] < width), rows[:, None] * width + cols, -1)
    windows = index.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1])
    return windows.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])


def stitch_windows(attention: torch.Tensor, grid, window, shift) -> torch.Tensor:
    """(batch * windows, window tokens, window tokens) attention -> (batch, tokens, tokens) on the `grid` map:
    zero between tokens of different windows, attention to padding dropped."""
    positions = window_token_positions(grid, window, shift).to(attention.device)
    tokens = grid[0] * grid[1]
    positions = torch.where(positions < 0, tokens, positions)  # padding lands in a slot that is cut off
    per_image = attention.view(-1, *positions.shape, positions.shape[1])
    full = attention.new_zeros(per_image.shape[0], tokens + 1, tokens + 1)
    full[:, positions[:, :, None], positions[:, None, :]] = per_image
    return full[:, :tokens, :tokens]


def merging_matrix(grid, device) -> torch.Tensor:
    """(merged tokens, tokens) averaging each 2x2 group of the `grid` map (as patch merging groups them, an odd side
    padded): a merged token's flow is its group's mean."""
    height, width = grid
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    merged = ((rows // 2) * (-(-width // 2)) + cols // 2).flatten().to(device)
    matrix = torch.zeros(int(merged.max()) + 1, height * width, device=device)
    matrix[merged, torch.arange(height * width, device=device)] = 1.0
    return matrix / matrix.sum(dim=1, keepdim=True)


def windowed_flow(config: VitlmSwinConfig, layers, size, method) -> torch.Tensor:
    """(batch, grid height, grid width) maps of a Swin: `cls` the last block's stitched attention averaged over its
    queries (Swin pools by mean) on the last stage's map; `rollout` the flow from the patch grid to the pooled
    output, through every block (0.5 A + 0.5 I, rows renormalized) and every patch merging."""
    grids = config.stage_grids(*size)
    stitched, index = [], 0
    for depth, grid in zip(config.depths, grids):
        window, shift = stage_windows(*grid, to_pair(config.window_size))
        for number in range(depth):
            stitched.append((grid, stitch_windows(layers[index], grid, window, shift if number % 2 else (0, 0))))
            index += 1
    if method == "cls":
        grid, attention = stitched[-1]
        return attention.mean(dim=1).reshape(-1, *grid)
    device = layers[0].device
    flow, grid_before = torch.eye(grids[0][0] * grids[0][1], device=device), grids[0]
    for grid, attention in stitched:
        if grid != grid_before:
            flow, grid_before = merging_matrix(grid_before, device) @ flow, grid
        mixed = 0.5 * attention + 0.5 * torch.eye(attention.shape[-1], device=device)
        flow = (mixed / mixed.sum(dim=-1, keepdim=True)) @ flow
    return flow.mean(dim=1).reshape(-1, *grids[0])


def attention_map(
    model: nn.Module, image, image_processor, method: str = "rollout", alpha: float = 0.5
) -> AttentionMap:
    """The attention heatmap of one image at its own resolution, and an overlay. The whole image is resized to the
    model's input size (no crop), so that the heatmap covers all of it."""
    image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))
    config = vision_tower(model).config
    height, width = to_pair(config.image_size)
    pixel_values = image_processor(
        image, size={"height": height, "width": width}, do_center_crop=False, return_tensors="pt"
    )["pixel_values"].to(model.device, model.dtype)
    heat = attention_heatmaps(model, pixel_values, method)[0]
    heat = nn.functional.interpolate(heat[None, None], size=(image.height, image.width), mode="bilinear")[0, 0]
    heatmap = (heat / heat.max().clamp(min=torch.finfo(heat.dtype).tiny)).clamp(0, 1).cpu().numpy()
    return AttentionMap(heatmap=heatmap.astype(np.float32), overlay=blend(image, jet(heatmap), alpha))


__all__ = ["AttentionMap", "attention_heatmaps", "attention_map"]
