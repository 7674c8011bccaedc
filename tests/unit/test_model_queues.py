"""A model's own queue: its validation, `queue_for`, the dispatcher's routing (first
publish and the outbox sweep) and what a worker on such a queue accepts and preloads."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer

from jobs.catalog import CATALOG, JobKind, KindEntry
from jobs.dispatch import Dispatcher
from jobs.errors import ConfigError
from jobs.queue import queue_for
from jobs.registry import DEFAULT_MODELS, ModelEntry, ModelKind, ModelRegistry, read_models_file
from jobs.settings import get_jobs_settings
from seekq import worker_command
from storage.db import make_engine, make_session_factory
from storage.migrate import upgrade
from storage.repos import JobRepo, TenantRepo
from storage.settings import get_storage_settings
from storage.tables import JobRow, TenantRow

GENERATE = CATALOG[JobKind.GENERATE]
EMBED = CATALOG[JobKind.EMBED]


def model(name: str, kind: ModelKind, queue: str | None = None) -> ModelEntry:
    return ModelEntry(name=name, kind=kind, backend="hf", source="/models/x", queue=queue)


def registry() -> ModelRegistry:
    return ModelRegistry(
        (
            *DEFAULT_MODELS,
            model("big", ModelKind.CAUSAL_LM, "gpu.generate.big"),
            model("small", ModelKind.CAUSAL_LM),
            model("wide", ModelKind.EMBEDDING, "gpu.embed.wide"),
        )
    )


@pytest.mark.parametrize(
    ("kind", "queue"),
    [
        (ModelKind.CAUSAL_LM, "gpu.generate.big"),
        (ModelKind.CAUSAL_LM, "gpu.generate.h200_x8-a"),
        (ModelKind.CAUSAL_LM, "gpu.generate.0"),
        (ModelKind.CAUSAL_LM, "gpu.generate." + "a" * 32),
        (ModelKind.EMBEDDING, "gpu.embed.wide"),
    ],
)
def test_a_queue_under_the_kinds_queue_is_accepted(kind: ModelKind, queue: str) -> None:
    assert model("m", kind, queue).serving_queue == queue


@pytest.mark.parametrize(
    ("kind", "queue"),
    [
        (ModelKind.CAUSAL_LM, "gpu.embed.big"),  # another kind's queue
        (ModelKind.EMBEDDING, "gpu.generate.big"),
        (ModelKind.CAUSAL_LM, "gpu.generate"),  # the kind's queue itself: leave it unset
        (ModelKind.CAUSAL_LM, "gpu.generate."),
        (ModelKind.CAUSAL_LM, "gpu.generate.Big"),
        (ModelKind.CAUSAL_LM, "gpu.generate.a.b"),
        (ModelKind.CAUSAL_LM, "gpu.generate.-a"),
        (ModelKind.CAUSAL_LM, "gpu.generate." + "a" * 33),
        (ModelKind.CAUSAL_LM, "gpu.generatebig"),
        (ModelKind.CAUSAL_LM, "cpu.ping"),
    ],
)
def test_any_other_queue_is_refused_with_the_expected_form(kind: ModelKind, queue: str) -> None:
    prefix = "gpu.generate" if kind is ModelKind.CAUSAL_LM else "gpu.embed"
    with pytest.raises(ConfigError, match=rf"model 'm': queue must be {prefix}\.<suffix>"):
        model("m", kind, queue)


def test_the_models_file_carries_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    entries = [{"name": "big", "kind": "causal-lm", "path": "big", "queue": "gpu.generate.big"}]
    path.write_text(json.dumps(entries))
    (entry,) = read_models_file(path, frozenset())
    assert entry.queue == "gpu.generate.big"
    entries[0]["queue"] = "gpu.embed.big"
    path.write_text(json.dumps(entries))
    with pytest.raises(ConfigError, match=r"queue must be gpu\.generate\.<suffix>"):
        read_models_file(path, frozenset())


def test_a_model_without_a_queue_serves_on_its_kinds_queue() -> None:
    assert model("m", ModelKind.CAUSAL_LM).serving_queue == "gpu.generate"
    assert model("m", ModelKind.EMBEDDING).serving_queue == "gpu.embed"
    assert registry().own_queues() == {"gpu.generate.big", "gpu.embed.wide"}


@pytest.mark.parametrize(
    ("kind", "spec", "queue"),
    [
        (JobKind.GENERATE, {"model": "big", "prompt": "x"}, "gpu.generate.big"),
        (JobKind.GENERATE, {"model": "big:mine", "prompt": "x"}, "gpu.generate.big"),
        (JobKind.GENERATE, {"model": "small", "prompt": "x"}, "gpu.generate"),
        (JobKind.GENERATE, {"model": "unknown", "prompt": "x"}, "gpu.generate"),
        (JobKind.GENERATE, {"model": "wide", "prompt": "x"}, "gpu.generate"),  # not a causal LM
        (JobKind.GENERATE, {"prompt": "x"}, "gpu.generate"),
        (JobKind.EMBED, {"model": "wide", "input": ["x"]}, "gpu.embed.wide"),
        (JobKind.EMBED, {"model": "all-MiniLM-L6-v2", "input": ["x"]}, "gpu.embed"),
        # A fine-tune trains on its own queue whatever its base model.
        (JobKind.FINETUNE, {"model": "big"}, "gpu.finetune"),
        (JobKind.PING, {}, "cpu.ping"),
    ],
)
def test_queue_for(kind: JobKind, spec: dict[str, object], queue: str) -> None:
    assert queue_for(CATALOG[kind], spec, registry()) == queue


class Published(list[tuple[str, str]]):
    """(job id, queue) of each publish."""

    def publish(self, entry: KindEntry, job_id: str) -> None:
        self.append((job_id, entry.queue))


@pytest.fixture
def sessions(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    with factory.begin() as session:
        TenantRepo(session).add(TenantRow(id="t", name="t"))
    return factory


def add_job(sessions, job_id: str, kind: JobKind, spec: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as session:
        JobRepo(session).add(
            JobRow(
                id=job_id,
                tenant_id="t",
                kind=kind.value,
                status="queued",
                priority=5,
                actor="k",
                spec=spec,
                attempt=0,
                created_at=datetime.now(UTC) - timedelta(seconds=60),
            )
        )


def test_dispatch_publishes_each_job_to_its_models_queue(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "on-big", JobKind.GENERATE, {"model": "big", "prompt": "x"})
    add_job(sessions, "on-small", JobKind.GENERATE, {"model": "small", "prompt": "x"})
    published = Published()
    dispatcher = Dispatcher(sessions, published, registry())
    assert dispatcher.dispatch(GENERATE, ["on-big", "on-small"]) == []
    assert published == [("on-big", "gpu.generate.big"), ("on-small", "gpu.generate")]


def test_the_outbox_sweep_publishes_to_the_models_queue_too(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "big-gen", JobKind.GENERATE, {"model": "big:mine", "prompt": "x"})
    add_job(sessions, "wide-embed", JobKind.EMBED, {"model": "wide", "input": ["x"]})
    add_job(sessions, "plain-embed", JobKind.EMBED, {"model": "all-MiniLM-L6-v2", "input": []})
    published = Published()
    assert Dispatcher(sessions, published, registry()).sweep(grace_s=10) == 3
    assert sorted(published) == [
        ("big-gen", "gpu.generate.big"),
        ("plain-embed", "gpu.embed"),
        ("wide-embed", "gpu.embed.wide"),
    ]


def test_without_the_registry_every_job_goes_to_its_kinds_queue(sessions) -> None:  # type: ignore[no-untyped-def]
    add_job(sessions, "on-big", JobKind.GENERATE, {"model": "big", "prompt": "x"})
    published = Published()
    Dispatcher(sessions, published).dispatch(GENERATE, ["on-big"])
    assert published == [("on-big", "gpu.generate")]


@pytest.fixture
def models_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker command reads the registry through settings: point them at a models
    file with one causal LM on its own queue and one on the kind's queue."""
    entries = [
        {"name": "big", "kind": "causal-lm", "path": "big", "queue": "gpu.generate.big"},
        {"name": "small", "kind": "causal-lm", "path": "small"},
    ]
    (tmp_path / "models.json").write_text(json.dumps(entries))
    monkeypatch.setenv("SEEKQ_MODELS_FILE", str(tmp_path / "models.json"))
    monkeypatch.setenv("SEEKQ_DATA_DIR", str(tmp_path))
    get_jobs_settings.cache_clear()
    get_storage_settings.cache_clear()
    yield
    get_jobs_settings.cache_clear()
    get_storage_settings.cache_clear()


