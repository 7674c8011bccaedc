"""Vector indexes over faiss (vectors and int64 ids only; text lives in SQL).

Kinds, and how each deletes:

- `flat`: exact search; `IndexIDMap2` over `IndexFlat{IP,L2}`, real removal.
- `hnsw`: `IndexIDMap2` over `IndexHNSWFlat`. FAISS cannot remove from an HNSW graph, so
  removed ids become tombstones: still in the graph, filtered out of results, dropped for
  good by `rebuild()` (which re-adds the live vectors into a new graph). `search`
  over-fetches so that tombstones never leave fewer than k results while k live vectors
  exist (and the graph reaches them); `tombstones` says when a rebuild is worth it.
- `ivf`: `IndexIVFFlat` with its own ids, real removal. Not `IndexIDMap2` over it: that
  wrapper renumbers its id map on removal as if the sub-index shifted its entries, which
  IVF does not, so results after a removal carry the wrong ids (measured with
  faiss-cpu 1.15.1). An IVF index is trained once it holds `TRAIN_POINTS_PER_LIST` (39,
  faiss's own minimum) x `nlist` vectors; until then every vector sits in a flat staging
  index that serves exact results. The training uses all vectors staged at that moment;
  `rebuild()` trains again on the live vectors.

Scores: `ip` is the inner product (cosine for normalised vectors; higher is closer), `l2`
the squared Euclidean distance (lower is closer). Results short of k are padded with id -1
(faiss's convention), so ids must be >= 0; an id may be stored once (for HNSW a removed
id cannot be re-added before `rebuild()`).

Serialised format (`to_bytes`), version 1: the 8 bytes `SEEKQVI1`, a little-endian uint32
header length, a UTF-8 JSON header `{"format": 1, "config": {...}, "trained": bool,
"faiss_bytes": n, "tombstones": t}`, then `faiss.serialize_index` of the index (the
staging index while an IVF index is untrained) and t little-endian int64 tombstones.

GPU: where faiss has GPU support (faiss-gpu), flat and IVF indexes search on a GPU copy
of the CPU index and IVF trains its k-means there (`workers.backends.faiss_gpu`; HNSW stays
on the CPU). The CPU index is the one that changes and is serialised, so the bytes above
are the same with or without a GPU. GPU searches take turns (faiss's GPU objects are not
thread-safe). `SEEKQ_FAISS_GPU=off` keeps everything on the CPU.

Writers mutate a `VectorIndex` from one thread; concurrent searches on an index that
nobody mutates are safe (faiss searches are read-only). Readers get isolation from
versions instead (`workers.backends.index_versions`): each new version is written beside
the old ones and a pointer swapped, so a loaded index never changes under its reader.
"""

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.errors import PermanentError, SpecError
from jobs.index_specs import PARAMS_BY_TYPE
from workers.backends.faiss_gpu import GpuReplica, train_on_gpu

IndexKind = Literal["flat", "hnsw", "ivf"]
Metric = Literal["ip", "l2"]

TRAIN_POINTS_PER_LIST = 39
MAGIC = b"SEEKQVI1"
FORMAT = 1
HEADER_KEYS = frozenset({"format", "config", "trained", "faiss_bytes", "tombstones"})
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class IndexFormatError(PermanentError):
    """Bytes that are not a (complete, intact) serialised seekq vector index."""


