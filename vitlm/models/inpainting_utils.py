"""Pixel-space helpers of inpainting: the patch layout of MAE's predictions, which pixels and patches a mask covers
once the image is resized to a model's resolution, and the Poisson fill that blends a prediction into an image.

`patchify` serves the masked image model (its loss targets); the rest serves the image processor's
`prepare_inpainting` and `post_process_inpainting`.
"""

import math

import numpy as np
import PIL.Image
import torch
from torch import nn


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


def pixels_to_fill(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(height, width) bool at the model's resolution `size` (height, width): the pixels `mask` (at the image's own
    size) covers once the image is resized to `size`, widened by the reach of the resampling kernel (2 pixels for
    bicubic, more when shrinking; none along an axis already at that size), so that no masked pixel leaks into a
    pixel treated as known, nor a visible one into the filled area when the prediction is resized back."""
    height, width = size
    coverage = PIL.Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), PIL.Image.Resampling.BOX)
    # an axis already at the model's size is not resampled (PIL skips it), so nothing leaks along it
    reach = [
        0 if side == length else math.ceil(2 * max(1.0, side / length))
        for side, length in zip((height, width), mask.shape)
    ]
    covered = torch.from_numpy(np.asarray(coverage) > 0)[None, None].float()
    return nn.functional.max_pool2d(covered, [2 * r + 1 for r in reach], stride=1, padding=reach)[0, 0] > 0


def patches_holding(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(grid_height, grid_width) bool: the patches holding any of the (height, width) `pixels`."""
    return nn.functional.max_pool2d(pixels[None, None].float(), patch_size)[0, 0] > 0


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


__all__ = ["patchify", "patches_holding", "pixels_to_fill", "poisson_fill", "unpatchify"]
