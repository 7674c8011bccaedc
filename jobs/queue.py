"""Celery producer configuration: JSON only, late acks, one queue per kind.

Messages carry a job id and nothing else; SQL holds the spec and the result. A job whose
model has a queue of its own goes there instead of its kind's queue (`queue_for`).
"""

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from jobs.broker import TRANSPORT, broker_tls
from jobs.catalog import CATALOG, KindEntry
from jobs.errors import BrokerUnavailableError
from jobs.registry import SERVING_QUEUES, ModelRegistry, split_model
from jobs.settings import JobsSettings
from jobs.webhooks import WEBHOOK_QUEUE, WEBHOOK_TASK


def celery_config(settings: JobsSettings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_transport": TRANSPORT,
        "broker_use_ssl": broker_tls(settings.broker_url),  # None: plain redis://
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "event_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # No task-sent events: one more Redis publish per submit, and Flower cannot show
        # queued work anyway (SQL can: GET /v1/jobs?status=queued). Workers do send events.
        "task_send_sent_event": False,
        "worker_send_task_events": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # A Redis that stops answering fails a publish in seconds (the job then waits
            # in the outbox) instead of hanging the request; a half-open consumer
            # connection is dropped after brpop_timeout + 2 x health_check_interval.
            "socket_timeout": settings.broker_socket_timeout_s,
            "socket_connect_timeout": settings.broker_socket_timeout_s,
            "socket_keepalive": True,
            "health_check_interval": settings.broker_health_check_s,
        },
        "broker_connection_retry_on_startup": True,
        # Fail a publish within ~1 s when Redis is down instead of hanging the request.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_routes": {
            **{entry.task_name: {"queue": entry.queue} for entry in CATALOG.values()},
            WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
        },
        "task_default_queue": "cpu.ping",
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: JobsSettings) -> Celery:
    app = Celery("seekq", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def queue_for(entry: KindEntry, spec: Mapping[str, Any], models: ModelRegistry) -> str:
    """The queue of a job of `entry` with `spec`: its model's own queue when the model has
    one (an adapter `base:name` runs where its base is loaded), else its kind's queue."""
    if not follows_model(entry):
        return entry.queue
    name = spec.get("model")
    found = models.find(split_model(name)[0]) if isinstance(name, str) else None
    if found is None or found.kind is not entry.model_kind:
        return entry.queue
    return found.serving_queue


def follows_model(entry: KindEntry) -> bool:
    """Kinds that serve a model on its kind's queue (embed, generate) follow the model to
    its own queue; a fine-tune trains on its own queue whatever the model."""
    return entry.model_kind is not None and entry.queue == SERVING_QUEUES[entry.model_kind]


def has_own_queues(entry: KindEntry, models: ModelRegistry) -> bool:
    """Some job of `entry` may leave its kind's queue: a model of its kind has a queue."""
    if not follows_model(entry):
        return False
    return any(m.queue is not None and m.kind is entry.model_kind for m in models.all())


class Publisher(Protocol):
    """Puts a job id on the queue of `entry` (its kind's, or its model's own)."""

    def publish(self, entry: KindEntry, job_id: str) -> None: ...


class CeleryPublisher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, entry: KindEntry, job_id: str) -> None:
        try:
            self.app.send_task(entry.task_name, args=[job_id], queue=entry.queue)
        except (KombuError, RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"broker unavailable: {type(exc).__name__}") from None


def publish_deliveries(app: Celery, delivery_ids: Sequence[str]) -> None:
    """Put webhook delivery ids on the webhooks queue (one message each)."""
    try:
        for delivery_id in delivery_ids:
            app.send_task(WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE)
    except (KombuError, RedisError, OSError) as exc:
        raise BrokerUnavailableError(f"broker unavailable: {type(exc).__name__}") from None