class IndexConfig(BaseModel):
    """What an index is: plain and serialisable, kept apart from the faiss object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: IndexKind
    dim: int = Field(ge=1, le=8192)
    metric: Metric = "ip"
    m: int = Field(default=32, ge=4, le=128)  # hnsw: graph neighbours per node
    ef_construction: int = Field(default=200, ge=8, le=4096)  # hnsw: build-time beam
    ef_search: int = Field(default=64, ge=1, le=32768)  # hnsw: query-time beam
    nlist: int = Field(default=64, ge=1, le=65536)  # ivf: clusters
    nprobe: int = Field(default=8, ge=1, le=65536)  # ivf: clusters visited per query

    @property
    def train_threshold(self) -> int:
        """IVF: the stored vectors that trigger training (0 for the other kinds)."""
        return TRAIN_POINTS_PER_LIST * self.nlist if self.kind == "ivf" else 0


@dataclass(frozen=True)
class SearchHits:
    ids: "np.ndarray[Any, np.dtype[np.int64]]"  # (queries, k), -1 pads a short row
    scores: "np.ndarray[Any, np.dtype[np.float32]]"  # (queries, k), best first


class VectorIndex:
    """One faiss index plus the ids it holds and, for HNSW, its tombstones."""

    def __init__(self, config: IndexConfig, index: Any, *, trained: bool) -> None:
        self.config = config
        self._index = index
        self._trained = trained
        self._ids: set[int] = set(_stored_ids(index, config, trained).tolist())
        self._tombstones: set[int] = set()
        self._gpu = GpuReplica(config.kind)
        self._apply_search_params()

    @classmethod
    def create(
        cls, kind: IndexKind, dim: int, metric: Metric = "ip", **params: int
    ) -> "VectorIndex":
        unknown = set(params) - PARAMS_BY_TYPE.get(kind, frozenset())
        if unknown:
            raise SpecError(f"parameters {sorted(unknown)} do not apply to a {kind} index")
        try:
            config = IndexConfig(kind=kind, dim=dim, metric=metric, **params)
        except ValidationError as error:
            raise SpecError(f"invalid index config: {error.errors()[0]['msg']}") from None
        return cls.empty(config)

    @classmethod
    def empty(cls, config: IndexConfig) -> "VectorIndex":
        return cls(config, _new_faiss(config, trained=False), trained=config.kind != "ivf")

    # ------------------------------------------------------------ counts and state

    @property
    def ntotal(self) -> int:
        """Vectors stored, tombstoned ones included."""
        return int(self._index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self._tombstones)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def trained(self) -> bool:
        """False only for an IVF index still serving from its flat staging index."""
        return self._trained

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on a GPU copy (made by the first search after a change)."""
        return self._gpu.cloned

    def tune(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the query-time parameters (HNSW efSearch, IVF nprobe)."""
        pairs = (("ef_search", ef_search), ("nprobe", nprobe))
        update = {name: value for name, value in pairs if value is not None}
        if not set(update) <= PARAMS_BY_TYPE[self.config.kind]:
            raise SpecError(f"{sorted(update)} do not apply to a {self.config.kind} index")
        try:
            self.config = IndexConfig(**{**self.config.model_dump(), **update})
        except ValidationError as error:
            raise SpecError(f"invalid search parameter: {error.errors()[0]['msg']}") from None
        self._apply_search_params()
        self._gpu.drop()  # the GPU copy took nprobe when it was cloned

    # ------------------------------------------------------------ writes

    def add(self, ids: Any, vectors: Any) -> None:
        ids64 = self._new_ids(ids)
        matrix = self._matrix(vectors, "vectors")
        if len(matrix) != len(ids64):
            raise SpecError(f"{len(ids64)} ids for {len(matrix)} vectors")
        self._index.add_with_ids(matrix, ids64)
        self._ids.update(ids64.tolist())
        self._gpu.drop()
        if not self._trained and self.ntotal >= self.config.train_threshold:
            self._train()

    def remove(self, ids: Any) -> int:
        """Remove the vectors of `ids` (unknown or already removed ids are ignored);
        returns how many were removed."""
        wanted = {int(i) for i in np.asarray(ids, dtype=np.int64).ravel()}
        present = (wanted & self._ids) - self._tombstones
        if not present:
            return 0
        if self.config.kind == "hnsw":
            self._tombstones |= present
        else:
            self._index.remove_ids(np.fromiter(present, dtype=np.int64, count=len(present)))
            self._ids -= present
            self._gpu.drop()
        return len(present)

    def rebuild(self) -> None:
        """A fresh index holding only the live vectors: drops HNSW tombstones, retrains IVF."""
        ids, vectors = self._live_vectors()
        fresh = VectorIndex.empty(self.config)
        if len(ids):
            fresh.add(ids, vectors)
        self._index, self._trained, self._ids = fresh._index, fresh._trained, fresh._ids
        self._tombstones = set()
        self._apply_search_params()
        self._gpu.drop()

    # ------------------------------------------------------------ search

    def search(self, queries: Any, k: int) -> SearchHits:
        """The k best live vectors per query (a 1-D query is one query)."""
        matrix = self._matrix(np.atleast_2d(np.asarray(queries)), "queries")
        if k < 1:
            raise SpecError("k must be at least 1")
        if not self._tombstones:
            scores, ids = self._faiss_search(matrix, k)
            return SearchHits(ids, scores)
        return self._search_past_tombstones(matrix, k)

    def _faiss_search(self, matrix: Any, k: int) -> tuple[Any, Any]:
        if self.config.kind == "hnsw" and k > self.config.ef_search:
            # HNSW stops once efSearch closer nodes are seen, whatever k asks for: raise it
            # with k, or asking for more would not find more (measured: k=400 of 400
            # nodes returned 77 with efSearch 16).
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in the stubs
            params.efSearch = k
            scores, ids = self._index.search(matrix, k, params=params)
        else:
            on_gpu = self._gpu.search(self._index, matrix, k)
            scores, ids = on_gpu if on_gpu is not None else self._index.search(matrix, k)
        return scores, ids

    def _search_past_tombstones(self, matrix: Any, k: int) -> SearchHits:
        """Over-fetch in proportion to the dead share, filter, and fetch again (twice as
        many each time, up to every stored vector) for the rows still short of k."""
        out_ids = np.full((len(matrix), k), -1, dtype=np.int64)
        worst = -np.inf if self.config.metric == "ip" else np.inf
        out_scores = np.full((len(matrix), k), worst, dtype=np.float32)
        wanted = min(k, self.live)
        dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
        fetch = min(self.ntotal, math.ceil(k * self.ntotal / max(self.live, 1)) + k)
        rows = np.arange(len(matrix))
        while len(rows):
            scores, ids = self._faiss_search(matrix[rows], fetch)
            alive = (ids >= 0) & ~np.isin(ids, dead)
            short = []
            for row, row_ids, row_scores, keep in zip(rows, ids, scores, alive, strict=True):
                found = row_ids[keep][:k]
                out_ids[row, : len(found)] = found
                out_scores[row, : len(found)] = row_scores[keep][:k]
                if len(found) < wanted:
                    short.append(row)
            if fetch >= self.ntotal:
                break
            rows, fetch = np.asarray(short, dtype=np.int64), min(self.ntotal, fetch * 2)
        return SearchHits(out_ids, out_scores)

    # ------------------------------------------------------------ bytes

    def to_bytes(self) -> bytes:
        body = faiss.serialize_index(self._index).tobytes()
        dead = np.array(sorted(self._tombstones), dtype="<i8").tobytes()
        header = json.dumps(
            {
                "format": FORMAT,
                "config": self.config.model_dump(),
                "trained": self._trained,
                "faiss_bytes": len(body),
                "tombstones": len(self._tombstones),
            },
            sort_keys=True,
        ).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + body + dead

    @classmethod
    def from_bytes(cls, data: bytes) -> "VectorIndex":
        header, body, dead = _split(data)
        try:
            config = IndexConfig.model_validate(header["config"])
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
        except (ValidationError, RuntimeError) as error:
            raise IndexFormatError(f"unreadable index: {str(error)[:200]}") from None
        _check_faiss_matches(index, config, bool(header["trained"]))
        loaded = cls(config, index, trained=bool(header["trained"]))
        loaded._tombstones = set(np.frombuffer(dead, dtype="<i8").tolist())
        if not loaded._tombstones <= loaded._ids:
            raise IndexFormatError("tombstones name ids the index does not hold")
        return loaded

    # ------------------------------------------------------------ internals

    def _new_ids(self, ids: Any) -> "np.ndarray[Any, np.dtype[np.int64]]":
        array = np.asarray(ids)
        if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise SpecError("ids must be a 1-D array of integers")
        ids64 = np.ascontiguousarray(array, dtype=np.int64)
        if ids64.size and ids64.min() < 0:
            raise SpecError("ids must be >= 0 (-1 marks a missing result)")
        if len(np.unique(ids64)) != len(ids64):
            raise SpecError("ids repeat within one add")
        taken = self._ids.intersection(ids64.tolist())
        if taken:
            hint = " (removed from an HNSW index: rebuild() first)" if self._tombstones else ""
            raise SpecError(f"{len(taken)} ids are already in the index{hint}")
        return ids64

    def _matrix(self, values: Any, what: str) -> "np.ndarray[Any, np.dtype[np.float32]]":
        matrix = np.ascontiguousarray(values, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.config.dim:
            raise SpecError(f"{what} must have shape (n, {self.config.dim}), not {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise SpecError(f"{what} hold NaN or infinite values")
        return matrix

    def _train(self) -> None:
        ids, vectors = _stored_vectors(self._index, self.config, trained=False)
        ivf = _new_faiss(self.config, trained=True)
        if not train_on_gpu(ivf, vectors):
            # a GPU run that was refused may have left `ivf` half-trained
            ivf = _new_faiss(self.config, trained=True)
            ivf.train(vectors)
        ivf.add_with_ids(vectors, ids)
        self._index, self._trained = ivf, True
        self._apply_search_params()
        self._gpu.drop()

    def _live_vectors(self) -> tuple[Any, Any]:
        ids, vectors = _stored_vectors(self._index, self.config, self._trained)
        if self._tombstones:
            keep = ~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
            ids, vectors = ids[keep], vectors[keep]
        return ids, vectors

    def _apply_search_params(self) -> None:
        if self.config.kind == "hnsw":
            graph: Any = faiss.downcast_index(self._index.index)
            graph.hnsw.efSearch = self.config.ef_search
        elif self.config.kind == "ivf" and self._trained:
            self._index.nprobe = self.config.nprobe


def _new_faiss(config: IndexConfig, *, trained: bool) -> Any:
    """A new, empty faiss index: IVF untrained means its flat staging index."""
    metric = _METRICS[config.metric]
    if config.kind == "hnsw":
        graph = faiss.IndexHNSWFlat(config.dim, config.m, metric)
        graph.hnsw.efConstruction = config.ef_construction
        return faiss.IndexIDMap2(graph)
    if config.kind == "ivf" and trained:
        quantizer = faiss.IndexFlat(config.dim, metric)
        return faiss.IndexIVFFlat(quantizer, config.dim, config.nlist, metric)
    return faiss.IndexIDMap2(faiss.IndexFlat(config.dim, metric))


def _stored_ids(index: Any, config: IndexConfig, trained: bool) -> Any:
    if config.kind == "ivf" and trained:
        return _ivf_contents(index, config.dim, vectors=False)[0]
    return faiss.vector_to_array(index.id_map)


def _stored_vectors(index: Any, config: IndexConfig, trained: bool) -> tuple[Any, Any]:
    """Every stored (id, vector), tombstoned ones included."""
    if config.kind == "ivf" and trained:
        return _ivf_contents(index, config.dim)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if not len(ids):
        return ids, np.empty((0, config.dim), dtype=np.float32)
    vectors = index.index.reconstruct_n(0, index.ntotal)
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def _ivf_contents(index: Any, dim: int, *, vectors: bool = True) -> tuple[Any, Any]:
    """An IVF-Flat index's ids and (unless `vectors` is False) vectors, read from its
    inverted lists (an IVF-Flat code is the raw float32 vector)."""
    lists, ids, rows = index.invlists, [np.empty(0, np.int64)], [np.empty((0, dim), "f4")]
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size:
            ids.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
        if size and vectors:
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size)
            rows.append(codes.copy().view(np.float32).reshape(size, dim))
    return np.concatenate(ids).astype(np.int64), np.concatenate(rows)


def _split(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """(header, faiss bytes, tombstone bytes) of a serialised index, checked for size."""
    start = len(MAGIC) + 4
    if len(data) < start or data[: len(MAGIC)] != MAGIC:
        raise IndexFormatError("not a seekq vector index (bad magic)")
    (header_size,) = struct.unpack("<I", data[len(MAGIC) : start])
    try:
        header = json.loads(data[start : start + header_size])
        missing = HEADER_KEYS - header.keys()
        if missing:
            raise IndexFormatError(f"index header lacks {sorted(missing)}")
        body_size, dead_count = int(header["faiss_bytes"]), int(header["tombstones"])
        if header["format"] != FORMAT:
            raise IndexFormatError(f"index format {header['format']} is not {FORMAT}")
    except (ValueError, AttributeError, TypeError):
        raise IndexFormatError("unreadable index header") from None
    body_start = start + header_size
    if min(body_size, dead_count) < 0 or len(data) != body_start + body_size + 8 * dead_count:
        raise IndexFormatError("index bytes are truncated or too long")
    body = data[body_start : body_start + body_size]
    return header, body, data[body_start + body_size :]


def _check_faiss_matches(index: Any, config: IndexConfig, trained: bool) -> None:
    ivf = config.kind == "ivf" and trained
    expected: Any = faiss.IndexIVFFlat if ivf else faiss.IndexIDMap2
    if not isinstance(index, expected) or index.d != config.dim:
        raise IndexFormatError("the faiss index does not match its header")
    inner = faiss.IndexHNSWFlat if config.kind == "hnsw" else faiss.IndexFlat
    if not ivf and not isinstance(faiss.downcast_index(index.index), inner):
        raise IndexFormatError("the faiss index's type does not match its header")
    if index.metric_type != _METRICS[config.metric]:
        raise IndexFormatError("the faiss index's metric does not match its header")
