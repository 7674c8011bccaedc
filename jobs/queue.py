"""Celery producer configuration: JSON only, late acks, one queue per kind.

Messages carry a job id and nothing else; SQL holds the spec and the result.
"""

from collections.abc import Sequence
from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from jobs.broker import TRANSPORT, broker_tls
from jobs.catalog import CATALOG, KindEntry
from jobs.errors import BrokerUnavailableError
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


class Publisher(Protocol):
    """Puts a job id on its kind's queue."""

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
