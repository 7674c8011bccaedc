"""faiss-gpu for flat and IVF indexes (workers.backends.faiss_gpu).

On this CPU box (faiss-cpu) the selection and fallback logic runs against `FakeGpu`, which
stands in for faiss-gpu's functions (a GPU cannot run here): it "clones" on the CPU and
records what was cloned and searched. The `gpu`-marked tests at the end run the real
thing where faiss has GPUs and are skipped, with their reason, everywhere else.
"""

import logging
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from workers.backends import faiss_gpu
from workers.backends.faiss_gpu import (
    FaissGpuSettings,
    get_faiss_gpu_settings,
    gpu_faiss_available,
    to_cpu,
    to_gpu,
)
from workers.backends.vector_index import VectorIndex

DIM = 32
IVF = {"nlist": 4, "nprobe": 2}  # trains at 39 x 4 = 156 vectors
needs_gpu_faiss = pytest.mark.skipif(
    not gpu_faiss_available(), reason="faiss has no GPU support here (faiss-cpu)"
)


def clustered(count: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Unit vectors around a few centres (uniform random vectors make ANN look broken)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    points = centres[rng.integers(8, size=count)] + 0.4 * rng.standard_normal((count, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def built(kind: str, count: int = 500, dim: int = DIM, **params: int) -> VectorIndex:
    index = VectorIndex.create(kind, dim, "ip", **params)  # type: ignore[arg-type]
    index.add(10**12 + np.arange(count, dtype=np.int64), clustered(count, dim=dim))
    return index


def set_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("SEEKQ_FAISS_GPU", mode)
    get_faiss_gpu_settings.cache_clear()


def on_cpu_only(monkeypatch: pytest.MonkeyPatch, index: VectorIndex) -> VectorIndex:
    """The index loaded from its bytes by a process that keeps faiss on the CPU."""
    set_mode(monkeypatch, "off")
    return VectorIndex.from_bytes(index.to_bytes())


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    """Detection, settings and GPU resources are per process: each test starts anew."""
    for clear in (gpu_faiss_available.cache_clear, get_faiss_gpu_settings.cache_clear):
        clear()
    saved = dict(faiss_gpu._devices)
    faiss_gpu._devices.clear()
    yield
    faiss_gpu._devices.clear()
    faiss_gpu._devices.update(saved)
    for clear in (gpu_faiss_available.cache_clear, get_faiss_gpu_settings.cache_clear):
        clear()


# ---------------------------------------------------------------- faiss-cpu as installed


@pytest.mark.skipif(gpu_faiss_available(), reason="this faiss has GPUs")
def test_faiss_cpu_reports_no_gpu() -> None:
    assert not gpu_faiss_available()
    assert not faiss_gpu.gpu_enabled("flat")


@pytest.mark.skipif(gpu_faiss_available(), reason="this faiss has GPUs")
@pytest.mark.parametrize(("kind", "params"), [("flat", {}), ("ivf", IVF)])
def test_auto_without_a_gpu_searches_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, kind: str, params: dict[str, int]
) -> None:
    set_mode(monkeypatch, "auto")
    index, queries = built(kind, **params), clustered(20, seed=1)
    hits = index.search(queries, 10)
    assert not index.on_gpu
    same = on_cpu_only(monkeypatch, index).search(queries, 10)
    np.testing.assert_array_equal(hits.ids, same.ids)
    np.testing.assert_array_equal(hits.scores, same.scores)


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEKQ_FAISS_GPU", "on")
    with pytest.raises(ValidationError, match="faiss_gpu"):
        FaissGpuSettings()


# ---------------------------------------------------------------- a stand-in for faiss-gpu


class FakeResources:
    """faiss.StandardGpuResources without a GPU."""


class FakeOptions:
    useFloat16 = True  # faiss's default is False: the code must set it either way


class FakeGpuIndex:
    """A "GPU" index: a CPU clone that counts its searches."""

    def __init__(self, cpu: Any, gpu: "FakeGpu") -> None:
        self.cpu, self._gpu = cpu, gpu

    def search(self, matrix: Any, k: int) -> tuple[Any, Any]:
        if self._gpu.refuse_search:
            raise RuntimeError(self._gpu.refuse_search)
        self._gpu.searches += 1
        return self.cpu.search(matrix, k)


class FakeGpu:
    """Stands in for faiss-gpu's functions: clones on the CPU and records each clone's
    faiss type. A bare IndexFlat (IVF's k-means assigner, which faiss needs as a real
    index) comes back as the CPU clone itself."""

    def __init__(self) -> None:
        self.cloned: list[str] = []
        self.searches = 0
        self.refuse_clone = ""
        self.refuse_search = ""

    def index_cpu_to_gpu(self, resources: Any, device: int, index: Any, options: Any) -> Any:
        assert isinstance(resources, FakeResources) and device == 0
        assert options.useFloat16 is False
        self.cloned.append(type(index).__name__)
        if self.refuse_clone:
            raise RuntimeError(f"{self.refuse_clone}\nC++ stack trace line")
        copy = faiss.clone_index(index)
        return copy if type(index) is faiss.IndexFlat else FakeGpuIndex(copy, self)

    def index_gpu_to_cpu(self, index: Any) -> Any:
        return faiss.clone_index(index.cpu)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    gpu = FakeGpu()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", FakeOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", gpu.index_cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", gpu.index_gpu_to_cpu, raising=False)
    set_mode(monkeypatch, "auto")
    return gpu


@pytest.mark.parametrize(
    ("kind", "params", "clones"),
    [("flat", {}, ["IndexIDMap2"]), ("ivf", IVF, ["IndexFlat", "IndexIVFFlat"])],
)
def test_flat_and_ivf_search_on_a_gpu_copy(
    monkeypatch: pytest.MonkeyPatch,
    fake_gpu: FakeGpu,
    kind: str,
    params: dict[str, int],
    clones: list[str],
) -> None:
    index, queries = built(kind, **params), clustered(20, seed=1)
    assert fake_gpu.cloned == clones[:-1]  # IVF: its k-means ran on the "GPU"
    hits = index.search(queries, 10)
    assert fake_gpu.cloned == clones and fake_gpu.searches == 1 and index.on_gpu
    same = on_cpu_only(monkeypatch, index).search(queries, 10)
    np.testing.assert_array_equal(hits.ids, same.ids)


def test_the_copy_is_reused_until_the_index_changes(fake_gpu: FakeGpu) -> None:
    index, queries = built("flat"), clustered(5, seed=1)
    index.search(queries, 3)
    index.search(queries, 3)
    assert fake_gpu.cloned == ["IndexIDMap2"] and fake_gpu.searches == 2
    index.add(np.array([7]), queries[:1] * 1.0001)
    assert not index.on_gpu
    assert index.search(queries[:1], 1).ids[0, 0] == 7  # the new copy holds the new vector
    index.remove([7])
    assert index.search(queries[:1], 1).ids[0, 0] != 7
    assert len(fake_gpu.cloned) == 3


def test_tune_clones_again_with_the_new_nprobe(fake_gpu: FakeGpu) -> None:
    index = built("ivf", **IVF)
    index.search(clustered(2, seed=1), 3)
    index.tune(nprobe=3)
    index.search(clustered(2, seed=1), 3)
    assert fake_gpu.cloned.count("IndexIVFFlat") == 2
    assert index._gpu._index.cpu.nprobe == 3


def test_hnsw_never_goes_to_the_gpu(fake_gpu: FakeGpu) -> None:
    index = built("hnsw")
    index.remove([10**12])
    index.search(clustered(5, seed=1), 10)
    index.rebuild()
    index.search(clustered(5, seed=1), 10)
    assert fake_gpu.cloned == [] and fake_gpu.searches == 0 and not index.on_gpu


def test_a_k_past_the_index_or_the_gpu_limit_searches_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, fake_gpu: FakeGpu
) -> None:
    index = built("flat", count=50)
    short = index.search(clustered(1, seed=1), 60)  # padded with -1 by the CPU index
    assert (short.ids[0, 50:] == -1).all()
    monkeypatch.setattr(faiss_gpu, "GPU_MAX_K", 5)
    index.search(clustered(1, seed=1), 6)
    assert fake_gpu.cloned == [] and fake_gpu.searches == 0


def test_off_never_clones(monkeypatch: pytest.MonkeyPatch, fake_gpu: FakeGpu) -> None:
    set_mode(monkeypatch, "off")
    for index in (built("flat"), built("ivf", **IVF)):
        index.search(clustered(5, seed=1), 10)
        assert not index.on_gpu
    assert fake_gpu.cloned == [] and fake_gpu.searches == 0


@pytest.mark.parametrize(("kind", "params"), [("flat", {}), ("ivf", IVF)])
def test_stored_bytes_are_the_cpu_format(
    monkeypatch: pytest.MonkeyPatch, fake_gpu: FakeGpu, kind: str, params: dict[str, int]
) -> None:
    index = built(kind, **params)
    before = index.to_bytes()
    hits = index.search(clustered(10, seed=1), 5)
    assert index.on_gpu and index.to_bytes() == before  # the GPU copy changes nothing stored
    loaded = on_cpu_only(monkeypatch, index)
    assert isinstance(loaded._index, faiss.IndexIVFFlat if kind == "ivf" else faiss.IndexIDMap2)
    np.testing.assert_array_equal(loaded.search(clustered(10, seed=1), 5).ids, hits.ids)
    assert fake_gpu.searches == 1


def test_a_refused_clone_falls_back_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, fake_gpu: FakeGpu, caplog: pytest.LogCaptureFixture
) -> None:
    index, queries = built("flat"), clustered(10, seed=1)
    fake_gpu.refuse_clone = "cudaMalloc error out of memory [2]"
    with caplog.at_level(logging.WARNING, logger="workers.backends.faiss_gpu"):
        hits = index.search(queries, 5)
        index.search(queries, 5)
    assert fake_gpu.cloned == ["IndexIDMap2"]  # not tried again until the index changes
    assert [r.getMessage() for r in caplog.records] == [
        "faiss GPU clone failed, searching on the CPU: cudaMalloc error out of memory [2]"
    ]
    same = on_cpu_only(monkeypatch, index).search(queries, 5)
    np.testing.assert_array_equal(hits.ids, same.ids)


