"""Batch collators for the four tasks. They read the columns the transforms in `vitlm.training.transforms` produce
and return keyword arguments of the matching model's `forward`."""

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.transforms import v2

from ..models.modeling_dual_encoder import contrastive_loss, scaled_similarity
from ..models.modeling_synthesis import masking_ratio
from .transforms import INDEX_COLUMN, EpochSeed


@dataclass
class ClassificationCollator:
    """`pixel_values` and `labels`. With `mixup_alpha` or `cutmix_alpha` > 0, each batch is mixed (one of the two,
    chosen at random, as timm does) and `labels` become soft targets of shape (batch, num_labels): use it for the
    training loader only, with a loss that accepts soft targets (`soft_target_cross_entropy`). When the examples carry
    their `example_index` (training transforms of `vitlm.training.transforms`), the mixing draws are a pure function of
    (data seed, epoch, the batch's first example index), like the augmentations, so resumed runs replay them."""

    num_labels: int | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix: v2.Transform | None = field(init=False, default=None)
    epoch_seed: EpochSeed = field(init=False, default_factory=EpochSeed)

    def __post_init__(self):
        mixes = []
        if self.mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_labels))
        if self.cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_labels))
        if mixes and self.num_labels is None:
            raise ValueError("mixup / cutmix need `num_labels` to build soft targets")
        self.mix = v2.RandomChoice(mixes) if mixes else None

    def set_epoch(self, epoch: int, seed: int | None = None):
        self.epoch_seed.set_epoch(epoch, seed)

    def __call__(self, examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
        if self.mix is not None:
            # an example is in one batch an epoch, so its index names the batch; "mix" keeps this stream apart from
            # the example's own augmentation stream
            with self.epoch_seed.rng("mix", examples[0].get(INDEX_COLUMN)):
                pixel_values, labels = self.mix(pixel_values, labels)
        return {"pixel_values": pixel_values, "labels": labels}


@dataclass
class ContrastiveCollator:
    """`pixel_values` with their tokenized captions (padded to the longest, CLIP's right padding); `return_loss`
    makes the dual encoder return its contrastive loss, in training and evaluation alike.

    Examples with twins (`twin_pixel_values`, `twin_captions`: `contrastive_transform(twin_columns=...)`) make one
    forward pass for `twin_contrastive_loss` instead: the twins follow the images in `pixel_values` (image-major),
    the distinct twin captions follow the captions in `input_ids`, `twin_caption_index` (batch, twins, captions)
    numbers each twin's captions among those (-1: padding), and the model is not asked for its loss (it would
    pair every image with a text)."""

    tokenizer: object
    max_length: int | None = None

    def __call__(self, examples):
        texts = [example["caption"] for example in examples]
        images = torch.stack([example["pixel_values"] for example in examples])
        extra = {"return_loss": True}
        if "twin_pixel_values" in examples[0]:
            check_twins(examples)
            twin_texts = {}  # the distinct twin captions, numbered in order of first appearance
            index = [
                [[twin_texts.setdefault(caption, len(twin_texts)) for caption in captions] for captions in twins]
                for twins in (example["twin_captions"] for example in examples)
            ]
            width = max(len(captions) for twins in index for captions in twins)
            padded = [[captions + [-1] * (width - len(captions)) for captions in twins] for twins in index]
            extra = {"twin_caption_index": torch.tensor(padded)}
            texts += list(twin_texts)
            images = torch.cat([images, *(example["twin_pixel_values"] for example in examples)])
        text = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {
            "pixel_values": images,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            **extra,
        }


@dataclass
class DetectionCollator:
    """`pixel_values`, per-image `labels` ({"class_labels", "boxes"} in normalized cx, cy, w, h) and the text
    queries: every candidate class name as a prompt, the same `num_queries` for each image, flattened in
    `input_ids` (batch * num_queries, length) as the detection model expects. The queries are tokenized once.

    `query_classes` (indices into `class_names`) limits the queries to those classes, with the labels renumbered
    to match; training uses the classes that have boxes in the training set, since a class queried on every image
    and never present would be taught as "never here", the opposite of open-vocabulary detection."""

    tokenizer: object
    class_names: list[str]
    template: str = "a photo of a {}."
    max_length: int | None = None
    query_classes: list[int] | None = None
    queries: dict = field(init=False)
    query_index: torch.Tensor = field(init=False)

    def __post_init__(self):
        classes = range(len(self.class_names)) if self.query_classes is None else self.query_classes
        self.queries = self.tokenizer(
            [self.template.format(self.class_names[index]) for index in classes],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        self.query_index = torch.full((len(self.class_names),), -1, dtype=torch.long)
        self.query_index[list(classes)] = torch.arange(len(classes))

    @property
    def num_queries(self) -> int:
        return len(self.queries["input_ids"])

    def __call__(self, examples):
        batch_size = len(examples)
        labels = []
        for example in examples:
            class_labels = self.query_index[torch.as_tensor(example["class_labels"], dtype=torch.long)]
            if (class_labels < 0).any():
                raise ValueError(f"an example has boxes of classes that are not queried: {example['class_labels']}")
            labels.append({"class_labels": class_labels, "boxes": example["boxes"]})
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": self.queries["input_ids"].repeat(batch_size, 1),
            "attention_mask": self.queries["attention_mask"].repeat(batch_size, 1),
            "labels": labels,
        }


@dataclass
class SegmentationCollator:
    """`pixel_values` and `labels` ((batch, height, width) class maps) for a closed-vocabulary segmenter."""

    def __call__(self, examples):
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": torch.stack([example["labels"] for example in examples]),
        }


