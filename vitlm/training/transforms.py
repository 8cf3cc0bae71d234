"""Per-example preprocessing for `datasets.Dataset.with_transform`: augmentation on PIL images, then the model's
image processor for the final resize / crop / normalization, so training sees exactly the processor's statistics.

Each `*_transform` returns a function from a batch of examples (a dict of columns) to the columns a collator in
`vitlm.training.collators` reads. The transforms run lazily in the data loader; a training transform's random draws
are a pure function of (data seed, epoch, example index) through `EpochSeed`, so a run resumed mid-epoch replays them
exactly whatever the state of the global generator (Trainer restores that one only after drawing the first resumed
batch). The index is the `example_index` column that `with_example_index` adds; `DataEpochCallback`
(`vitlm.training.trainer`) sets the seed and epoch at every epoch start.
"""

import hashlib
from contextlib import nullcontext

import numpy as np
import PIL.Image
import torch
from torchvision.transforms import v2

from ..models.image_processing_vitlm import crop_start, resized_size

INDEX_COLUMN = "example_index"


def with_example_index(dataset):
    """`dataset` with an `example_index` column (its row numbers), which keys the training transforms' random draws:
    add it before `with_transform`. Without it, the transforms draw from torch's global generator."""
    if INDEX_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


class _SeededStream:
    """A context in which torch's global CPU generator draws from a stream of its own, started from `seed`: entering
    it again continues that stream (an example's image augmentation, then its caption draw). torchvision's random
    transforms take no generator, so the global one is swapped in for the block and put back after: the draws are a
    function of `seed` alone and the model's dropout stream never sees them."""

    def __init__(self, seed: int):
        self.state = torch.Generator().manual_seed(seed).get_state()

    def __enter__(self):
        self.saved = torch.default_generator.get_state()  # not torch.manual_seed, which would reseed CUDA too
        torch.default_generator.set_state(self.state)

    def __exit__(self, *exc_info):
        self.state = torch.default_generator.get_state()
        torch.default_generator.set_state(self.saved)


class EpochSeed:
    """The (seed, epoch) keying the random draws of a training transform or collator. It lives in a shared-memory
    tensor, so data loader workers, persistent ones included, see `set_epoch` calls of the main process."""

    def __init__(self):
        self.state = torch.zeros(2, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int, seed: int | None = None):
        if seed is not None:
            self.state[0] = seed
        self.state[1] = epoch

    def rng(self, *key):
        """A context in which torch's global CPU generator draws a pure function of (seed, epoch, *key); a plain
        context (the global generator as it is) when the key holds None, i.e. the examples carry no index."""
        if any(part is None for part in key):
            return nullcontext()
        # blake2b rather than `hash`, which differs between processes for strings
        digest = hashlib.blake2b(repr((*self.state.tolist(), *key)).encode(), digest_size=8).digest()
        return _SeededStream(int.from_bytes(digest, "little") >> 1)


class TrainTransform:
    """A training transform `function(examples, rngs)` for `datasets.Dataset.with_transform`, where `rngs[i]` is
    example i's random context (`EpochSeed.rng` of its `example_index`); the index is passed on for the collator."""

    def __init__(self, function):
        self.function = function
        self.epoch_seed = EpochSeed()

    def set_epoch(self, epoch: int, seed: int | None = None):
        self.epoch_seed.set_epoch(epoch, seed)

    def __call__(self, examples):
        indices = examples.get(INDEX_COLUMN)
        if indices is None:
            return self.function(examples, None)
        outputs = self.function(examples, [self.epoch_seed.rng(index) for index in indices])
        return {**outputs, INDEX_COLUMN: indices}


def crop_size(image_processor) -> tuple[int, int]:
    """(height, width) of the processor's output."""
    if image_processor.do_center_crop:
        return image_processor.crop_size["height"], image_processor.crop_size["width"]
    size = image_processor.size
    return size["height"], size["width"]


def augmentation(
    image_processor,
    scale=(0.35, 1.0),
    flip: bool = True,
    jitter: float = 0.2,
    hue: float = 0.0,
    grayscale: float = 0.0,
    size: int | None = None,
):
    """Inception-style training augmentation to the processor's output size (or `size` square): random resized crop,
    horizontal flip, colour jitter (brightness, contrast and saturation by `jitter`, hue by `hue`), grey with
    probability `grayscale` (PIL in, PIL out)."""
    steps = [v2.RandomResizedCrop(size or crop_size(image_processor), scale=scale, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if jitter or hue:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue))
    if grayscale:
        steps.append(v2.RandomGrayscale(grayscale))
    return v2.Compose(steps)


