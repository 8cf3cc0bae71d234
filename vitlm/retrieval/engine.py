"""The single-process engine and what both engines share: loading the model, decoding + preprocessing an item
(in DataLoader workers here, in Ray tasks in `ray_engine.py`) and running the image tower on a batch.

An engine takes batches of item positions and yields, per batch, the positions it computed, their outputs (one row
each) and the positions that failed to decode with the reason. A batch never spans two shards, so the job writing
shards (`job.py`) sees the same batches whichever engine ran them.
"""

import ctypes
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import torch

from ..models import VitlmDualEncoderModel, VitlmDualEncoderProcessor
from .sources import Source, decode

DEFAULT_MODEL = "default"
# the shipped zero-shot model (the demo's default), as data in the package
DEFAULT_MODEL_FOLDER = Path(__file__).resolve().parents[1] / "demo" / "default_models" / "zero-shot"


class BatchResult(NamedTuple):
    positions: np.ndarray  # (n,) items computed, in the batch's order
    outputs: np.ndarray  # (n, dim) float32
    errors: list[tuple[int, str]]  # (position, why it could not be decoded)
    captions: np.ndarray | None = None  # (n, dim) float32 caption embeddings, NaN where an item has no caption


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_name(source: str) -> str:
    """How a manifest names the model: `default`, a folder's absolute path, or the Hub id / converter source."""
    if source == DEFAULT_MODEL:
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else source


def load_model(
    source: str = DEFAULT_MODEL, device: str | torch.device | None = None
) -> tuple[VitlmDualEncoderModel, VitlmDualEncoderProcessor]:
    """A dual encoder and its processor, in eval mode on `device` (default: the GPU when there is one), bfloat16 on
    a GPU, float32 on a CPU. `source`: `default` (the shipped shapes-world model), a folder, a Hub repo id, or a
    converter source (`open_clip:...`, `hf:...`)."""
    from .. import convert

    device = torch.device(device) if device is not None else default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    location = str(DEFAULT_MODEL_FOLDER) if source == DEFAULT_MODEL else str(source)
    if location.partition(":")[0] in convert.SOURCES:
        model, processor = convert.load(location)
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(location, dtype=dtype)
        if not isinstance(model, VitlmDualEncoderModel):
            raise ValueError(
                f"{source!r} holds a {type(model).__name__}; embedding and search need a dual encoder "
                "(VitlmDualEncoderModel, e.g. a CLIP)"
            )
        processor = VitlmDualEncoderProcessor.from_pretrained(location)
    if not isinstance(model, VitlmDualEncoderModel):
        raise ValueError(f"{source!r} converts to a {type(model).__name__}; embedding and search need a dual encoder")
    return model.to(device, dtype).eval(), processor


def describe_error(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def preprocess(source: Source, image_processor, position: int) -> torch.Tensor:
    """Item `position` decoded and preprocessed: (3, height, width) float32."""
    image = decode(source.read(position))
    return image_processor(image, return_tensors="pt")["pixel_values"][0]


def pixel_shape(image_processor) -> tuple[int, ...]:
    """The (channels, height, width) every image is preprocessed to; a processor whose output follows the image's
    aspect ratio (resize without a crop) is refused, since batches stack images of one size."""
    shapes = {
        tuple(image_processor(PIL.Image.new("RGB", size), return_tensors="pt")["pixel_values"].shape[1:])
        for size in ((96, 32), (32, 96))
    }
    if len(shapes) > 1:
        raise ValueError(
            "the model's image processor gives images of different shapes for different aspect ratios; embedding a "
            "collection needs a fixed input size (a center crop, or a resize to height and width)"
        )
    return shapes.pop()


@torch.no_grad()
def image_embeddings(model: VitlmDualEncoderModel, pixel_values: torch.Tensor) -> np.ndarray:
    """L2-normalized image embeddings, float32, whatever the model's dtype."""
    pixel_values = pixel_values.to(model.device, model.dtype)
    features = model.get_image_features(pixel_values, return_dict=True).pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


@torch.no_grad()
def text_embeddings(model: VitlmDualEncoderModel, tokenizer, texts: list[str]) -> np.ndarray:
    """L2-normalized text embeddings, float32; a text longer than the model's context is cut to it, as the
    tokenizer truncates (its end dropped)."""
    context = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=context, return_tensors="pt")
    tokens = tokens.to(model.device)
    features = model.get_text_features(tokens["input_ids"], tokens["attention_mask"], return_dict=True).pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def caption_embeddings(model: VitlmDualEncoderModel, tokenizer, captions: list[str | None]) -> np.ndarray:
    """(len(captions), dim) float32: each caption's text embedding, NaN rows for the items with none."""
    embeddings = np.full((len(captions), model.config.projection_dim), np.nan, np.float32)
    present = [row for row, caption in enumerate(captions) if caption is not None]
    if present:
        embeddings[present] = text_embeddings(model, tokenizer, [captions[row] for row in present])
    return embeddings


