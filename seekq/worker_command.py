"""`seekq worker`: pin the GPU first, then import the worker app and hand over to Celery.

Pools: generate and embed queues run on the threads pool (the task threads hand requests
to the model's batching engine or the embed collector and wait), and so does a worker
for the batch and webhooks queues (batch jobs wait for their lines, webhook deliveries
for the receiver's answer); other queues run one job at a time on the solo pool.
`--pool` overrides.

`--gpu N` pins the process to one device (`--gpu 0,1`: a worker that sees both, for a
model spread over them with device_map "auto"); `seekq worker --gpus` starts one pinned
worker per device (seekq/gpu_workers.py).
"""

import json
import logging
import os
import tempfile

import typer

from jobs.catalog import CATALOG, JobKind
from jobs.catalog import queues as known_queues
from jobs.registry import ModelEntry, ModelKind, ModelRegistry
from jobs.settings import get_jobs_settings
from jobs.webhooks import WEBHOOK_QUEUE
from seekq import logs
from storage.settings import get_storage_settings

CUDA_SAFE_POOLS = {"solo", "threads"}
GENERATE_QUEUE = CATALOG[JobKind.GENERATE].queue
EMBED_QUEUE = CATALOG[JobKind.EMBED].queue
INDEX_QUEUE = "cpu.index"
SEARCH_QUEUE = "cpu.search"
BATCH_QUEUE = CATALOG[JobKind.BATCH].queue
WAITING_QUEUES = {BATCH_QUEUE, WEBHOOK_QUEUE}
# A batch job mostly waits for its lines: one worker follows this many batches at once,
# so one tenant's long batch never holds back another's.
BATCH_SLOTS = 16


def run_worker(
    queues: str,
    gpu: str | None,
    pool: str,
    concurrency: int | None,
    name: str | None,
    log_level: str,
) -> None:
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    known = set(known_queues())
    if not known.issuperset(wanted):  # a model's own queue is known once it is registered
        known |= _registry().own_queues()
    unknown = sorted(set(wanted) - known)
    if not wanted or unknown:
        raise typer.BadParameter(f"unknown queues {unknown}; known: {sorted(known)}")
    pool, concurrency = _pool_for(wanted, pool, concurrency)
    _check_no_self_wait(wanted, concurrency)
    devices = _pin_gpu(gpu, pool) if gpu is not None else None
    os.environ.setdefault("SEEKQ_PRELOAD_MODELS", _preload_for(wanted))
    if pool == "prefork":
        # Before anything imports prometheus_client: children write their metrics to
        # files here and the parent serves their sum (workers/multiprocess_metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="seekq-metrics-")
    logs.configure(log_level)
    if devices is not None:
        logging.getLogger(__name__).info(
            "pinned to GPU %s (CUDA_VISIBLE_DEVICES=%s)",
            ",".join(map(str, devices)),
            os.environ["CUDA_VISIBLE_DEVICES"],
        )
    # Imported only now: CUDA_VISIBLE_DEVICES must be set before anything imports torch.
    from workers.app import app

    argv = ["worker", "-Q", ",".join(wanted), "-P", pool, "-c", str(concurrency)]
    argv += ["-n", name or node_name(devices, wanted), "-l", log_level, "-E"]
    argv += ["--without-gossip", "--without-mingle"]
    app.worker_main(argv)


def node_name(gpu: int | list[int] | None, queues: list[str]) -> str:
    """The worker's name in Flower and Celery's events: the devices it is pinned to and the
    queues it consumes, e.g. `seekq-gpu0-gpu.generate+gpu.embed@host` (`seekq-gpu0+1-...`
    for a worker on two)."""
    devices = [gpu] if isinstance(gpu, int) else gpu
    device = "gpu" + "+".join(map(str, devices)) if devices else "cpu"
    return f"seekq-{device}-{'+'.join(queues)}@%h"


