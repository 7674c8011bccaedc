"""The bare-Celery peer of `seekq bench`: a no-op task on the same Redis, nothing else.

Configured like seekq's own Celery app where it matters for speed (JSON, late acks,
prefetch 1) but with none of seekq's work around a task: no SQL, no PII masking, no
lease, no task events. Results go to a Redis result backend on another database of the
same server. Run it with:

    celery -A seekq.bench_peer worker -P solo -Q bench.noop --without-gossip --without-mingle
"""

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery

QUEUE = "bench.noop"
BROKER_ENV = "SEEKQ_BROKER_URL"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
RESULT_DB = 1


def result_url(broker_url: str) -> str:
    """The broker's Redis server, database `RESULT_DB`."""
    parts = urlsplit(broker_url)
    return urlunsplit(parts._replace(path=f"/{RESULT_DB}"))


def peer_config(broker_url: str) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "result_backend": result_url(broker_url),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "broker_connection_retry_on_startup": True,
    }


def configure(broker_url: str) -> None:
    """Point the peer (as used by a producer in this process) at `broker_url`."""
    app.conf.update(peer_config(broker_url))


app = Celery("bench_peer", set_as_current=False)
app.conf.update(peer_config(os.environ.get(BROKER_ENV, DEFAULT_BROKER_URL)))


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Does nothing: what is left is the queue's own cost."""
