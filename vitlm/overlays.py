"""The one colour convention of vitlm's pictures: values and labels are coloured along the jet colour map (blue
through cyan, yellow to red) and blended over the image with one weight. The attention maps colour heat by its value
(`jet`); the segmentation overlay gives its k-th label of n the jet colour of (k + 0.5) / n (`label_colours`), so that
its labels are as far apart on the same scale as n colours can be."""

import numpy as np
import PIL.Image


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, blue through cyan, yellow to red."""
    channels = [np.clip(1.5 - np.abs(4 * values - offset), 0, 1) for offset in (3, 2, 1)]
    return (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)


def label_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB: `count` labels spread evenly along the jet colour map."""
    return jet((np.arange(count) + 0.5) / max(count, 1))


def blend(picture: PIL.Image.Image, colours: np.ndarray, alpha: float, where: np.ndarray | None = None):
    """`picture` with (height, width, 3) `colours` blended over it at weight `alpha`, only where `where` is True
    (everywhere without it)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}")
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * pixels + alpha * colours.astype(np.float32)
    if where is not None:
        blended = np.where(where[..., None], blended, pixels)
    return PIL.Image.fromarray(blended.round().astype(np.uint8))


__all__ = ["blend", "jet", "label_colours"]