@dataclass
class OpenVocabularySegmentationCollator:
    """`pixel_values`, text queries and `labels` for an open-vocabulary segmenter. Label k > 0 of a class map is
    `class_names[k]` (0 the background, `ignore_index` ignored); the queries are prompts of the queried classes
    (`query_classes`, default every class but the background), each batch's labels renumbered to them (0, then 1 +
    query index). With `drop_rate` > 0 (training), each class is left out of a batch's queries with that probability
    (at least one stays) and its pixels count as background: the model learns that a patch of a class nobody asked
    for is "nothing", which is what segmenting with a user's few labels needs. The draws are seeded like the other
    collators' (by the batch's first example index), so resumed runs replay them."""

    tokenizer: object
    class_names: list[str]
    template: str = "a photo of a {}."
    max_length: int | None = None
    query_classes: list[int] | None = None
    drop_rate: float = 0.0
    ignore_index: int = 255
    queries: dict = field(init=False)
    epoch_seed: EpochSeed = field(init=False, default_factory=EpochSeed)

    def __post_init__(self):
        if self.query_classes is None:
            self.query_classes = list(range(1, len(self.class_names)))
        if not self.query_classes or 0 in self.query_classes:
            raise ValueError(f"query classes must be non-background classes (1 and up), got {self.query_classes}")
        self.queries = self.tokenizer(
            [self.template.format(self.class_names[index]) for index in self.query_classes],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def set_epoch(self, epoch: int, seed: int | None = None):
        self.epoch_seed.set_epoch(epoch, seed)

    def __call__(self, examples):
        kept = torch.arange(len(self.query_classes))
        if self.drop_rate > 0:
            with self.epoch_seed.rng("queries", examples[0].get(INDEX_COLUMN)):
                draws = torch.rand(len(self.query_classes))
            kept = (draws >= self.drop_rate).nonzero()[:, 0]
            if not len(kept):
                kept = draws.argmax()[None]
        # class index -> channel: 0 background, 1 + position among the kept queries, background for the rest
        channel = torch.zeros(max(len(self.class_names), self.ignore_index + 1), dtype=torch.long)
        channel[self.ignore_index] = self.ignore_index
        channel[torch.tensor(self.query_classes)[kept]] = torch.arange(1, len(kept) + 1)
        labels = torch.stack([example["labels"] for example in examples])
        unknown = (labels >= len(self.class_names)) & (labels != self.ignore_index)
        if unknown.any():
            raise ValueError(
                f"label maps hold class {int(labels[unknown].max())}, beyond the {len(self.class_names)} class names"
            )
        batch_size = len(examples)
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": self.queries["input_ids"][kept].repeat(batch_size, 1),
            "attention_mask": self.queries["attention_mask"][kept].repeat(batch_size, 1),
            "labels": channel[labels],
        }


