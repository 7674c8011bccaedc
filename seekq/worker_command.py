"""`seekq worker`: pin the GPU first, then import the worker app and hand over to Celery."""

import os

import typer

from jobs.catalog import CATALOG
from jobs.catalog import queues as known_queues
from seekq import logs

CUDA_SAFE_POOLS = {"solo", "threads"}


def run_worker(
    queues: str, gpu: int | None, pool: str, concurrency: int, name: str | None, log_level: str
) -> None:
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(known_queues()))
    if not wanted or unknown:
        raise typer.BadParameter(f"unknown queues {unknown}; known: {known_queues()}")
    if gpu is not None:
        _pin_gpu(gpu, pool)
    if not any(e.model_kind for e in CATALOG.values() if e.queue in wanted):
        # No queue here runs a model: don't spend a model load on process start.
        os.environ.setdefault("SEEKQ_PRELOAD_MODELS", "[]")
    logs.configure(log_level)
    # Imported only now: CUDA_VISIBLE_DEVICES must be set before anything imports torch.
    from workers.app import app

    device = f"gpu{gpu}" if gpu is not None else "cpu"
    argv = ["worker", "-Q", ",".join(wanted), "-P", pool, "-c", str(concurrency)]
    argv += ["-n", name or f"seekq-{device}@%h", "-l", log_level, "-E"]
    argv += ["--without-gossip", "--without-mingle"]
    app.worker_main(argv)


def _pin_gpu(gpu: int, pool: str) -> None:
    if gpu < 0:
        raise typer.BadParameter("--gpu takes a device index >= 0")
    if pool not in CUDA_SAFE_POOLS:
        raise typer.BadParameter(f"--gpu needs a CUDA-safe pool ({sorted(CUDA_SAFE_POOLS)})")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["SEEKQ_DEVICE"] = "cuda"