def pixel_values(images, image_processor, augment=None, rngs=None) -> list[torch.Tensor]:
    return [group[0] for group in grouped_pixel_values([[image] for image in images], image_processor, augment, rngs)]


def grouped_pixel_values(groups, image_processor, augment=None, rngs=None) -> list[torch.Tensor]:
    """One (group size, channels, height, width) tensor per group of images; the images of a group (an image and its
    twins) share one augmentation draw: the same crop, the same jitter."""
    groups = [[image.convert("RGB") for image in group] for group in groups]
    if augment is None:  # evaluation: the processor's own resize and crop
        processed = image_processor([image for group in groups for image in group], return_tensors="pt")
        return list(processed["pixel_values"].split([len(group) for group in groups]))
    augmented = []
    for group, rng in zip(groups, rngs or [nullcontext()] * len(groups)):
        with rng:
            augmented.append(list(augment(*group)) if len(group) > 1 else [augment(group[0])])
    # already at the output size: the processor only rescales and normalizes
    processed = image_processor(
        [image for group in augmented for image in group], do_resize=False, do_center_crop=False, return_tensors="pt"
    )
    return list(processed["pixel_values"].split([len(group) for group in augmented]))


def classification_transform(image_processor, train: bool, image_column="image", label_column="label", **augment):
    augment = augmentation(image_processor, **augment) if train else None

    def transform(examples, rngs=None):
        return {
            "pixel_values": pixel_values(examples[image_column], image_processor, augment, rngs),
            "labels": examples[label_column],
        }

    return TrainTransform(transform) if train else transform


def caption_weights_tensor(caption_weights) -> torch.Tensor:
    """`caption_weights` as a float64 tensor for `torch.multinomial`, refused unless finite, non-negative and not all
    zero."""
    weights = torch.tensor([float(weight) for weight in caption_weights], dtype=torch.float64)
    if weights.numel() == 0 or not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"caption weights must be finite, non-negative and not all zero, got {caption_weights}")
    return weights


def contrastive_transform(
    image_processor,
    train: bool,
    image_column="image",
    caption_column="caption",
    augment_images=True,
    caption_weights=None,
    twin_columns=None,
    **augment,
):
    """Images and their captions. Where an image has several captions (a list), training draws one per step (keyed
    like the augmentations), uniformly or with `caption_weights` (one per list position; the shapes world's
    [full, shape-only, colour-only] at `[0, 1, 0]` trains on shape words alone), and evaluation takes the first.
    `twin_columns` ((twins, twin captions), training only) adds each image's twins, augmented as the image is, and
    the captions each twin must match as the image does (`vitlm.data.shapes.generate(twins=True)`)."""
    # no flip: captions may say "left" or "right"
    augment = augmentation(image_processor, **{"flip": False, **augment}) if train and augment_images else None
    weights = None if caption_weights is None else caption_weights_tensor(caption_weights)
    twins, twin_captions = twin_columns if train and twin_columns else (None, None)

    def pick(captions, rng):
        if isinstance(captions, str):
            if train and weights is not None:
                raise ValueError(
                    f"caption weights need a list of captions per example, got the one caption {captions!r}"
                )
            return captions
        if not train:
            return captions[0]
        if weights is not None and len(captions) != len(weights):
            raise ValueError(f"{len(weights)} caption weights for an example with {len(captions)} captions")
        with rng:
            if weights is None:
                return captions[int(torch.randint(len(captions), ()))]
            return captions[int(torch.multinomial(weights, 1))]

    def transform(examples, rngs=None):
        rngs = rngs or [nullcontext()] * len(examples[caption_column])
        groups = [[image] for image in examples[image_column]]
        if twins is not None:
            groups = [[*group, *others] for group, others in zip(groups, examples[twins])]
        grouped = grouped_pixel_values(groups, image_processor, augment, rngs)
        outputs = {
            "pixel_values": [group[0] for group in grouped],
            # drawn after the image's augmentation, from the same stream
            "caption": [pick(captions, rng) for captions, rng in zip(examples[caption_column], rngs)],
        }
        if twins is not None:
            outputs.update(twin_pixel_values=[group[1:] for group in grouped], twin_captions=examples[twin_captions])
        return outputs

    return TrainTransform(transform) if train else transform


