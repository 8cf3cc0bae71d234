"""Image processor of vitlm models: CLIP-style resize, center crop, rescale and normalize, done with PIL and numpy.

This file is copied into saved Hub repos as remote code, so it imports only numpy, PIL, torch and transformers APIs
that exist in every transformers 5.x.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .box_utils import center_to_corners, non_max_suppression
from .inpainting_utils import patches_holding, patchify, pixels_to_fill, poisson_fill, unpatchify

CHANNEL_COUNTS = (1, 3, 4)  # gray, RGB, RGBA


class VitlmImageProcessor(BaseImageProcessor):
    r"""
    Turns images into the `pixel_values` of vitlm models: convert to RGB, resize, center crop, rescale, normalize.

    With the defaults this is exactly open_clip's / OpenAI CLIP's preprocessing: on the same PIL image the output
    matches torchvision's `Resize(224, interpolation=BICUBIC)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(mean,
    std)` (same resized sizes, same crop offsets, same PIL resampling).

    Accepted images, alone or as a batch (a list or tuple of them, a list of such lists, one per sample, which is
    flattened, or a 4-D array / tensor):

    - PIL images of any mode. Transparency (RGBA, LA, PA, palette or `transparency` info) is composited on white.
      16-bit modes (`I;16*`, and `I`, which is how PIL opens 16-bit PNGs) map their full range 0..65535 onto
      0..255; `I` values outside 0..65535 are rejected. `F` images follow the float rule below.
    - numpy arrays and torch tensors: 2-D grayscale, or 3-D with 1, 3 or 4 channels (gray, RGB, RGBA) first or last;
      when both the first and last axis could hold channels, pass `input_data_format`. Values by dtype: uint8 as
      is, uint16 maps 0..65535 onto 0..255, other integer types must lie in 0..255, floats must be finite and lie
      in [0, 1] (scaled by 255) or else in [0, 255] (used as is); bool, complex and other dtypes are rejected.
    - a path to an image file (EXIF orientation applied, as in `transformers.image_utils.load_image`).

    Every image thus first becomes an 8-bit RGB image (float and 16-bit values rounded to the nearest level), so
    `do_rescale` always sees values in 0..255, whatever the input dtype: unlike other transformers processors, a float
    image in [0, 1] is not taken as already rescaled.
    Anything else raises a `ValueError` naming the problem. Deliberately stricter than transformers' CLIP image
    processors: a 4-channel image is RGBA (composited, as above), never four channels to normalize, so `image_mean`
    and `image_std` always have three values.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the image to `size`.
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"shortest_edge": 224}`):
            `{"shortest_edge": N}` resizes the shorter side to N keeping the aspect ratio (the longer side is
            truncated, as torchvision does); `{"height": H, "width": W}` resizes to exactly H x W. An int N means
            `{"shortest_edge": N}`.
        resample (`PIL.Image.Resampling` or `int`, *optional*, defaults to `PIL.Image.Resampling.BICUBIC`):
            PIL resampling filter used for resizing.
        do_center_crop (`bool`, *optional*, defaults to `True`):
            Whether to center crop the image to `crop_size`; an image smaller than the crop is padded with black.
        crop_size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 224, "width": 224}`):
            `{"height": H, "width": W}` of the crop. An int N means `{"height": N, "width": N}`.
        crop_rounding (`str`, *optional*, defaults to `"round"`):
            How a crop offset of half a pixel is settled: `"round"` (half to even, as torchvision's `CenterCrop` used
            by open_clip and timm) or `"floor"` (as transformers' own image processors, e.g. `CLIPImageProcessor`).
            The two differ by one pixel when the resized side exceeds the crop by 3 modulo 4.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the 0..255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Factor used when rescaling.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalize each channel as `(x - image_mean) / image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to OpenAI CLIP's mean):
            Per-channel (RGB) mean, or one value for all three channels.
        image_std (`float` or `list[float]`, *optional*, defaults to OpenAI CLIP's std):
            Per-channel (RGB) standard deviation, or one value for all three channels; no value may be 0.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to convert non-RGB images (gray, RGBA, palette, CMYK, ...) to RGB. When `False`, only RGB
            images (3-channel arrays) are accepted.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        resample: PIL.Image.Resampling | int = PIL.Image.Resampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict[str, int] | int | None = None,
        crop_rounding: str = "round",
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs,
    ):
        # a saved file's `auto_map` names the remote code to load; it is not a setting of the loaded processor
        kwargs.pop("auto_map", None)
        super().__init__(**kwargs)
        options = _validated_options(
            do_resize=do_resize,
            size={"shortest_edge": 224} if size is None else size,
            resample=resample,
            do_center_crop=do_center_crop,
            crop_size={"height": 224, "width": 224} if crop_size is None else crop_size,
            crop_rounding=crop_rounding,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=OPENAI_CLIP_MEAN if image_mean is None else image_mean,
            image_std=OPENAI_CLIP_STD if image_std is None else image_std,
            do_convert_rgb=do_convert_rgb,
        )
        for name, value in options.items():
            setattr(self, name, value)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            drop_auto_map(self)

    def preprocess(
        self,
        images,
        do_resize: bool | None = None,
        size: dict[str, int] | int | None = None,
        resample: PIL.Image.Resampling | int | None = None,
        do_center_crop: bool | None = None,
        crop_size: dict[str, int] | int | None = None,
        crop_rounding: str | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_convert_rgb: bool | None = None,
        input_data_format: str | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """
        Preprocess an image or a batch of images (see the class docstring for what is accepted) into a
        `BatchFeature` whose `pixel_values` are float32 of shape (batch, 3, height, width). Arguments left to `None`
        take the processor's values.

        Args:
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"`, for arrays and tensors whose layout cannot be inferred.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for a torch tensor, `"np"` or `None` for a numpy array.
        """
        overrides = {
            "do_resize": do_resize,
            "size": size,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "crop_rounding": crop_rounding,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
            "do_convert_rgb": do_convert_rgb,
        }
        options = _validated_options(
            **{name: getattr(self, name) if value is None else value for name, value in overrides.items()}
        )
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(
                f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )

        images = _as_list(images)
        geometry = {name: options[name] for name in GEOMETRY_OPTIONS}

        def prepare(image):
            return _resized_rgb(image, input_data_format, **geometry)

        # Decoding, converting and resampling happen in PIL's C code, which releases the GIL: the images of a batch
        # are prepared in as many threads as torch computes with (1 in a DataLoader worker), in their order.
        workers = min(len(images), torch.get_num_threads())
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                pixels = list(pool.map(prepare, images))
        else:
            pixels = [prepare(image) for image in images]
        shapes = {(3, *array.shape[:2]) for array in pixels}
        if len(shapes) > 1:
            raise ValueError(
                f"images have different sizes after preprocessing ({sorted(shapes)}) and cannot be batched; enable "
                "`do_center_crop` or resize to a fixed `size={'height': H, 'width': W}`"
            )
        pixel_values = _rescaled_and_normalized(np.stack(pixels), **{n: options[n] for n in VALUE_OPTIONS})
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def post_process_object_detection(self, outputs, threshold: float = 0.1, target_sizes=None, nms_threshold=None):
        """Turn a detection model's `logits` and `pred_boxes` into scored, labelled boxes.

        Args:
            outputs: with `logits` (batch, tokens, queries) and `pred_boxes` (batch, tokens, 4) normalized (cx, cy, w,
                h) on the processed image.
            threshold (`float`): keep boxes whose score (sigmoid of the best query's logit) exceeds it.
            target_sizes (`(batch, 2)` tensor or list of (height, width), *optional*): the original images' sizes.
                Boxes are then mapped back through this processor's resize and crop into original-image pixels;
                otherwise they stay normalized to the processed image.
            nms_threshold (`float`, *optional*): non-maximum suppression per query: a box is dropped when it
                overlaps a better-scoring box of the same query with an IoU above this (boxes of different queries
                never suppress each other; 1 keeps every box). Off by default: the model is trained with one-to-one
                matching, yet it can still put two boxes on one object.

        Returns:
            One dict per image with `scores`, `labels` (query indices) and `boxes` (x0, y0, x1, y1), best first.
        """
        if not _is_real(threshold) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` must be a number in [0, 1], got {threshold!r}")
        if nms_threshold is not None:
            try:  # True (read as "on") and "0.5" are mistakes, not IoUs
                valid = not isinstance(nms_threshold, (bool, str)) and 0 < float(nms_threshold) <= 1
            except (TypeError, ValueError):
                valid = False
            if not valid:
                raise ValueError(f"`nms_threshold` must be a number in (0, 1] (an IoU) or None, got {nms_threshold!r}")
        logits, boxes = outputs["logits"], center_to_corners(outputs["pred_boxes"].float())
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for {len(logits)} images")
        best = logits.float().max(dim=-1)
        results = []
        for index, (scores, labels, image_boxes) in enumerate(zip(best.values.sigmoid(), best.indices, boxes)):
            if target_sizes is not None:
                height, width = (int(v) for v in target_sizes[index])
                if height <= 0 or width <= 0:
                    raise ValueError(f"target size {index} must be a positive (height, width), got {(height, width)}")
                image_boxes = self._boxes_in_original_pixels(image_boxes, height, width)
            keep = (scores > threshold).nonzero()[:, 0]
            if nms_threshold is not None:
                kept = [keep[labels[keep] == label] for label in labels[keep].unique()]
                kept = [group[non_max_suppression(image_boxes[group], scores[group], nms_threshold)] for group in kept]
                keep = torch.cat(kept) if kept else keep
            keep = keep[scores[keep].argsort(descending=True)]
            results.append({"scores": scores[keep], "labels": labels[keep], "boxes": image_boxes[keep]})
        return results

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Turn a segmentation model's per-patch `logits` into one label map per image, as transformers' segmenters
        do.

        Args:
            outputs: with `logits` (batch, classes, grid_height, grid_width) over the processed image.
            target_sizes (`(batch, 2)` tensor or list of (height, width), *optional*): the original images' sizes.
                The logits are then bilinearly resampled to those pixels through this processor's resize and crop (a
                pixel outside a center crop takes the prediction at the crop's nearest edge); otherwise label maps
                stay on the token grid.

        Returns:
            One (height, width) `torch.LongTensor` of class indices per image.
        """
        logits = outputs["logits"]
        if logits.ndim != 4:
            raise ValueError(f"`logits` must be (batch, classes, height, width), got shape {tuple(logits.shape)}")
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for {len(logits)} images")
        label_maps = []
        for image_logits, target_size in zip(logits.float(), target_sizes):
            height, width = (int(v) for v in target_size)
            label_maps.append(self._logits_in_original_pixels(image_logits[None], height, width)[0].argmax(dim=0))
        return label_maps

    def _logits_in_original_pixels(self, logits, height: int, width: int):
        """Undo this processor's geometry: (1, classes, h, w) logits over the processed image -> over the original
        image's `height` x `width` pixels."""
        resized_width, resized_height = resized_size(width, height, self.size) if self.do_resize else (width, height)
        cropped = self.do_center_crop and (self.crop_size["width"], self.crop_size["height"]) != (
            resized_width,
            resized_height,
        )
        if not cropped:  # the processed image is the whole image, resized
            return torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        # each original pixel's centre, in the processed (cropped) image's normalized coordinates
        left = crop_start(resized_width, self.crop_size["width"], self.crop_rounding)
        top = crop_start(resized_height, self.crop_size["height"], self.crop_rounding)
        xs = ((torch.arange(width) + 0.5) * resized_width / width - left) / self.crop_size["width"] * 2 - 1
        ys = ((torch.arange(height) + 0.5) * resized_height / height - top) / self.crop_size["height"] * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].to(logits)
        return torch.nn.functional.grid_sample(
            logits, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def _boxes_in_original_pixels(self, boxes, height: int, width: int):
        """Undo this processor's geometry: normalized corners on the processed image -> original-image pixels."""
        resized_width, resized_height = resized_size(width, height, self.size) if self.do_resize else (width, height)
        left = top = 0
        processed_width, processed_height = resized_width, resized_height
        if self.do_center_crop:
            processed_width, processed_height = self.crop_size["width"], self.crop_size["height"]
            left = crop_start(resized_width, processed_width, self.crop_rounding)
            top = crop_start(resized_height, processed_height, self.crop_rounding)
        scale = boxes.new_tensor([processed_width, processed_height] * 2)
        offset = boxes.new_tensor([left, top] * 2)
        ratio = boxes.new_tensor([width / resized_width, height / resized_height] * 2)
        upper = boxes.new_tensor([width, height] * 2)
        return torch.minimum(((boxes * scale + offset) * ratio).clamp(min=0), upper)

    def prepare_inpainting(self, image, mask, config) -> BatchFeature:
        """The inputs of a masked image model (`VitlmViTForMaskedImageModeling`, `VitlmViTForInpaintingSynthesis`) that
        fills the pixels where `mask` is set: `pixel_values`, the whole image resized to the model's resolution, and
        `bool_masked_pos`, every patch the resized mask touches (widened by the reach of the resampling kernel, see
        `pixels_to_fill`). An image of another size or shape is resized (not cropped) to the model's resolution, and
        the prediction resized back; only masked pixels take it (`post_process_inpainting`).

        Args:
            image (any image the processor takes: a PIL image of any mode, an array or tensor, a file path; made
                8-bit RGB as for `pixel_values`, transparency composited on white): the image, at any size.
            mask (`PIL.Image.Image` or array of shape `(height, width)`): the image's size, nonzero where to inpaint
                (a generative model also needs it binary, neither empty nor full: `check_generative_mask`).
            config (`VitlmViTMAEConfig` or `VitlmViTSynthesisConfig`): the model's config (its resolution and patch
                size; an MAE model trained with `norm_pix_loss=True` is refused, since it predicts per-patch
                normalized pixels, whose mean and variance are unknown for masked patches).

        Returns:
            A `BatchFeature` for one image, to pass to the model (`model(**inputs)`, after
            `inputs.to(model.device, model.dtype)`) and then, with the model's output, to `post_process_inpainting`.
        """
        self._check_inpainting_processor()
        if getattr(config, "norm_pix_loss", False):
            raise ValueError(
                "this model predicts per-patch normalized pixels (norm_pix_loss=True), whose mean and variance are "
                "unknown for masked patches; inpainting needs a model trained with norm_pix_loss=False"
            )
        original, mask = _inpainting_image_and_mask(image, mask)
        height, width = (
            (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
        )
        pixel_values = self(
            PIL.Image.fromarray(original),
            size={"height": height, "width": width},
            do_center_crop=False,
            return_tensors="pt",
        )["pixel_values"]
        bool_masked_pos = patches_holding(pixels_to_fill(mask, (height, width)), config.patch_size).reshape(1, -1)
        return BatchFeature(data={"pixel_values": pixel_values, "bool_masked_pos": bool_masked_pos})

    def post_process_inpainting(self, outputs, pixel_values, image, mask, blend: bool = True) -> PIL.Image.Image:
        """Paste a masked image model's prediction into the image where `mask` is set; every other pixel is returned
        unchanged (as RGB), bit for bit.

        Args:
            outputs: the model's output for the inputs of `prepare_inpainting(image, mask, ...)`: its `logits`
                (predicted patches) and `mask` (the patches it masked).
            pixel_values (`torch.Tensor` of shape `(1, 3, height, width)`): the `pixel_values` given to the model.
            image, mask: those given to `prepare_inpainting`.
            blend (`bool`): Poisson-blend the prediction into the image. Whole patches are predicted, so the model
                never sees the visible pixels that share a patch with masked ones; blending keeps the prediction's
                own detail (its steps from pixel to pixel) and takes its level from the real pixels around the mask
                (`poisson_fill`). Without it the patches are pasted as predicted and a seam can show.

        The predicted pixels are mapped back through this processor's normalization and rescaling, resized to the
        image's size with its resampling, and composited inside the mask only. Returns an RGB image of the image's
        size.
        """
        self._check_inpainting_processor()
        original, mask = _inpainting_image_and_mask(image, mask)
        logits, bool_masked_pos = outputs["logits"], outputs["mask"].bool()
        channels, height, width = pixel_values.shape[1:]
        patch_size = round((logits.shape[-1] / channels) ** 0.5)
        grid_size = (height // patch_size, width // patch_size)
        if logits.shape[1:] != (grid_size[0] * grid_size[1], patch_size**2 * channels):
            raise ValueError(
                f"`outputs.logits` of shape {tuple(logits.shape)} are not the patches of `pixel_values` of shape "
                f"{tuple(pixel_values.shape)}: pass the pixel values the model was given"
            )
        patches = torch.where(bool_masked_pos[..., None], logits, patchify(pixel_values, patch_size))
        filled = unpatchify(patches, patch_size, grid_size)[0].float().cpu()
        if blend:
            # each masked patch is its own region: a step between two patches' predictions is not detail the model
            # drew, only their separate errors, so it is not kept
            patch_ids = torch.arange(1, grid_size[0] * grid_size[1] + 1) * bool_masked_pos.reshape(-1).cpu()
            regions = patch_ids.reshape(grid_size).repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
            unknown = pixels_to_fill(mask, (height, width))
            filled = poisson_fill(pixel_values[0].float().cpu(), unknown, filled, regions).float()
        mean = torch.tensor(self.image_mean).view(-1, 1, 1)
        std = torch.tensor(self.image_std).view(-1, 1, 1)
        filled = ((filled * std + mean) / self.rescale_factor).round().clamp(0, 255)
        filled = PIL.Image.fromarray(filled.byte().permute(1, 2, 0).numpy())
        filled = np.asarray(filled.resize((original.shape[1], original.shape[0]), resample=self.resample))
        return PIL.Image.fromarray(np.where(mask[..., None], filled, original))

    @staticmethod
    def check_generative_mask(mask) -> None:
        """Refuse, with one message each, a mask a generative inpainting model cannot take: not 2-D, not binary (0
        where the image is kept, one other value where it is inpainted), empty (nothing to generate) or full (nothing
        to continue). An MAE reconstruction takes any of them (an empty mask returns the image, a full one predicts
        every pixel)."""
        values = mask_values(mask)
        levels = np.unique(values)
        if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
            shown = ", ".join(f"{level:g}" for level in levels[:4]) + (", ..." if len(levels) > 4 else "")
            raise ValueError(
                f"`mask` must be binary (0 where the image is kept, one other value where it is inpainted), got "
                f"{len(levels)} values: {shown}"
            )
        if not (values != 0).any():
            raise ValueError("`mask` covers no pixel: there is nothing to inpaint")
        if (values != 0).all():
            raise ValueError("`mask` covers every pixel: inpainting continues the visible pixels, and none are left")

    def _check_inpainting_processor(self):
        if not (self.do_rescale and self.do_normalize):
            raise ValueError(
                "inpainting maps predictions back to pixels through the processor's rescale and normalize"
            )


def _inpainting_image_and_mask(image, mask) -> tuple[np.ndarray, np.ndarray]:
    """(height, width, 3) uint8 RGB pixels (any image the processor takes, converted as for `pixel_values`) and the
    (height, width) bool mask (nonzero values), checked to match."""
    original = np.asarray(as_rgb(as_pil_image(image)))
    values = mask_values(mask)
    if values.shape != original.shape[:2]:
        raise ValueError(
            f"`mask` has size {values.shape[1]}x{values.shape[0]} (width x height), the image "
            f"{original.shape[1]}x{original.shape[0]}: they must match"
        )
    return original, values != 0


def mask_values(mask) -> np.ndarray:
    """A mask's (height, width) values: a PIL image's as 8-bit gray levels, an array's as they are."""
    values = np.asarray(mask.convert("L") if isinstance(mask, PIL.Image.Image) else mask)
    if values.ndim != 2:
        raise ValueError(f"`mask` must be 2-D (height, width), got shape {values.shape}")
    return values


def drop_auto_map(*owners) -> None:
    """Saving with transformers' `custom_object_save` sets `auto_map` (for `trust_remote_code`) on the saved objects,
    for the files written next; it is taken off again afterwards, as transformers does for tokenizers, so that saving
    leaves `to_dict()` unchanged and a reloaded object equals the saved one."""
    for owner in owners:
        owner.__dict__.pop("auto_map", None)


def _validated_options(
    size, crop_size, crop_rounding, resample, rescale_factor, image_mean, image_std, **flags
) -> dict:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):  # "false" or null would be taken for True or False unsaid
            raise ValueError(f"`{name}` must be true or false, got {value!r}")
    if not _is_real(rescale_factor) or not math.isfinite(rescale_factor) or rescale_factor <= 0:
        raise ValueError(f"`rescale_factor` must be a positive number, got {rescale_factor!r}")
    if crop_rounding not in ("round", "floor"):
        raise ValueError(f"`crop_rounding` must be 'round' or 'floor', got {crop_rounding!r}")
    try:
        resample = PIL.Image.Resampling(resample)
    except ValueError:
        raise ValueError(f"`resample` must be a PIL resampling filter (0 to 5), got {resample!r}") from None
    image_std = _per_channel(image_std, "image_std")
    if min(image_std) < MIN_STD:
        raise ValueError(
            f"`image_std` values must be at least {MIN_STD:g} (they divide the pixel values), got {image_std}"
        )
    return {
        **flags,
        "rescale_factor": float(rescale_factor),
        "size": _size_dict(size, "size", int_key="shortest_edge"),
        "crop_size": _size_dict(crop_size, "crop_size", int_key=None),
        "crop_rounding": crop_rounding,
        "resample": resample,
        "image_mean": _per_channel(image_mean, "image_mean"),
        "image_std": image_std,
    }


def _size_dict(size, name: str, int_key: str | None) -> dict[str, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = {int_key: size} if int_key else {"height": size, "width": size}
    allowed = [{"height", "width"}] + ([{int_key}] if int_key else [])
    if not isinstance(size, dict) or set(size) not in allowed:
        expected = " or ".join(str(sorted(keys)) for keys in allowed)
        raise ValueError(f"`{name}` must be a dict with keys {expected}, got {size!r}")
    if any(
        isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIDE for value in size.values()
    ):
        raise ValueError(f"`{name}` values must be positive integers up to {MAX_SIDE}, got {size!r}")
    return dict(size)


def _per_channel(values, name: str) -> list[float]:
    values = [values] * 3 if _is_real(values) else list(values) if isinstance(values, (list, tuple)) else values
    if not isinstance(values, list) or len(values) != 3:
        count = f"{len(values)}: " if isinstance(values, list) else ""
        raise ValueError(f"`{name}` must have one value per RGB channel (3), got {count}{values!r}")
    if not all(_is_real(value) and math.isfinite(value) for value in values):
        raise ValueError(f"`{name}` values must be finite numbers, got {values}")
    return [float(value) for value in values]


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)) and images and all(isinstance(sample, (list, tuple)) for sample in images):
        # one list of images per sample, as processors of multi-image models get them: one flat batch, as in CLIP
        images = [image for sample in images for image in sample]
    if isinstance(images, (list, tuple)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4):
        images = list(images)
    else:
        images = [images]
    if not images:
        raise ValueError("got an empty batch of images")
    return images


# the options that shape an image (applied per image, in PIL) and those that map its 8-bit values (on the whole batch)
GEOMETRY_OPTIONS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_rounding", "do_convert_rgb")
VALUE_OPTIONS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")


def _resized_rgb(
    image, input_data_format, do_resize, size, resample, do_center_crop, crop_size, crop_rounding, do_convert_rgb
) -> np.ndarray:
    """One image converted to RGB, resized and center cropped: (height, width, 3) uint8."""
    image = as_pil_image(image, input_data_format)
    if do_convert_rgb:
        image = as_rgb(image)
    elif image.mode != "RGB":
        raise ValueError(f"image has mode {image.mode!r}, not RGB, and `do_convert_rgb` is False")
    if do_resize:
        # Cropping first and resampling only what the crop keeps (PIL's `box`) would be faster, but PIL then computes
        # the windows' positions in other floating-point steps, and about one pixel in 10,000 differs by one level.
        image = image.resize(resized_size(image.width, image.height, size), resample=resample)
    if do_center_crop:
        left = crop_start(image.width, crop_size["width"], crop_rounding)
        top = crop_start(image.height, crop_size["height"], crop_rounding)
        # PIL fills the part of the box outside the image with 0, like torchvision's zero padding
        image = image.crop((left, top, left + crop_size["width"], top + crop_size["height"]))
    return np.asarray(image)


def _rescaled_and_normalized(
    pixels: np.ndarray, do_rescale, rescale_factor, do_normalize, image_mean, image_std
) -> np.ndarray:
    """A (batch, height, width, 3) uint8 batch as (batch, 3, height, width) float32, rescaled and normalized in one
    pass per step over the whole batch (torch's vectorized, multi-threaded kernels; the same float32 operations, in
    the same order, as per image)."""
    values = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32)
    if do_rescale:
        values = values * torch.tensor(rescale_factor, dtype=torch.float32)
    if do_normalize:
        mean = torch.tensor(image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(image_std, dtype=torch.float32)[:, None, None]
        values = (values - mean) / std
    return values.contiguous().numpy()


def as_pil_image(image, input_data_format=None) -> PIL.Image.Image:
    """Any image the processor accepts (a file path, PIL image, numpy array or torch tensor) as a PIL image: arrays
    with 1, 3 or 4 channels first or last (`input_data_format` says which when the shape cannot), 16-bit and float
    values mapped to 8 bits, files turned upright by their EXIF orientation. Anything else raises a ValueError
    naming the problem."""
    if isinstance(image, (str, os.PathLike)):
        image = _open(image)
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"got a zero-sized image ({image.width}x{image.height})")
        # PIL's own conversion of 16-bit and float modes clips to 0..255 instead of mapping the range
        if image.mode == "I" or image.mode.startswith("I;16"):
            values = np.asarray(image)
            if values.min() < 0 or values.max() > 65535:
                raise ValueError(
                    f"16-bit image (mode {image.mode!r}) values must lie in [0, 65535], "
                    f"got [{values.min()}, {values.max()}]"
                )
            return _array_to_pil(values.astype(np.uint16), input_data_format)
        if image.mode == "F":
            return _array_to_pil(np.asarray(image), input_data_format)
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        # numpy has no bfloat16
        image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, input_data_format)
    raise ValueError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, numpy array, torch tensor or file path"
    )


def _open(path) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            image.load()
            # photos store their orientation in EXIF; transformers' `load_image` applies it too
            return PIL.ImageOps.exif_transpose(image)
    except (OSError, PIL.Image.DecompressionBombError) as error:  # missing, unreadable, truncated, not an image, huge
        raise ValueError(f"cannot read image file {os.fspath(path)!r}: {error}") from error


def _array_to_pil(array: np.ndarray, input_data_format) -> PIL.Image.Image:
    if array.ndim not in (2, 3):
        raise ValueError(f"an image must be 2-D (height, width) or 3-D (with channels), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"got a zero-sized image of shape {array.shape}")
    if array.ndim == 3:
        if _is_channels_first(array.shape, input_data_format):
            array = array.transpose(1, 2, 0)
        if array.shape[-1] == 1:
            array = array[..., 0]
    # fromarray infers the mode from the shape: L, RGB or RGBA
    return PIL.Image.fromarray(np.ascontiguousarray(_to_uint8(array)))


def _is_channels_first(shape: tuple, input_data_format) -> bool:
    if input_data_format is not None:
        channels_first = input_data_format == "channels_first"
        channels = shape[0] if channels_first else shape[-1]
        if channels not in CHANNEL_COUNTS:
            raise ValueError(f"an image needs 1, 3 or 4 channels, got {channels} ({input_data_format}, shape {shape})")
        return channels_first
    first, last = shape[0] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and last:
        raise ValueError(
            f"cannot tell whether the image of shape {shape} is channels-first or channels-last; pass "
            "`input_data_format='channels_first'` or `'channels_last'`"
        )
    if not (first or last):
        raise ValueError(f"an image needs 1, 3 or 4 channels in its first or last axis, got shape {shape}")
    return first


def _to_uint8(array: np.ndarray) -> np.ndarray:
    kind, bits = array.dtype.kind, array.dtype.itemsize * 8
    if kind == "u" and bits == 8:
        return array
    if kind == "u" and bits == 16:
        return np.rint(array / 257).astype(np.uint8)  # 65535 / 257 == 255
    if kind in ("i", "u"):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"{array.dtype} image values must lie in [0, 255] (use uint16 for 16-bit images), "
                f"got [{array.min()}, {array.max()}]"
            )
        return array.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values")
        array = array.astype(np.float64)
        low, high = array.min(), array.max()
        if low < 0 or high > 255 or 1 + FLOAT_OVERSHOOT < high < 2:
            # (1, 2): a [0, 1] image with a stray value, which the [0, 255] reading would turn black
            raise ValueError(f"float image values must lie in [0, 1] or [0, 255], got [{low:g}, {high:g}]")
        if high <= 1 + FLOAT_OVERSHOOT:
            array = np.minimum(array, 1) * 255
        return np.rint(array).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}; expected an integer or float type")


def as_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` in RGB mode, transparent pixels composited on white."""
    if "transparency" in image.info or any(band in ("A", "a") for band in image.getbands()):
        # composite on white, as transformers' `convert_to_rgb` does: a plain convert would show hidden colors
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image)
    return image if image.mode == "RGB" else image.convert("RGB")


MAX_RESIZED_PIXELS = 2**26  # about 67 million: 200 MB as 8-bit RGB
MAX_SIDE = 8192  # of a `size` or `crop_size`: 8192 x 8192 is MAX_RESIZED_PIXELS
MIN_STD = 1e-6
FLOAT_OVERSHOOT = 1e-3  # a [0, 1] image computed in floating point may end a little above 1


def resized_size(width: int, height: int, size: dict[str, int]) -> tuple[int, int]:
    """The (width, height) a `width` x `height` image is resized to for a processor `size`: {"height", "width"}
    exactly, or {"shortest_edge"} keeping the aspect ratio."""
    if "height" in size:
        return size["width"], size["height"]
    # torchvision's rule: the short side gets the requested length, the long side is truncated, not rounded
    short, long = sorted((width, height))
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    if new_short * new_long > MAX_RESIZED_PIXELS:
        # a thin strip (1 x 2,000,000 is a few kB as a PNG) would be stretched to gigabytes before the crop
        raise ValueError(
            f"a {width}x{height} image would be resized to {new_short * new_long:,} pixels to give its short side "
            f"{new_short}: the limit is {MAX_RESIZED_PIXELS:,}; crop it to a less elongated shape first"
        )
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_start(length: int, crop: int, rounding: str) -> int:
    """Where a centered crop of `crop` pixels starts along a side of `length` pixels (negative: the crop pads before
    the image), rounded as the processor's `crop_rounding` says ("round" or "floor")."""
    # inside the image: torchvision rounds half to even, transformers floors; padding before it: (crop - length) // 2
    if crop > length:
        return -((crop - length) // 2)
    return (length - crop) // 2 if rounding == "floor" else int(round((length - crop) / 2))


__all__ = ["VitlmImageProcessor"]