def test_a_refused_search_falls_back_with_its_reason(
    fake_gpu: FakeGpu, caplog: pytest.LogCaptureFixture
) -> None:
    index = built("flat")
    fake_gpu.refuse_search = "GPU index only supports k <= 2048"
    with caplog.at_level(logging.WARNING, logger="workers.backends.faiss_gpu"):
        hits = index.search(clustered(3, seed=1), 4)
    assert hits.ids.shape == (3, 4) and (hits.ids >= 0).all()
    assert "search failed, searching on the CPU: GPU index only supports k" in caplog.text


def test_refused_ivf_training_trains_on_the_cpu(
    fake_gpu: FakeGpu, caplog: pytest.LogCaptureFixture
) -> None:
    fake_gpu.refuse_clone = "out of memory"
    with caplog.at_level(logging.WARNING, logger="workers.backends.faiss_gpu"):
        index = built("ivf", **IVF)
    assert index.trained and index.live == 500
    assert "training failed, training on the CPU: out of memory" in caplog.text
    assert index.search(clustered(1, seed=1), 3).ids.shape == (1, 3)


def test_one_resources_object_per_device(fake_gpu: FakeGpu) -> None:
    built("flat").search(clustered(1), 1)
    built("ivf", **IVF).search(clustered(1), 1)
    assert list(faiss_gpu._devices) == [0]
    assert isinstance(faiss_gpu._devices[0].resources, FakeResources)


