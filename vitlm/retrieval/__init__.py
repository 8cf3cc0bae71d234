"""Batch inference and retrieval over image collections: `embed` a folder, a `datasets` data set or parquet files
into shards and a nearest-neighbour index (single process, or on Ray Data), `search` it by text or image, and
`classify_folder` with a cached zero-shot classifier. faiss, pyarrow, datasets and ray are imported when used."""

from .classify import classify_folder
from .engine import DEFAULT_MODEL, embed_source, load_model
from .job import embed
from .search import Collection, Hit, query_embedding, search
from .sources import FolderSource, MemorySource, open_source

__all__ = [
    "DEFAULT_MODEL",
    "Collection",
    "FolderSource",
    "Hit",
    "MemorySource",
    "classify_folder",
    "embed",
    "embed_source",
    "load_model",
    "open_source",
    "query_embedding",
    "search",
]
