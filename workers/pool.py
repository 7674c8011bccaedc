"""The model pool: models loaded once per worker process and handed to every job.

Thread-safe: with the threads pool (generate queues) many task threads ask for the same
model at once; each model is loaded once, under a lock.
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from jobs.errors import ConfigError
from jobs.registry import ModelEntry, ModelKind, ModelRegistry, resolve_source
from jobs.streams import StreamEntry
from storage.settings import get_storage_settings
from workers.backends import Embedder, EmbedderOptions, embedder_loader
from workers.backends.hf import embedding_dtype
from workers.engine import EngineMetrics
from workers.gpu_memory import check_headroom
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from jobs.chunking import Chunker
    from jobs.context import JobsContext
    from workers.adapters import AdapterRef
    from workers.backends.causal_lm import CausalLM
    from workers.backends.vector_index import VectorIndex

log = logging.getLogger(__name__)

T = TypeVar("T")
INDEX_CACHE_SIZE = 8
StreamWriter = Callable[[list[StreamEntry]], None]


class ModelPool:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: WorkerSettings,
        *,
        streams: StreamWriter | None = None,
        metrics: EngineMetrics | None = None,
        context: "JobsContext | None" = None,
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.streams = streams
        self.metrics = metrics
        self.on_load = on_load  # (model name, seconds): each model loaded (worker metrics)
        # SQL, the broker and the producer side, for runners that read or submit jobs
        # themselves (index jobs fan embedding out; search jobs read chunks).
        self.context = context
        self._embedders: dict[str, Embedder] = {}
        self._causal_lms: dict[str, CausalLM] = {}
        self._chunkers: dict[tuple[str, int, int], Chunker] = {}
        # Loaded index versions by (index id, version): a version never changes once
        # written, so a cached one is never stale; a newer version is a new key.
        self._indexes: OrderedDict[tuple[str, int], VectorIndex] = OrderedDict()
        self._lock = threading.Lock()

    def preload(self) -> None:
        for name in self.settings.preload_models:
            entry = self.registry.get(name)
            if entry.kind is ModelKind.EMBEDDING:
                self.embedder(name)
            elif entry.kind is ModelKind.CAUSAL_LM:
                self.causal_lm(name)

    def embedder(self, name: str) -> Embedder:
        """The loaded embedder for `name`; the first call in a process loads it."""
        with self._lock:
            if name not in self._embedders:
                entry = self.registry.get(name, ModelKind.EMBEDDING)
                self._embedders[name] = self._timed(entry, self._load_embedder)
            return self._embedders[name]

    def causal_lm(self, name: str) -> "CausalLM":
        """The loaded causal LM (and its running batching engine) for `name`."""
        with self._lock:
            lm = self._causal_lms.get(name)
            if lm is not None and not lm.engine.alive:
                # Its engine thread died (a bug): start afresh rather than fail every job.
                log.error("generation engine for %s is dead; reloading the model", name)
                lm.close()
                lm = None
            if lm is None:
                entry = self.registry.get(name, ModelKind.CAUSAL_LM)
                lm = self._causal_lms[name] = self._timed(entry, self._load_causal_lm)
            return lm

    def adapter(self, tenant_id: str, model: str) -> "AdapterRef":
        """The tenant's fine-tuned adapter `model` (`<base>:<name>`) as a local PEFT
        directory, fetched once from the artifact store (sha256-checked)."""
        from workers.adapters import AdapterRef

        if self.context is None:
            raise ConfigError("adapters need the worker's job context")
        row = self.context.adapters.get(tenant_id, model)
        cache = get_storage_settings().data_dir / "cache" / "adapters"
        return AdapterRef(key=row.id, path=self.context.adapters.local_copy(row, cache))

    def chunker(self, model: str, max_tokens: int, overlap_tokens: int) -> "Chunker":
        """A chunker counting in `model`'s tokenizer (no model weights are loaded)."""
        from jobs.chunking import Chunker

        key = (model, max_tokens, overlap_tokens)
        with self._lock:
            if key not in self._chunkers:
                path = resolve_source(self.registry.get(model, ModelKind.EMBEDDING).source)
                self._chunkers[key] = Chunker(
                    path, max_tokens=max_tokens, overlap_tokens=overlap_tokens
                )
            return self._chunkers[key]

    def vector_index(
        self, key: tuple[str, int], load: Callable[[], "VectorIndex"]
    ) -> "VectorIndex":
        """The loaded index version `key` (index id, version), loading it on a miss; the
        least recently used beyond `index_cache_size` are dropped."""
        with self._lock:
            found = self._indexes.get(key)
            if found is not None:
                self._indexes.move_to_end(key)
                return found
        loaded = load()  # outside the lock: a big index takes a while to read
        with self._lock:
            self._indexes[key] = loaded
            self._indexes.move_to_end(key)
            while len(self._indexes) > INDEX_CACHE_SIZE:
                self._indexes.popitem(last=False)
        return loaded

    def _timed(self, entry: ModelEntry, load: Callable[[ModelEntry], T]) -> T:
        started = time.perf_counter()
        loaded = load(entry)
        seconds = time.perf_counter() - started
        log.info("loaded %s in %.1fs", entry.name, seconds)
        if self.on_load is not None:
            self.on_load(entry.name, seconds)
        return loaded

    def _load_embedder(self, entry: ModelEntry) -> Embedder:
        path = resolve_source(entry.source)
        options = embedder_options(entry, self.settings)
        check_headroom(
            path,
            embedding_dtype(entry.dtype, options.device),
            options.device,
            name=entry.name,
            headroom=self.settings.gpu_memory_headroom,
        )
        backend = embedding_backend(entry.backend, self.settings)
        log.info("embedding model %s: backend %s on %s", entry.name, backend, options.device)
        return embedder_loader(backend)(path, options)

    def _load_causal_lm(self, entry: ModelEntry) -> "CausalLM":
        if entry.backend != "hf":
            raise ConfigError(f"model '{entry.name}': no causal-lm backend {entry.backend!r}")
        from workers.backends.causal_lm import (
            CausalLM,
            context_length,
            load_causal_lm,
            resolve_dtype,
        )
        from workers.engine import GenerationEngine

        path = resolve_source(entry.source)
        check_headroom(
            path,
            resolve_dtype(entry.dtype, self.settings.device),
            self.settings.device,
            name=entry.name,
            headroom=self.settings.gpu_memory_headroom,
            spread=entry.device_map == "auto",
        )
        model, tokenizer = load_causal_lm(
            path,
            device=self.settings.device,
            dtype=entry.dtype,
            device_map=entry.device_map,
            trust_remote_code=entry.trust_remote_code,
            sliding_window=entry.sliding_window,
        )
        engine = GenerationEngine(
            entry.name,
            model,
            tokenizer,  # type: ignore[arg-type]
            max_batch=self.settings.generate_max_batch,
            continuous=self.settings.generate_continuous,
            threads=self.settings.generate_threads,
            max_adapters=self.settings.generate_max_adapters,
            pad_to_multiple_of=self.settings.padding_multiple(),
            streams=self.streams,
            metrics=self.metrics,
        )
        return CausalLM(entry.name, engine, context_length(model))

    def close(self) -> None:
        with self._lock:
            for embedder in self._embedders.values():
                embedder.close()
            for lm in self._causal_lms.values():
                lm.close()
            self._embedders.clear()
            self._causal_lms.clear()


def embedding_backend(backend: str, settings: WorkerSettings) -> str:
    """The backend that serves an embedding model registered with `backend`: "auto" is
    SEEKQ_EMBED_BACKEND, and its own "auto" TensorRT on a GPU (which itself falls back to
    hf where TensorRT cannot run) and ONNX Runtime on the CPU."""
    if backend != "auto":
        return backend
    if settings.embed_backend != "auto":
        return settings.embed_backend
    return "tensorrt" if settings.device.startswith("cuda") else "onnx"


def embedder_options(entry: ModelEntry, settings: WorkerSettings) -> EmbedderOptions:
    return EmbedderOptions(
        device=settings.device,
        batch_tokens=settings.embed_batch_tokens,
        max_batch=settings.embed_max_batch,
        trust_remote_code=entry.trust_remote_code,
        dtype=entry.dtype,
        pad_to_multiple_of=settings.padding_multiple(),
        attn_implementation=settings.attn_implementation,
        compile=settings.torch_compile,
        cache_dir=settings.model_cache_dir,
        threads=settings.torch_threads,
    )