@dataclass
class InpaintingCollator:
    """`pixel_values`; the masked image model draws its patch mask itself (`config.mask_ratio` of the patches,
    uniformly). With `block_masking`, half the images get smooth `noise` instead (a coarse random grid, upsampled),
    so that their masked patches form blobs: holes like the ones people paint, rather than MAE's scattered patches.
    The draws are keyed like the mixup ones, so resumed runs replay them."""

    grid_size: tuple[int, int] | None = None
    block_masking: bool = False
    epoch_seed: EpochSeed = field(init=False, default_factory=EpochSeed)

    def __post_init__(self):
        if self.block_masking and self.grid_size is None:
            raise ValueError("block masking needs the model's patch `grid_size`")

    def set_epoch(self, epoch: int, seed: int | None = None):
        self.epoch_seed.set_epoch(epoch, seed)

    def __call__(self, examples):
        batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
        if self.block_masking:
            with self.epoch_seed.rng("mask", examples[0].get(INDEX_COLUMN)):
                batch["noise"] = self.blob_noise(len(examples))
        return batch

    def blob_noise(self, batch_size: int) -> torch.Tensor:
        uniform = torch.rand(batch_size, *self.grid_size)
        coarse = int(torch.randint(2, 5, ()))
        smooth = nn.functional.interpolate(
            torch.rand(batch_size, 1, coarse, coarse), size=self.grid_size, mode="bilinear", align_corners=False
        )[:, 0]
        blobs = torch.rand(batch_size) < 0.5
        noise = torch.where(blobs[:, None, None], smooth + 1e-3 * uniform, uniform)  # the tiny term breaks ties
        return noise.flatten(1)


@dataclass
class SynthesisMaskingCollator:
    """`pixel_values` and `bool_masked_pos` for the synthesis inpainting head, as MaskGIT trains: each image masks a
    share of its patches drawn from the cosine schedule (`cos(pi/2 * u)`, u uniform: from a single patch to all of
    them, more often many), ordered by `InpaintingCollator`'s noise, so that half the masks are blobs (holes that hide
    parts of objects, as inpainting does) and half scattered patches. Each image's draws are keyed by its example
    index, the seed and the epoch, as `BlockMaskingCollator`'s."""

    grid_size: tuple[int, int]
    epoch_seed: EpochSeed = field(init=False, default_factory=EpochSeed)

    def __post_init__(self):
        self.noise = InpaintingCollator(self.grid_size, block_masking=True)

    def set_epoch(self, epoch: int, seed: int | None = None):
        self.epoch_seed.set_epoch(epoch, seed)

    def __call__(self, examples):
        masks = []
        for example in examples:
            with self.epoch_seed.rng("synthesis", example.get(INDEX_COLUMN)):
                masks.append(self.mask())
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "bool_masked_pos": torch.stack(masks),
        }

    def mask(self) -> torch.Tensor:
        num_patches = self.grid_size[0] * self.grid_size[1]
        ratio = float(masking_ratio(torch.rand(())))
        count = min(num_patches, max(1, math.ceil(ratio * num_patches)))
        rank = self.noise.blob_noise(1)[0].argsort(descending=True).argsort()
        return rank < count


