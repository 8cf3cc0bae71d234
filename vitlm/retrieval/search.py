"""Searching an embedded collection by text or by example image: its images' embeddings (through the index), or
its captions' (a job run with captions; exact search)."""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import store
from .checks import check_k, check_text
from .engine import describe_error, image_embeddings, load_model, text_embeddings
from .index import load_index, top_k
from .sources import decode


class Hit(NamedTuple):
    rank: int
    id: str
    score: float  # cosine similarity
    path: str | None  # the image file, for a folder collection


def query_image(image):
    """A query image (a path or a PIL image) as RGB, refused with the reason when it cannot be read."""
    if isinstance(image, (str, Path)) and Path(image).exists() and not Path(image).is_file():
        # a folder, or a pipe or device, which opening would read from forever
        raise ValueError(f"cannot read the query image: {image} is not a regular file")
    try:
        return decode(str(image) if isinstance(image, Path) else image)
    except Exception as error:  # PIL's plugins raise many kinds on a damaged file
        raise ValueError(f"cannot read the query image: {describe_error(error)}") from error


def query_embedding(model, processor, text: str | None = None, image=None) -> np.ndarray:
    """The normalized query: the text's embedding, the image's, or, given both, their normalized sum."""
    if text is None and image is None:
        raise ValueError("give a query text, a query image or both")
    parts = []
    if text is not None:
        parts.append(text_embeddings(model, processor.tokenizer, [check_text(text)])[0])
    if image is not None:
        pixels = processor.image_processor(query_image(image), return_tensors="pt")["pixel_values"]
        parts.append(image_embeddings(model, pixels)[0])
    query = np.sum(parts, axis=0)
    return query / np.linalg.norm(query)


class Collection:
    """An embedded collection opened for searching: its manifest, index, ids and (loaded once) the model that
    embedded it, or `model` (a loaded (model, processor) pair, or a source) when given."""

    def __init__(self, folder, model=None, device=None):
        self.folder = Path(folder)
        self.manifest = store.read_manifest(self.folder)
        self.index = load_index(self.folder / self.manifest["index"]["file"])
        self.ids = [
            item for shard in self.manifest["shards"] for item in store.read_shard_ids(self.folder / shard["file"])
        ]
        if self.index.ntotal != len(self.ids):
            raise ValueError(f"{self.folder}: the index has {self.index.ntotal} rows, the shards {len(self.ids)} ids")
        if model is None or isinstance(model, str):
            model = load_model(model or self.manifest["model"], device)
        self.model, self.processor = model
        if self.model.config.projection_dim != self.manifest["embedding_dim"]:
            raise ValueError(
                f"the model embeds in {self.model.config.projection_dim} dimensions, the collection in "
                f"{self.manifest['embedding_dim']}: search it with the model that embedded it"
            )
        source = self.manifest["source"]
        self.root = Path(source["root"]) if source["kind"] == "folder" else None
        self._captions = None  # (rows with a caption, their caption embeddings), read on first use

    def caption_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(the rows of the items with a caption, their caption embeddings), from the shards."""
        if "captions" not in self.manifest:
            raise ValueError(f"{self.folder} holds no caption embeddings: embed the collection with captions")
        if self._captions is None:
            files = [self.folder / shard["file"] for shard in self.manifest["shards"]]
            embeddings = np.concatenate([store.read_shard_captions(file) for file in files])
            rows = np.flatnonzero(~np.isnan(embeddings[:, 0]))
            self._captions = rows, embeddings[rows]
        return self._captions

    def query_embedding(self, text: str | None = None, image=None) -> np.ndarray:
        return query_embedding(self.model, self.processor, text, image)

    def search(self, text: str | None = None, image=None, k: int = 10, captions: bool = False) -> list[Hit]:
        """The top `k` items by their images' embeddings, or by their captions' with `captions=True`."""
        k = check_k(k)
        query = self.query_embedding(text, image)[None].astype(np.float32)
        if captions:
            captioned, embeddings = self.caption_embeddings()
            scores, found = top_k(embeddings, query, min(k, len(captioned)))
            rows = captioned[found]
        else:
            scores, rows = self.index.search(query, k)
        return [
            Hit(rank, self.ids[row], float(score), str(self.root / self.ids[row]) if self.root else None)
            for rank, (score, row) in enumerate(zip(scores[0], rows[0]), start=1)
            if row >= 0  # faiss pads with -1 when it finds fewer than k
        ]


def search(
    index_dir, text: str | None = None, image=None, k: int = 10, model=None, device=None, captions: bool = False
) -> list[Hit]:
    """The `k` images of the collection embedded into `index_dir` most similar to `text`, `image` (a path or PIL
    image) or both, best first; with `captions=True`, the `k` whose captions are. The collection's own model embeds
    the query unless `model` names another."""
    check_k(k)
    if text is not None:
        check_text(text)
    return Collection(index_dir, model, device).search(text, image, k, captions)