class DecodedItems(torch.utils.data.Dataset):
    """Item `i` as (i, pixel values, caption, None) (the caption None when the source has no captions or the item
    none), or (i, None, None, why) when it cannot be read: a DataLoader worker never dies on a bad file."""

    def __init__(self, source: Source, image_processor):
        self.source = source
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, position: int):
        try:
            caption = self.source.read_caption(position) if self.source.captions else None
            return position, preprocess(self.source, self.image_processor, position), caption, None
        except Exception as error:  # a user's file can make PIL's plugins raise anything
            return position, None, None, describe_error(error)


def _collate(items):
    good = [(position, pixels, caption) for position, pixels, caption, error in items if error is None]
    errors = [(position, error) for position, _, _, error in items if error is not None]
    pixels = torch.stack([pixels for _, pixels, _ in good]) if good else None
    captions = [caption for _, _, caption in good]
    return np.array([position for position, _, _ in good], dtype=np.int64), pixels, captions, errors


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory():
    """Give the memory a batch freed back to the operating system (glibc's `malloc_trim`; nothing elsewhere). glibc
    raises its mmap threshold to the size of the largest block freed, so a model's activations of a few MB each are
    then carved from the heap, where freed ones stay resident. Without this, `benchmarks/embed.py`'s job peaked at 1.6
    GiB (proportional set) on 20,000 images against 1.2 on 2,000; with it, at 1.1 and 1.0. It changes no setting."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def default_num_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cpus)


def run_local(
    source: Source,
    image_processor,
    batches: Iterable[list[int]],
    compute: Callable[[torch.Tensor], np.ndarray],
    num_workers: int | None = None,
    compute_captions: Callable[[list[str | None]], np.ndarray] | None = None,
) -> Iterator[BatchResult]:
    """`compute(pixel_values)` on every batch of positions, in order, decoding in `num_workers` DataLoader worker
    processes (default: one per CPU core, at most 8; 0 decodes in this process); `compute_captions(captions)` on
    the captions of the batch's decoded items, when given."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        DecodedItems(source, image_processor),
        batch_sampler=list(batches),
        num_workers=num_workers,
        collate_fn=_collate,
        prefetch_factor=2 if num_workers else None,
    )
    for positions, pixels, captions, errors in loader:
        outputs = compute(pixels) if pixels is not None else np.zeros((0, 0), np.float32)
        del pixels  # the batch, freed before the heap is trimmed
        release_freed_memory()
        yield BatchResult(positions, outputs, errors, compute_captions(captions) if compute_captions else None)


def embed_source(
    model: VitlmDualEncoderModel, image_processor, source: Source, batch_size: int = 64, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """A small collection embedded in memory: (positions embedded, their (n, dim) embeddings, [(position, why it
    could not be decoded)]). Decodes in this process by default (a server's request thread must not fork)."""
    batches = [list(range(start, min(start + batch_size, len(source)))) for start in range(0, len(source), batch_size)]
    positions, embeddings, errors = [], [], []
    for result in run_local(source, image_processor, batches, lambda p: image_embeddings(model, p), num_workers):
        positions.append(result.positions)
        embeddings.extend(result.outputs)
        errors += result.errors
    dim = model.config.projection_dim
    return np.concatenate(positions), np.array(embeddings, np.float32).reshape(-1, dim), errors
