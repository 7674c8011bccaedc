"""kombu's Redis transport, reusing one client object per channel; TLS options for it.

kombu builds a new `redis.Redis` object for every publish, ack and event, and with
redis-py 8 that constructor alone costs ~0.5 ms (it rebuilds the response-callback
table). A seekq job crosses it about five times, so the client is kept per channel and
rebuilt only when kombu replaces the channel's connection pool. The connection pool, not
the client object, holds the connections; redis-py clients are safe to share.
"""

import json
import logging
import ssl
from queue import Empty
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kombu.transport import redis as kombu_redis

from jobs.errors import ConfigError

log = logging.getLogger(__name__)

TRANSPORT = "jobs.broker:Transport"
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class Channel(kombu_redis.Channel):
    """Also drops poison: a queue item that is not JSON would otherwise escape kombu's
    read loop and stop the worker ("Unrecoverable error"), for every worker it reaches."""

    _sync_client: Any = None

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _dropped("a consumed queue") from None

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _dropped(queue) from None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return self._sync_client


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        if not _is_envelope(message):  # JSON, but not a kombu message: it would crash too
            log.error("poison message dropped from %s: not a kombu message", queue)
            return
        super()._deliver(message, queue)  # type: ignore[no-untyped-call]


def _is_envelope(message: Any) -> bool:
    properties = message.get("properties") if isinstance(message, dict) else None
    return (
        isinstance(properties, dict)
        and isinstance(properties.get("delivery_info"), dict)
        and "delivery_tag" in properties
        and "body" in message
    )


def _dropped(where: str) -> Empty:
    log.error("poison message dropped from %s: not JSON", where)
    return Empty()


def broker_tls(broker_url: str) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` for a `rediss://` URL (None for `redis://`), read from the
    URL's query: the `ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` and
    `ssl_check_hostname` that redis-py's `from_url` reads too, so every client agrees.

    Why it is needed: with seekq's transport the URL's scheme no longer tells kombu to use
    TLS, and kombu's own fallback for a bare `rediss://` is CERT_NONE. Here the server's
    certificate is verified unless the URL says `ssl_cert_reqs=none`."""
    parts = urlsplit(broker_url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise ConfigError(f"ssl_cert_reqs in SEEKQ_BROKER_URL must be one of {sorted(CERT_REQS)}")
    options: dict[str, Any] = {"ssl_cert_reqs": CERT_REQS[reqs]}
    options.update((name, query[name]) for name in TLS_FILES if name in query)
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in {"1", "true", "yes"}
    return options