def inpainting_transform(image_processor, train: bool, image_column="image", **augment):
    augment = augmentation(image_processor, **augment) if train else None

    def transform(examples, rngs=None):
        return {"pixel_values": pixel_values(examples[image_column], image_processor, augment, rngs)}

    return TrainTransform(transform) if train else transform


def boxes_to_processed(boxes: torch.Tensor, width: int, height: int, image_processor) -> torch.Tensor:
    """Pixel (x0, y0, x1, y1) boxes on an original image -> normalized (cx, cy, w, h) on the processor's output
    (the inverse of `VitlmImageProcessor.post_process_object_detection`'s mapping), clipped to the crop."""
    processor = image_processor
    resized_width, resized_height = (width, height)
    if processor.do_resize:
        resized_width, resized_height = resized_size(width, height, processor.size)
    out_height, out_width, left, top = resized_height, resized_width, 0, 0
    if processor.do_center_crop:
        out_height, out_width = crop_size(processor)
        left = crop_start(resized_width, out_width, processor.crop_rounding)
        top = crop_start(resized_height, out_height, processor.crop_rounding)
    scale = boxes.new_tensor([resized_width / width, resized_height / height] * 2)
    boxes = boxes * scale - boxes.new_tensor([left, top] * 2)
    boxes = (boxes / boxes.new_tensor([out_width, out_height] * 2)).clamp(0, 1)
    (x0, y0, x1, y1) = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def detection_transform(
    image_processor, train: bool, image_column="image", objects_column="objects", bbox_format="xyxy", jitter=0.2
):
    """Images with their objects' boxes (normalized cx, cy, w, h on the processed image) and category indices.
    Training flips image and boxes together and jitters colours; the geometry is the processor's, so training
    and evaluation boxes live in the same frame. `bbox_format`: "xyxy" (corners, the shapes world) or "xywh"
    (COCO's corner + size), in pixels."""
    if bbox_format not in ("xyxy", "xywh"):
        raise ValueError(f"bbox_format must be 'xyxy' or 'xywh', got {bbox_format!r}")
    colour = v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter) if train and jitter else None

    def transform(examples, rngs=None):
        images, boxes, labels = [], [], []
        rngs = rngs or [nullcontext()] * len(examples[image_column])
        for image, objects, rng in zip(examples[image_column], examples[objects_column], rngs):
            image = image.convert("RGB")
            width, height = image.size
            pixel_boxes = torch.tensor(objects["bbox"], dtype=torch.float32).reshape(-1, 4)
            if bbox_format == "xywh":
                pixel_boxes[:, 2:] += pixel_boxes[:, :2]
            with rng:
                if train and torch.rand(()) < 0.5:
                    image = v2.functional.horizontal_flip(image)
                    pixel_boxes = torch.stack(
                        [width - pixel_boxes[:, 2], pixel_boxes[:, 1], width - pixel_boxes[:, 0], pixel_boxes[:, 3]],
                        -1,
                    )
                if colour is not None:
                    image = colour(image)
            image_boxes = boxes_to_processed(pixel_boxes, width, height, image_processor)
            keep = (image_boxes[:, 2] > 0) & (image_boxes[:, 3] > 0)  # objects the crop cut away entirely
            images.append(image)
            boxes.append(image_boxes[keep])
            labels.append(torch.tensor(objects["category"], dtype=torch.long)[keep])
        return {"pixel_values": pixel_values(images, image_processor), "boxes": boxes, "class_labels": labels}

    return TrainTransform(transform) if train else transform


