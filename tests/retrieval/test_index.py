"""faiss indexes: exact, HNSW and IVF over normalized embeddings, and the recall the manifest reports."""

import os

import faiss
import numpy as np
import pytest

from vitlm.retrieval import embed, store
from vitlm.retrieval.index import build_index, load_index, recall_against_exact, save_index, top_k


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_neighbours(embeddings, queries, k):
    return np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")[:, :k]


def test_exact_index_equals_brute_force(embeddings):
    index, info = build_index(embeddings, "exact")
    assert info == {"kind": "exact", "metric": "inner_product", "rows": 3000}
    _, rows = index.search(embeddings[:50], 10)
    np.testing.assert_array_equal(rows, exact_neighbours(embeddings, embeddings[:50], 10))
    scores, rows = top_k(embeddings, embeddings[:50], 10)
    np.testing.assert_array_equal(rows, exact_neighbours(embeddings, embeddings[:50], 10))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)  # each query finds itself


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_report_their_recall(embeddings, kind, tmp_path):
    index, info = build_index(embeddings, kind)
    assert info["kind"] == kind and 0.5 < info["recall_at_10"] <= 1.0
    picked = embeddings[np.linspace(0, len(embeddings) - 1, 1000).astype(int)]
    truth = exact_neighbours(embeddings, picked, 10)
    _, found = index.search(picked, 10)
    expected = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
    assert info["recall_at_10"] == pytest.approx(expected)
    save_index(index, tmp_path / "index.faiss")
    reloaded = load_index(tmp_path / "index.faiss")  # with its search settings
    assert recall_against_exact(reloaded, embeddings) == info["recall_at_10"]
    if kind == "ivf":
        assert (
            info["cells"] == min(int(4 * np.sqrt(3000)), 3000 // 39) and faiss.extract_index_ivf(reloaded).nprobe == 16
        )


def test_embed_writes_the_chosen_index_and_its_recall(collection, tmp_path):
    out = embed(collection, tmp_path / "out", index="hnsw", num_workers=0, progress=False)
    info = store.read_manifest(out)["index"]
    assert info["kind"] == "hnsw" and info["recall_at_10"] == 1.0  # 20 images: the graph reaches them all
    assert isinstance(faiss.read_index(str(out / store.INDEX)), faiss.IndexHNSWFlat)


def test_files_written_in_place_have_the_umasks_permissions(tmp_path):
    """Outputs are staged and renamed into place with the permissions `open` would give them (mkstemp's staging
    files made them 0600 whatever the umask)."""
    previous = os.umask(0o022)
    try:
        store.write_text(tmp_path / "out" / "manifest.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["manifest.json"]
