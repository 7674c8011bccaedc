"""The Celery worker application: one thin task per job kind, derived from the catalog.

The model pool and the job context are built in `worker_process_init` (once per worker
process, after any fork) and passed to every task; nothing heavy happens at import.
"""

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from jobs.catalog import CATALOG, JobKind, KindEntry
from jobs.context import JobsContext
from jobs.errors import RetryableError
from jobs.lifecycle import LeaseHeldError
from jobs.queue import make_celery
from jobs.queue_depth import QueueDepth
from jobs.reconciler import ReconcilerThread
from jobs.settings import get_jobs_settings
from jobs.streams import TokenStreams
from jobs.webhook_delivery import Deliverer
from jobs.webhooks import WEBHOOK_TASK
from workers import multiprocess_metrics
from workers.cancel import CancelWatch
from workers.embed_batch import EmbedBatch, EmbedCollector
from workers.execution import LeaseKeeper, Outcome, execute
from workers.gpu_metrics import GpuCollector
from workers.job_metrics import JobMetrics
from workers.metrics import GenerationMetrics
from workers.pool import ModelPool
from workers.runners import RUNNERS
from workers.settings import get_worker_settings

log = logging.getLogger(__name__)

# What a task does with its job id (the task is passed for its request's hostname).
Work = Callable[[Task, str], Outcome]

READY_MESSAGE = "seekq worker ready"
CELERY_LIMIT_GRACE_S = 30.0  # prefork's own hard limit: this long after seekq's


class WorkerState:
    """What a worker process holds between tasks; filled in by `start`: in
    `worker_process_init` for the prefork and solo pools (after any fork), in
    `worker_init` for the threads pool (which has no child processes)."""

    def __init__(self) -> None:
        self.context: JobsContext | None = None
        self.pool: ModelPool | None = None
        self.cancels: CancelWatch | None = None
        self.leases = LeaseKeeper()
        self.metrics: GenerationMetrics | None = None
        self.embeds: EmbedCollector | None = None  # built by the first embed task
        self.reconciler: ReconcilerThread | None = None
        self.deliverer: Deliverer | None = None
        self._embeds_lock = threading.Lock()

    def start(self, **_: Any) -> None:
        settings = get_worker_settings()
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        self.context = JobsContext.create()
        self.cancels = CancelWatch(self.context.redis)
        self.metrics = GenerationMetrics()
        job_metrics = JobMetrics(self.metrics.registry)
        own_queues = self.context.models.own_queues()
        self.metrics.registry.register(QueueDepth(self.context.redis, own_queues))
        self.metrics.registry.register(GpuCollector())
        self.context.end_observer = job_metrics.observe_end
        if settings.metrics_port is not None and not multiprocess_metrics.enabled():
            port = self.metrics.serve(settings.metrics_port, settings.metrics_addr)
            log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, port)
        streams = TokenStreams(self.context.redis)
        self.pool = ModelPool(
            self.context.models,
            settings,
            streams=streams.write,
            metrics=self.metrics,
            context=self.context,
            on_load=job_metrics.observe_model_load,
        )
        self.pool.preload()
        self.deliverer = self.context.deliverer()
        every_s = self.context.settings.reconcile_every_s
        if every_s > 0:
            self.reconciler = ReconcilerThread(
                self.context.reconciler(), self.context.redis, every_s
            )
            self.reconciler.start()

    def start_threads_pool(self, sender: Any = None, **_: Any) -> None:
        pool_cls = getattr(sender, "pool_cls", None)
        name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
        if "thread" in str(name):
            self.start()
        elif multiprocess_metrics.enabled():  # prefork: the parent serves all children
            settings = get_worker_settings()
            if settings.metrics_port is not None:
                broker = get_jobs_settings().broker_url
                multiprocess_metrics.serve_parent(
                    settings.metrics_port, settings.metrics_addr, broker
                )

    def child_exited(self, pid: int | None = None, **_: Any) -> None:
        if pid is not None and multiprocess_metrics.enabled():
            multiprocess_metrics.child_exited(pid)

    def stop(self, **_: Any) -> None:
        if self.reconciler is not None:
            self.reconciler.close()
        if self.embeds is not None:
            self.embeds.close()
        if self.pool is not None:
            self.pool.close()
        self.leases.close()
        if self.cancels is not None:
            self.cancels.close()
        if self.context is not None:
            self.context.close()
        if self.metrics is not None:
            self.metrics.close()

    def require(self) -> tuple[JobsContext, ModelPool]:
        if self.context is None or self.pool is None:
            raise RuntimeError("worker process was not initialised (worker_process_init)")
        return self.context, self.pool

    def embed_collector(self, worker: str) -> EmbedCollector:
        """The process's embed collector; the first embed task builds it (its lifecycle
        names the worker as every other task's does)."""
        with self._embeds_lock:
            if self.embeds is None:
                context, pool = self.require()
                settings = get_worker_settings()
                batch = EmbedBatch(
                    context.lifecycle(worker),
                    pool,
                    self.leases,
                    self.cancels,
                    context.settings.max_attempts,
                    max_texts=settings.embed_collect_max_texts,
                )
                max_jobs, collect_s = settings.embed_collect_max_jobs, settings.embed_collect_ms
                self.embeds = EmbedCollector(batch.run, max_jobs, collect_s / 1000)
            return self.embeds


