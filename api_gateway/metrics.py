"""The gateway's Prometheus metrics, served at GET /metrics.

- `seekq_http_request_duration_seconds{route,method,status}` (histogram): from the request
  to the end of the response body (a stream's whole length). `route` is the route's
  template (`/v1/jobs/{job_id}`), never the raw path: ids and names stay out of labels.
- `seekq_http_errors_total{route,method,status}`: answers of 400 and above.
- `seekq_queue_depth{queue}`: messages waiting in each Redis queue (LLEN at scrape).
- `seekq_jobs_queued{kind}`, `seekq_queue_oldest_age_seconds{kind}`: from SQL.

Each app owns its registry (no module globals), so several apps in one process (tests)
never collide.
"""

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.queue_depth import QueueDepth, QueuedJobs

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNMATCHED = "unmatched"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["route", "method", "status"]
        self.latency = Histogram(
            "seekq_http_request_duration_seconds",
            "Gateway request latency, to the end of the response body.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.errors = Counter(
            "seekq_http_errors",
            "Gateway answers with status 400 or above.",
            labels,
            registry=self.registry,
        )
        self._queues: QueueDepth | None = None

    def watch_queues(
        self, redis: Redis, sessions: sessionmaker[Session], extra: Iterable[str] = ()
    ) -> None:
        if self._queues is None:
            self._queues = QueueDepth(redis, extra)
            self.registry.register(self._queues)
            self.registry.register(QueuedJobs(sessions))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        code = str(status)
        self.latency.labels(route, method, code).observe(seconds)
        if status >= 400:
            self.errors.labels(route, method, code).inc()


class MetricsMiddleware:
    """Times every HTTP request; the route template is known once routing has run."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = _route(scope)
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else UNMATCHED
