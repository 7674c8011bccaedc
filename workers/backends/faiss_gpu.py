"""faiss on the GPU for flat and IVF vector indexes, where the installed faiss has GPUs.

`VectorIndex` keeps its CPU faiss index as the one it changes and serialises, so stored
bytes are always faiss's CPU format and any worker, with a GPU or without, loads them. On
top of it:

- searches run on a GPU copy (`GpuReplica`), cloned with `index_cpu_to_gpu` on the first
  search after a change and dropped by the next change (`tune()` is one: the clone copies
  nprobe);
- an IVF index's k-means assigns its points with a GPU flat index (`train_on_gpu`), the
  way faiss's own examples train large IVF indexes; the trained index stays on the CPU.

HNSW stays on the CPU: FAISS has no GPU HNSW. Flat (`IndexIDMap2` over `IndexFlat`) clones
as the same id map on the CPU over a `GpuIndexFlat`; IVF (`IndexIVFFlat`) as a
`GpuIndexIVFFlat` with 64-bit ids (the cloner's default). Both stay float32 (no float16
options), so GPU results are the CPU's up to summation order.

`SEEKQ_FAISS_GPU` (`FaissGpuSettings`): `auto` (default: use the GPU when faiss has one)
or `off`. The device is 0, the first the process sees: a worker started with
`--gpu N` sees only GPU N.

faiss's GPU indexes and its `StandardGpuResources` are not thread-safe, not even for
searches (faiss wiki, "Threads and asynchronous calls"). So the device has one resources
object, built on first use and shared by every replica (they share its scratch memory),
and one lock that every GPU call holds.

A GPU that refuses (out of memory, k or nprobe past faiss-gpu's selection limit, a type it
lacks) is logged as a warning with faiss's reason, and the CPU index answers: the GPU never
fails a job. A clone that failed is not tried again until the index changes.
"""

import logging
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import faiss
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

GPU_KINDS = frozenset({"flat", "ivf"})  # FAISS has no GPU HNSW
# faiss-gpu's k-selection limit (2048 on CUDA builds): a larger k searches on the CPU.
GPU_MAX_K = 2048
DEVICE = 0
_FAILURES = (RuntimeError, MemoryError)  # what faiss raises for a GPU that refuses


class FaissGpuSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEEKQ_", extra="ignore")

    # "auto": flat and IVF indexes use the GPU when faiss has one; "off": faiss stays on
    # the CPU, e.g. to leave the GPU's memory to the models.
    faiss_gpu: Literal["auto", "off"] = "auto"


@lru_cache(maxsize=1)
def get_faiss_gpu_settings() -> FaissGpuSettings:
    return FaissGpuSettings()


@dataclass
class _Device:
    resources: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


_devices: dict[int, _Device] = {}
_devices_lock = threading.Lock()


@lru_cache(maxsize=1)
def gpu_faiss_available() -> bool:
    """Whether this faiss is a GPU build that sees at least one GPU (False for faiss-cpu)."""
    if not (hasattr(faiss, "get_num_gpus") and hasattr(faiss, "StandardGpuResources")):
        return False
    return int(faiss.get_num_gpus()) > 0


def gpu_enabled(kind: str) -> bool:
    """Whether indexes of this kind use the GPU in this process."""
    wanted = kind in GPU_KINDS and get_faiss_gpu_settings().faiss_gpu == "auto"
    return wanted and gpu_faiss_available()


def to_gpu(index: Any) -> Any:
    """A GPU copy of a CPU index; raises faiss's RuntimeError when the GPU refuses."""
    device = _device()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = False  # exact vectors, as on the CPU
    with device.lock:
        return faiss.index_cpu_to_gpu(device.resources, DEVICE, index, options)


def to_cpu(index: Any) -> Any:
    """The CPU form of a GPU index (what `faiss.serialize_index` can write)."""
    with _device().lock:
        return faiss.index_gpu_to_cpu(index)


def train_on_gpu(ivf: Any, vectors: Any) -> bool:
    """Train an untrained CPU IVF index with its k-means on the GPU. False: not trained
    (GPU off or absent, or it refused: logged), and `ivf` may be half-trained, so the
    caller trains a fresh one on the CPU."""
    if not gpu_enabled("ivf"):
        return False
    try:
        assigner = to_gpu(faiss.IndexFlat(ivf.d, ivf.metric_type))
        ivf.clustering_index = assigner
        try:
            with _device().lock:
                ivf.train(vectors)
        finally:
            ivf.clustering_index = None  # `assigner` is freed with this frame
    except _FAILURES as error:
        log.warning("faiss GPU training failed, training on the CPU: %s", _reason(error))
        return False
    return True


class GpuReplica:
    """The GPU copy one index searches with, or none: HNSW, `off`, no GPU, or a refused
    clone all leave searches to the CPU index."""

    def __init__(self, kind: str) -> None:
        self._wanted = gpu_enabled(kind)
        self._index: Any = None
        self._tried = False
        self._lock = threading.Lock()  # concurrent first searches clone once

    @property
    def cloned(self) -> bool:
        """Whether a GPU copy exists now (made by the first search after a change)."""
        return self._index is not None

    def drop(self) -> None:
        """Forget the copy: the CPU index changed (writers do not search meanwhile)."""
        self._index, self._tried = None, False

    def search(self, cpu_index: Any, matrix: Any, k: int) -> tuple[Any, Any] | None:
        """The GPU's (scores, ids) for `cpu_index`, or None: search on the CPU."""
        # k <= ntotal: padding short rows with -1 stays the CPU's job (a flat index is
        # only short when k exceeds what it holds).
        if not self._wanted or k > min(GPU_MAX_K, cpu_index.ntotal):
            return None
        replica = self._replica(cpu_index)
        if replica is None:
            return None
        try:
            with _device().lock:
                scores, ids = replica.search(matrix, k)
        except _FAILURES as error:
            log.warning("faiss GPU search failed, searching on the CPU: %s", _reason(error))
            return None
        return scores, ids

    def _replica(self, cpu_index: Any) -> Any:
        with self._lock:
            if not self._tried:
                self._tried = True
                self._index = _clone_or_none(cpu_index)
            return self._index


def _clone_or_none(cpu_index: Any) -> Any:
    try:
        return to_gpu(cpu_index)
    except _FAILURES as error:
        log.warning("faiss GPU clone failed, searching on the CPU: %s", _reason(error))
        return None


def _device() -> _Device:
    with _devices_lock:
        if DEVICE not in _devices:
            _devices[DEVICE] = _Device(faiss.StandardGpuResources())
        return _devices[DEVICE]


def _reason(error: BaseException) -> str:
    """faiss's message without its C++ stack trace lines."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
