"""The model pool: models loaded once per worker process and handed to every job."""

import importlib
import logging
import time
from pathlib import Path

from jobs.errors import ConfigError
from jobs.registry import ModelEntry, ModelKind, ModelRegistry
from workers.backends import Embedder, embedder_loader
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


class ModelPool:
    def __init__(self, registry: ModelRegistry, settings: WorkerSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._embedders: dict[str, Embedder] = {}

    def preload(self) -> None:
        for name in self.settings.preload_models:
            entry = self.registry.get(name)
            if entry.kind is ModelKind.EMBEDDING:
                self.embedder(name)

    def embedder(self, name: str) -> Embedder:
        """The loaded embedder for `name`; the first call in a process loads it."""
        if name not in self._embedders:
            self._embedders[name] = self._load_embedder(
                self.registry.get(name, ModelKind.EMBEDDING)
            )
        return self._embedders[name]

    def _load_embedder(self, entry: ModelEntry) -> Embedder:
        started = time.perf_counter()
        loader = embedder_loader(entry.backend)
        embedder = loader(
            resolve_source(entry.source),
            device=self.settings.device,
            batch_tokens=self.settings.embed_batch_tokens,
            max_batch=self.settings.embed_max_batch,
            trust_remote_code=entry.trust_remote_code,
        )
        log.info("loaded %s in %.1fs", entry.name, time.perf_counter() - started)
        return embedder

    def close(self) -> None:
        for embedder in self._embedders.values():
            embedder.close()
        self._embedders.clear()


def resolve_source(source: str) -> Path:
    """A registry source as a directory: a path, or package:<module> that ships the files."""
    if source.startswith(PACKAGE_PREFIX):
        module = importlib.import_module(source.removeprefix(PACKAGE_PREFIX))
        path = Path(module.get_model_path())
    else:
        path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"model source {source!r} is not a directory")
    return path