def label_map_to_processed(label_map: PIL.Image.Image, image_processor, ignore_index: int) -> torch.Tensor:
    """A label map (a PIL image of class indices, mode "L" or "I") through the processor's geometry: resized with
    nearest-neighbour (a class index is no intensity to blend), center cropped; padding the crop adds is
    `ignore_index`. Returns (height, width) long."""
    processor = image_processor
    if processor.do_resize:
        label_map = label_map.resize(resized_size(*label_map.size, processor.size), resample=PIL.Image.NEAREST)
    labels = torch.from_numpy(np.asarray(label_map, dtype=np.int64))
    if not processor.do_center_crop:
        return labels
    out_height, out_width = crop_size(processor)
    left = crop_start(labels.shape[1], out_width, processor.crop_rounding)
    top = crop_start(labels.shape[0], out_height, processor.crop_rounding)
    cropped = torch.full((out_height, out_width), ignore_index, dtype=torch.long)
    rows = slice(max(top, 0), min(top + out_height, labels.shape[0]))
    cols = slice(max(left, 0), min(left + out_width, labels.shape[1]))
    cropped[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = labels[rows, cols]
    return cropped


def segmentation_transform(image_processor, train: bool, image_column: str, label_maps, ignore_index: int):
    """Images with their label maps ((height, width) class indices on the processed image, `ignore_index` where
    nothing is known). `label_maps(examples)` gives one PIL label map per example (from a mask column, or drawn from
    the shapes world's per-object masks). Training flips image and map together; no crop or colour change (a crop
    would cut objects, and colours are what the shapes world's classes are)."""

    def transform(examples, rngs=None):
        images, labels = [], []
        rngs = rngs or [nullcontext()] * len(examples[image_column])
        for image, label_map, rng in zip(examples[image_column], label_maps(examples), rngs):
            image = image.convert("RGB")
            if image.size != label_map.size:
                raise ValueError(f"an image of {image.size} has a label map of {label_map.size} (width, height)")
            with rng:
                if train and torch.rand(()) < 0.5:
                    image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
                    label_map = label_map.transpose(PIL.Image.FLIP_LEFT_RIGHT)
            images.append(image)
            labels.append(label_map_to_processed(label_map, image_processor, ignore_index))
        return {"pixel_values": pixel_values(images, image_processor), "labels": labels}

    return TrainTransform(transform) if train else transform


__all__ = [
    "INDEX_COLUMN",
    "EpochSeed",
    "TrainTransform",
    "augmentation",
    "boxes_to_processed",
    "classification_transform",
    "contrastive_transform",
    "crop_size",
    "detection_transform",
    "inpainting_transform",
    "label_map_to_processed",
    "segmentation_transform",
    "with_example_index",
]


def local_crop_size(image_processor, patch_size: int) -> int:
    """DINO's local crop side: 96 / 224 of the global crop's, a whole number of patches (at least one)."""
    side = crop_size(image_processor)[0]
    return max(patch_size, round(side * 96 / 224 / patch_size) * patch_size)


def multi_crop_transform(
    image_processor,
    train: bool,
    image_column="image",
    patch_size: int = 16,
    num_local_crops: int = 4,
    global_scale=(0.4, 1.0),
    local_scale=(0.05, 0.4),
    hue: float = 0.1,
    grayscale: float = 0.2,
):
    """DINO's multi-crop views of each image: two global crops at the processor's size (`global_scale` of the
    image's area) and `num_local_crops` local ones (`local_scale`, `local_crop_size`), each flipped, colour-jittered
    (brightness, contrast, saturation 0.4, hue `hue`) and turned grey with probability `grayscale` on its own
    (`global_crops` (2, C, H, W) and `local_crops` (N, C, h, w) per example). Evaluation takes the processor's view as
    both global crops and no local crop: the loss then measures how far the student's answer on an image is from the
    teacher's."""
    if not train:

        def evaluation(examples):
            views = pixel_values(examples[image_column], image_processor)
            return {"global_crops": [torch.stack([view, view]) for view in views]}

        return evaluation
    colour = dict(jitter=0.4, hue=hue, grayscale=grayscale)
    global_view = augmentation(image_processor, scale=global_scale, **colour)
    local_side = local_crop_size(image_processor, patch_size)
    local_view = augmentation(image_processor, scale=local_scale, size=local_side, **colour)

    def normalize(images):
        return image_processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]

    def transform(examples, rngs=None):
        images = [image.convert("RGB") for image in examples[image_column]]
        outputs = {"global_crops": [], "local_crops": []}
        for image, rng in zip(images, rngs or [nullcontext()] * len(images)):
            with rng:
                global_crops = [global_view(image) for _ in range(2)]
                local_crops = [local_view(image) for _ in range(num_local_crops)]
            outputs["global_crops"].append(normalize(global_crops))
            if num_local_crops:
                outputs["local_crops"].append(normalize(local_crops))
        return {name: value for name, value in outputs.items() if value}

    return TrainTransform(transform)