def create_worker_app() -> Celery:
    settings = get_jobs_settings()
    app = make_celery(settings)
    state = WorkerState()
    for entry in CATALOG.values():
        _register(app, entry.limited(settings.time_limits_s), state)
    _register_webhooks(app, state)
    worker_process_init.connect(state.start, weak=False)
    worker_init.connect(state.start_threads_pool, weak=False)
    worker_process_shutdown.connect(state.stop, weak=False)
    worker_shutdown.connect(state.stop, weak=False)
    worker_process_shutdown.connect(state.child_exited, weak=False)
    worker_ready.connect(lambda **_: log.warning(READY_MESSAGE), weak=False)
    return app


def _register(app: Celery, entry: KindEntry, state: WorkerState) -> None:
    """One thin task: embed jobs go through the process's collector (micro-batched with
    the embed jobs that arrive with them), every other kind runs alone."""
    work = _batched(state) if entry.kind is JobKind.EMBED else _alone(entry, state)

    def run(task: Task, job_id: str) -> str | None:
        if not _is_job_id(job_id):  # a hand-made or corrupt message: nothing to look up
            log.error("malformed message dropped task=%s: its argument is not a job id", task.name)
            return None
        try:
            outcome = work(task, job_id)
        except LeaseHeldError as exc:
            raise task.retry(countdown=exc.retry_in_s, max_retries=None) from None
        except RetryableError:
            backoff_s = min(60, 2**task.request.retries)
            raise task.retry(countdown=backoff_s, max_retries=None) from None
        return outcome.status.value if outcome.status else None

    app.task(
        run,
        name=entry.task_name,
        bind=True,
        acks_late=True,
        # seekq enforces the kind's limits itself, in every pool (workers.execution); the
        # prefork pool's own hard limit stays as a backstop, after seekq's has acted.
        time_limit=entry.time_limit_s + CELERY_LIMIT_GRACE_S,
    )


def _is_job_id(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _register_webhooks(app: Celery, state: WorkerState) -> None:
    """One attempt of a webhook delivery; its retries are scheduled in SQL (the reconciler
    re-publishes a delivery when its backoff is over), never by Celery countdowns."""

    def deliver(delivery_id: str) -> str | None:
        if state.deliverer is None:
            raise RuntimeError("worker process was not initialised (worker_process_init)")
        return state.deliverer.deliver(delivery_id)

    app.task(deliver, name=WEBHOOK_TASK, acks_late=True, time_limit=120, soft_time_limit=100)


def _batched(state: WorkerState) -> Work:
    def work(task: Task, job_id: str) -> Outcome:
        return state.embed_collector(task.request.hostname).run(job_id)

    return work


def _alone(entry: KindEntry, state: WorkerState) -> Work:
    runner = RUNNERS[entry.kind]

    def work(task: Task, job_id: str) -> Outcome:
        context, pool = state.require()
        lifecycle = context.lifecycle(task.request.hostname)
        return execute(
            job_id,
            entry,
            runner,
            lifecycle,
            pool,
            context.settings.max_attempts,
            state.leases,
            state.cancels,
        )

    return work


app = create_worker_app()
