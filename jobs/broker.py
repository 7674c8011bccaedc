"""kombu's Redis transport, reusing one client object per channel.

kombu builds a new `redis.Redis` object for every publish, ack and event, and with
redis-py 8 that constructor alone costs ~0.5 ms (it rebuilds the response-callback
table). A seekq job crosses it about five times, so the client is kept per channel and
rebuilt only when kombu replaces the channel's connection pool. The connection pool, not
the client object, holds the connections; redis-py clients are safe to share.
"""

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "jobs.broker:Transport"


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return self._sync_client


class Transport(kombu_redis.Transport):
    Channel = Channel