@pytest.mark.usefixtures("models_env")
def test_a_worker_preloads_the_models_routed_to_its_queues() -> None:
    preload = worker_command._preload_for
    assert json.loads(preload(["gpu.generate"])) == ["small"]
    assert json.loads(preload(["gpu.generate.big"])) == ["big"]
    assert json.loads(preload(["gpu.generate", "gpu.generate.big"])) == ["big", "small"]
    assert json.loads(preload(["gpu.embed"])) == ["all-MiniLM-L6-v2"]
    assert json.loads(preload(["cpu.search"])) == ["all-MiniLM-L6-v2"]
    assert json.loads(preload(["cpu.ping"])) == []


@pytest.mark.usefixtures("models_env")
def test_an_unregistered_model_queue_is_refused_and_registered_ones_are_listed() -> None:
    with pytest.raises(typer.BadParameter) as refused:
        worker_command.run_worker("gpu.generate.huge", None, "auto", None, None, "INFO")
    assert "unknown queues ['gpu.generate.huge']" in str(refused.value)
    assert "'gpu.generate.big'" in str(refused.value)


def test_a_model_queue_gets_the_pool_of_its_kind() -> None:
    from seekq.worker_command import _pool_for

    assert _pool_for(["gpu.generate.big"], "auto", None)[0] == "threads"
    assert _pool_for(["gpu.embed.multilingual"], "auto", 4) == ("threads", 4)
    assert _pool_for(["gpu.finetune"], "auto", None) == ("solo", 1)


def test_a_models_own_queue_has_its_depth_metric() -> None:
    import uuid

    import redis
    from prometheus_client import CollectorRegistry, generate_latest

    from jobs.queue_depth import QueueDepth
    from tests.conftest import REDIS_DB_BASE, redis_url

    queue = f"gpu.generate.t{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url(REDIS_DB_BASE))
    registry = CollectorRegistry()
    registry.register(QueueDepth(client, {queue}))
    try:
        client.rpush(queue, "a", "b", "c")
        text = generate_latest(registry).decode()
    finally:
        client.delete(queue)
    assert f'seekq_queue_depth{{queue="{queue}"}} 3.0' in text
    assert 'seekq_queue_depth{queue="gpu.generate"}' in text