def soft_target_cross_entropy(outputs, labels, num_items_in_batch=None):
    """Cross-entropy against class indices or soft targets (mixup / cutmix), for Trainer's `compute_loss_func`."""
    logits = outputs["logits"]
    if labels.dtype == torch.long:
        return torch.nn.functional.cross_entropy(logits, labels)
    return -(labels * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def check_twins(examples):
    """Refuse twins a batch cannot hold: every example needs the same number of twin images (at least one), each with
    a non-empty list of captions."""
    counts = {len(example["twin_pixel_values"]) for example in examples}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every example needs the same number (>= 1) of twins, got {sorted(counts)} in one batch")
    for example in examples:
        captions = example.get("twin_captions")
        if not isinstance(captions, list) or len(captions) != len(example["twin_pixel_values"]):
            raise ValueError(f"twin_captions must hold one list of captions per twin, got {captions!r}")
        for kept in captions:
            if not isinstance(kept, list) or not kept or not all(isinstance(text, str) for text in kept):
                raise ValueError(f"each twin needs a non-empty list of caption strings, got {kept!r}")


def twin_contrastive_loss(outputs, twin_caption_index: torch.Tensor, model, twin_weight: float):
    """(total, contrastive, consistency) for a `ContrastiveCollator` batch with twins; `model` is the dual encoder
    (unwrapped), for its temperature and loss type.

    The contrastive loss pairs the first `batch` images with the first `batch` texts. The consistency term asks each
    twin to match its captions exactly as its image does: the squared change of cosine similarity between image and
    twin, averaged over the twin's captions and the batch, summed over the twins. Trained on the shapes world's
    twins, it makes recolouring leave every shape caption's score alone and reshaping every colour caption's, so that
    no colour becomes evidence for or against a shape (which held-out shape x colour pairs otherwise teach)."""
    batch, num_twins, _ = twin_caption_index.shape
    image_embeds, text_embeds = outputs.image_embeds, outputs.text_embeds
    # from the embeddings, not `outputs.logits_per_text`: DataParallel concatenates those per device
    logits = scaled_similarity(text_embeds[:batch], image_embeds[:batch], model.logit_scale, model.logit_bias)
    contrastive = contrastive_loss(logits, model.config.loss_type)
    change = image_embeds[:batch, None] - image_embeds[batch:].view(batch, num_twins, -1)
    scores = change @ text_embeds[batch:].t()  # (batch, twins, distinct twin captions)
    present = twin_caption_index >= 0
    squared = scores.gather(-1, twin_caption_index.clamp(min=0)).square() * present
    consistency = (squared.sum((0, 2)) / present.sum((0, 2))).sum()
    return contrastive + twin_weight * consistency, contrastive, consistency


__all__ = [
    "ClassificationCollator",
    "ContrastiveCollator",
    "DetectionCollator",
    "InpaintingCollator",
    "SynthesisMaskingCollator",
    "check_twins",
    "soft_target_cross_entropy",
    "twin_contrastive_loss",
]


class MultiCropCollator:
    """DINO's views: `global_crops` (batch, 2, C, H, W) and, in training, `local_crops` (batch, N, C, h, w)."""

    def __call__(self, examples):
        batch = {"global_crops": torch.stack([example["global_crops"] for example in examples])}
        if "local_crops" in examples[0]:
            batch["local_crops"] = torch.stack([example["local_crops"] for example in examples])
        return batch


@dataclass
class BlockMaskingCollator:
    """`pixel_values` and BEiT's blockwise `bool_masked_pos`: rectangles of random area (at least 16 patches or a
    tenth of the grid, whichever is smaller) and aspect ratio (0.3 to 1/0.3) are masked until at least `mask_ratio`
    of the patches are. Each image's draws are keyed by its example index, the seed and the epoch: the same mask
    whichever process and batch the image lands in."""

    grid_size: tuple[int, int]
    mask_ratio: float = 0.4
    epoch_seed: EpochSeed = field(init=False, default_factory=EpochSeed)

    def set_epoch(self, epoch: int, seed: int | None = None):
        self.epoch_seed.set_epoch(epoch, seed)

    def __call__(self, examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        masks = []
        for example in examples:
            with self.epoch_seed.rng("blocks", example.get(INDEX_COLUMN)):
                masks.append(self.block_mask())
        masks = torch.stack(masks)
        return {"pixel_values": pixel_values, "bool_masked_pos": masks.flatten(1)}

    def block_mask(self) -> torch.Tensor:
        height, width = self.grid_size
        target = max(1, round(self.mask_ratio * height * width))
        mask = torch.zeros(height, width, dtype=torch.bool)
        min_area = min(16, max(1, height * width // 10))
        while int(mask.sum()) < target:
            area = float(torch.empty(()).uniform_(min_area, max(min_area, target - int(mask.sum()))))
            aspect = math.exp(float(torch.empty(()).uniform_(math.log(0.3), math.log(1 / 0.3))))
            block_height = min(height, max(1, round(math.sqrt(area * aspect))))
            block_width = min(width, max(1, round(math.sqrt(area / aspect))))
            top = int(torch.randint(height - block_height + 1, ()))
            left = int(torch.randint(width - block_width + 1, ()))
            mask[top : top + block_height, left : left + block_width] = True
        return mask