def test_to_cpu_brings_a_copy_back(fake_gpu: FakeGpu) -> None:
    cpu = faiss.IndexIDMap2(faiss.IndexFlat(DIM))
    cpu.add_with_ids(clustered(4), np.arange(4, dtype=np.int64))
    back = to_cpu(to_gpu(cpu))
    assert isinstance(back, faiss.IndexIDMap2) and back.ntotal == 4


# ---------------------------------------------------------------- real faiss-gpu


def gpu_type(index: Any) -> str:
    return type(faiss.downcast_index(index)).__name__


def same_up_to_ties(gpu: Any, cpu: Any) -> None:
    """Identical ids, except where two neighbours' scores tie within float32 noise."""
    np.testing.assert_allclose(gpu.scores, cpu.scores, atol=1e-4)
    differ = gpu.ids != cpu.ids
    assert np.abs(gpu.scores[differ] - cpu.scores[differ]).max(initial=0) < 1e-4


@pytest.fixture
def no_fallback(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """On a real GPU a fallback to the CPU would hide a bug: none may happen."""
    with caplog.at_level(logging.WARNING, logger="workers.backends.faiss_gpu"):
        yield
    assert not caplog.records, caplog.text


@pytest.mark.gpu
@needs_gpu_faiss
@pytest.mark.usefixtures("no_fallback")
def test_gpu_flat_search_equals_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    set_mode(monkeypatch, "auto")
    index, queries = built("flat", count=20_000, dim=64), clustered(200, seed=1, dim=64)
    hits = index.search(queries, 10)
    assert index.on_gpu
    assert gpu_type(index._gpu._index.index).startswith("GpuIndexFlat")
    same_up_to_ties(hits, on_cpu_only(monkeypatch, index).search(queries, 10))


@pytest.mark.gpu
@needs_gpu_faiss
@pytest.mark.usefixtures("no_fallback")
def test_gpu_ivf_recall_against_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    set_mode(monkeypatch, "auto")
    ivf = built("ivf", count=20_000, dim=64, nlist=64, nprobe=16)  # trained on the GPU
    flat, queries = built("flat", count=20_000, dim=64), clustered(200, seed=1, dim=64)
    hits = ivf.search(queries, 10)
    assert ivf.trained and ivf.on_gpu and gpu_type(ivf._gpu._index) == "GpuIndexIVFFlat"
    truth = on_cpu_only(monkeypatch, flat).search(queries, 10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits.ids, truth, strict=True)])
    assert recall >= 0.95


@pytest.mark.gpu
@needs_gpu_faiss
@pytest.mark.usefixtures("no_fallback")
@pytest.mark.parametrize(("kind", "params"), [("flat", {}), ("ivf", IVF)])
def test_gpu_indexes_store_bytes_the_cpu_loads(
    monkeypatch: pytest.MonkeyPatch, kind: str, params: dict[str, int]
) -> None:
    set_mode(monkeypatch, "auto")
    index, queries = built(kind, **params), clustered(20, seed=1)
    hits = index.search(queries, 5)
    assert index.on_gpu
    loaded = on_cpu_only(monkeypatch, index)
    assert not loaded.on_gpu
    same_up_to_ties(hits, loaded.search(queries, 5))
    back = to_cpu(to_gpu(faiss.IndexFlat(DIM)))
    assert isinstance(faiss.deserialize_index(faiss.serialize_index(back)), faiss.IndexFlat)
