"""`seekq_queue_depth{queue}`: messages waiting in each Redis queue, read (LLEN) when
Prometheus scrapes. Exported by the gateway and by every worker."""

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from jobs.catalog import queues


class QueueDepth(Collector):
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "seekq_queue_depth", "Messages waiting in each Redis queue.", labels=["queue"]
        )
        names = queues()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            depths = pipe.execute()
        except RedisError:
            return  # broker down: no samples (readyz says why), not a failed scrape
        for name, depth in zip(names, depths, strict=True):
            family.add_metric([name], float(depth))
        yield family
