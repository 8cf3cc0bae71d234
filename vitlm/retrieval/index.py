"""Nearest-neighbour indexes over normalized embeddings (inner product = cosine similarity), built with faiss.

`exact` (`IndexFlatIP`) compares a query with every row: right for collections up to about a hundred thousand
images. `hnsw` (a graph, `IndexHNSWFlat`) and `ivf` (inverted lists over k-means cells, `IndexIVFFlat`) are
approximate: much faster on large collections, at the cost of missing some true neighbours. For them the build
measures recall@10 against exact search on up to `RECALL_QUERIES` of the collection's own embeddings, and the
manifest reports it.
"""

import math
from pathlib import Path

import numpy as np

KINDS = ("auto", "exact", "hnsw", "ivf")
AUTO_EXACT_LIMIT = 100_000  # rows: above this, `auto` builds an HNSW index
RECALL_QUERIES = 1000
RECALL_K = 10
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_PROBES = 16


def build_index(embeddings: np.ndarray, kind: str = "auto"):
    """(faiss index, its description for the manifest) over `embeddings` (rows, dim), float32 and normalized."""
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    rows, dim = embeddings.shape
    if kind == "auto":
        kind = "exact" if rows <= AUTO_EXACT_LIMIT else "hnsw"
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    info = {"kind": kind, "metric": "inner_product", "rows": rows}
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        info.update(neighbours=HNSW_NEIGHBOURS, ef_construction=HNSW_EF_CONSTRUCTION, ef_search=HNSW_EF_SEARCH)
    else:
        # about 4 sqrt(n) cells, with at least 39 training points per cell (faiss warns below that)
        cells = max(1, min(int(4 * math.sqrt(rows)), rows // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        index.nprobe = min(IVF_PROBES, cells)
        info.update(cells=cells, probes=index.nprobe)
    index.add(embeddings)
    if kind != "exact":
        info[f"recall_at_{RECALL_K}"] = recall_against_exact(index, embeddings)
    return index, info


def recall_against_exact(index, embeddings: np.ndarray, k: int = RECALL_K, queries: int = RECALL_QUERIES) -> float:
    """Mean fraction of the exact top-`k` neighbours that `index` finds, for up to `queries` evenly spaced rows of
    `embeddings` used as queries."""
    import faiss

    k = min(k, len(embeddings))
    picked = embeddings[np.linspace(0, len(embeddings) - 1, min(queries, len(embeddings))).astype(int)]
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(embeddings)
    _, truth = exact.search(picked, k)
    _, found = index.search(picked, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found)]))


def top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the exact top-`k` rows of `embeddings` for each query, best first, ties by row: a small
    in-memory collection (the demo's), searched without building an index."""
    scores = np.asarray(queries, np.float32) @ np.asarray(embeddings, np.float32).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def save_index(index, path):
    import faiss

    from .store import write_atomically

    write_atomically(path, lambda staging: faiss.write_index(index, staging))


def load_index(path):
    import faiss

    if not Path(path).is_file():
        raise ValueError(f"the index file {path} is missing: run `vitlm embed` again to rebuild it")
    try:
        return faiss.read_index(str(path))  # with its search settings (HNSW's efSearch, IVF's nprobe)
    except RuntimeError:  # faiss's message is its C++ source location and an assertion
        raise ValueError(
            f"the index file {path} is truncated or damaged (faiss cannot read it): run `vitlm embed` again"
        ) from None
