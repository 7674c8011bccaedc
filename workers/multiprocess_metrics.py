"""Metrics of a prefork worker: prometheus_client's multiprocess mode.

`seekq worker --pool prefork` sets PROMETHEUS_MULTIPROC_DIR to a fresh directory before
anything imports prometheus_client; every child then writes its counters, histograms and
gauges to memory-mapped files there, and the parent process (which runs no jobs) serves
/metrics, summing them with MultiProcessCollector, plus the queue depth it reads from
Redis. Per-process collectors (MoE expert use, GPU memory) only exist in solo and threads
pools, which is what GPU workers run.
"""

import logging
import os

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from redis import Redis

from jobs.queue_depth import QueueDepth

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def serve_parent(port: int, addr: str, broker_url: str) -> int:
    """Serve every child's metrics from the parent process; the port it listens on."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueDepth(Redis.from_url(broker_url, socket_timeout=5)))
    server, _thread = start_http_server(port, addr, registry=registry)
    log.info("metrics of all children on http://%s:%d/metrics", addr, server.server_port)
    return int(server.server_port)


def child_exited(pid: int) -> None:
    """Drop a finished child's live gauges (its counters and histograms stay summed)."""
    mark_process_dead(pid)  # type: ignore[no-untyped-call]
