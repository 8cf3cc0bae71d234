"""Searching an embedded collection by text or by example image."""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import store
from .checks import check_k, check_text
from .engine import describe_error, image_embeddings, load_model, text_embeddings
from .index import load_index
from .sources import decode


class Hit(NamedTuple):
    rank: int
    id: str
    score: float  # cosine similarity
    path: str | None  # the image file, for a folder collection


def query_image(image):
    """A query image (a path or a PIL image) as RGB, refused with the reason when it cannot be read."""
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

    def query_embedding(self, text: str | None = None, image=None) -> np.ndarray:
        return query_embedding(self.model, self.processor, text, image)

    def search(self, text: str | None = None, image=None, k: int = 10) -> list[Hit]:
        k = check_k(k)
        scores, rows = self.index.search(self.query_embedding(text, image)[None].astype(np.float32), k)
        return [
            Hit(rank, self.ids[row], float(score), str(self.root / self.ids[row]) if self.root else None)
            for rank, (score, row) in enumerate(zip(scores[0], rows[0]), start=1)
            if row >= 0  # faiss pads with -1 when it finds fewer than k
        ]


def search(index_dir, text: str | None = None, image=None, k: int = 10, model=None, device=None) -> list[Hit]:
    """The `k` images of the collection embedded into `index_dir` most similar to `text`, `image` (a path or PIL
    image) or both, best first. The collection's own model embeds the query unless `model` names another."""
    check_k(k)
    if text is not None:
        check_text(text)
    return Collection(index_dir, model, device).search(text, image, k)