def _pool_for(queues: list[str], pool: str, concurrency: int | None) -> tuple[str, int]:
    """The threads pool for generate and embed queues: their task threads hand jobs to a
    batching engine or collector and wait, so a slot is a waiting request, not a core.
    An embed worker keeps two collections' worth of messages in hand, so the next batch
    has arrived while one runs. Other queues: one job at a time on the solo pool."""
    if pool != "auto":
        return pool, concurrency or 1
    if set(queues) <= WAITING_QUEUES:
        return "threads", concurrency or BATCH_SLOTS
    generates, embeds = _consumes(queues, GENERATE_QUEUE), _consumes(queues, EMBED_QUEUE)
    if not generates and not embeds:
        return "solo", 1
    from workers.settings import get_worker_settings

    settings = get_worker_settings()
    slots = settings.generate_max_batch if generates else 0
    slots += 2 * settings.embed_collect_max_jobs if embeds else 0
    return "threads", concurrency or slots


def _consumes(queues: list[str], kind_queue: str) -> bool:
    """The kind's queue or a model's own queue of that kind (`gpu.generate.big`)."""
    return any(q == kind_queue or q.startswith(kind_queue + ".") for q in queues)


def _check_no_self_wait(queues: list[str], concurrency: int) -> None:
    """An index job waits for the embed jobs it fans out: a worker that runs one job at a
    time and consumes both queues would wait for itself forever."""
    if INDEX_QUEUE in queues and EMBED_QUEUE in queues and concurrency < 2:
        raise typer.BadParameter(
            f"{INDEX_QUEUE} and {EMBED_QUEUE} in one single-slot worker would deadlock "
            "(index jobs wait for embed jobs): run them in separate workers"
        )


def _preload_for(queues: list[str]) -> str:
    """Models to load at start (a JSON list): those the worker's queues run. A model with a
    queue of its own loads only where that queue is consumed; otherwise the embedding
    default for embed and search queues (search must answer warm), and every causal LM
    for a generate queue."""
    names = [entry.name for entry in _registry().all() if _runs_on(entry, queues)]
    if SEARCH_QUEUE in queues and "all-MiniLM-L6-v2" not in names:
        names.insert(0, "all-MiniLM-L6-v2")  # search embeds its queries in-process
    return json.dumps(names)


def _pin_gpu(gpu: int | str, pool: str) -> list[int]:
    """Make `gpu` (an index, or indices "0,1") the only devices CUDA shows this process,
    before anything imports torch; the devices."""
    devices = [gpu] if isinstance(gpu, int) else parse_devices(gpu, "--gpu")
    if min(devices) < 0:
        raise typer.BadParameter("--gpu takes a device index >= 0")
    if pool not in CUDA_SAFE_POOLS:
        raise typer.BadParameter(f"--gpu needs a CUDA-safe pool ({sorted(CUDA_SAFE_POOLS)})")
    # nvidia-smi's order (PCI bus), so `--gpu N` is the device nvidia-smi calls N.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    os.environ["SEEKQ_DEVICE"] = "cuda"
    return devices


def parse_devices(text: str, option: str) -> list[int]:
    """Device indices written "0" or "0,1,3"."""
    try:
        devices = [int(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{option} takes device indices, e.g. 0 or 0,1: {text!r}"
        ) from None
    if len(set(devices)) < len(devices):
        raise typer.BadParameter(f"{option} names a device twice: {text!r}")
    return devices


def _registry() -> ModelRegistry:
    settings = get_jobs_settings()
    return ModelRegistry.load(
        settings.resolved_models_file(get_storage_settings()), settings.trust_remote_code
    )


def _runs_on(entry: ModelEntry, queues: list[str]) -> bool:
    """Whether a worker on `queues` runs jobs of the model (so should load it at start)."""
    if entry.queue is not None:
        return entry.queue in queues
    if entry.kind is ModelKind.CAUSAL_LM:
        return GENERATE_QUEUE in queues
    return entry.name == "all-MiniLM-L6-v2" and EMBED_QUEUE in queues
