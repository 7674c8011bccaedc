"""Sending webhook deliveries: one POST per attempt, retried with backoff, every attempt
recorded in SQL.

A delivery is claimed (pending -> sending, attempts + 1, a lease) so only one sender
POSTs it at a time; the outcome is written fenced on that attempt. A 2xx answer delivers
it; anything else (an error status, a timeout, a refused connection, an address the
policy no longer allows) schedules the next attempt after the next delay of
SEEKQ_WEBHOOK_RETRY_DELAYS_S, and fails it once they are used up. The sweep (run by the
reconciler) re-publishes deliveries that are due, and takes back those whose sender died
mid-attempt. Delivery is at least once: receivers dedupe on `webhook-id`.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import WebhookUrlError
from jobs.webhook_urls import UrlPolicy
from jobs.webhooks import Signer, event_body
from storage.tables import WebhookDeliveryRow, WebhookEndpointRow
from storage.webhook_repos import DeliveryRepo, EndpointRepo

log = logging.getLogger(__name__)

REPUBLISH_AFTER_S = 60.0  # a published delivery still pending this long lost its message
SWEEP_BATCH = 500


class DeliveryError(Exception):
    """An attempt that did not get a 2xx answer: `reason` is safe to store and show."""

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class Sender:
    """POSTs to a checked, pinned address: no redirects, no proxies from the environment,
    a short timeout, and the response body is never read."""

    def __init__(self, policy: UrlPolicy, timeout_s: float) -> None:
        self.policy = policy
        self.timeout_s = timeout_s

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The 2xx status code, or DeliveryError."""
        try:
            target = self.policy.check(url)
        except WebhookUrlError as exc:
            raise DeliveryError(str(exc)[:255]) from None
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with httpx.Client(
                timeout=self.timeout_s, follow_redirects=False, trust_env=False
            ) as client:
                request = client.build_request(
                    "POST",
                    target.pinned_url,
                    content=body,
                    headers={**headers, "host": target.host_header},
                    extensions=extensions,
                )
                response = client.send(request, stream=True)
                response.close()
        except httpx.TimeoutException:
            raise DeliveryError(f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"connection failed: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"answered HTTP {response.status_code}", response.status_code)
        return response.status_code


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    attempt: int
    endpoint: WebhookEndpointRow
    body: bytes


class Deliverer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        signer: Signer,
        sender: Sender,
        retry_delays_s: Sequence[float],
    ) -> None:
        self.sessions = sessions
        self.signer = signer
        self.sender = sender
        self.retry_delays_s = list(retry_delays_s)
        # A sender that has not written its outcome by then is taken to have died.
        self.lease_s = sender.timeout_s * 2 + 30

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays_s) + 1

    def deliver(self, delivery_id: str) -> str | None:
        """One attempt: the delivery's status after it, or None when it was not ours to
        send (delivered already, not due, another sender holds it)."""
        attempt = self._claim(delivery_id)
        if attempt is None:
            return None
        if attempt.endpoint.deleted_at is not None:
            return self._settle(attempt, "failed", None, "the endpoint was deleted")
        headers = self.signer.headers(attempt.endpoint, delivery_id, attempt.body)
        try:
            code = self.sender.post(attempt.endpoint.url, attempt.body, headers)
        except DeliveryError as exc:
            log.info(
                "webhook attempt %d failed delivery=%s reason=%s",
                attempt.attempt,
                delivery_id,
                exc.reason,
            )
            return self._retry_or_fail(attempt, exc)
        return self._settle(attempt, "delivered", code, None)

    def sweep(self, publish: Callable[[Sequence[str]], None]) -> int:
        """Take back deliveries whose sender died, publish the ones due: how many."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            repo = DeliveryRepo(session)
            repo.take_back(now)
            due = repo.due(now, now - timedelta(seconds=REPUBLISH_AFTER_S), SWEEP_BATCH)
            if due:
                repo.mark_published(due, now)
        if due:
            publish(due)
        return len(due)

    def _claim(self, delivery_id: str) -> Attempt | None:
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            repo = DeliveryRepo(session)
            if not repo.claim(delivery_id, now, now + timedelta(seconds=self.lease_s)):
                return None
            row = repo.get(delivery_id)
            endpoint = EndpointRepo(session).get(row.endpoint_id) if row else None
            if row is None or endpoint is None:
                return None
            session.expunge(endpoint)
            return Attempt(delivery_id, row.attempts, endpoint, _body(row))

    def _retry_or_fail(self, attempt: Attempt, exc: DeliveryError) -> str | None:
        if attempt.attempt >= self.max_attempts:
            reason = f"{exc.reason} (attempt {attempt.attempt} of {self.max_attempts}: gave up)"
            return self._settle(attempt, "failed", exc.status_code, reason)
        delay = self.retry_delays_s[attempt.attempt - 1]
        values: dict[str, Any] = {
            "status": "pending",
            "next_attempt_at": datetime.now(UTC) + timedelta(seconds=delay),
            "lease_until": None,
            "published_at": None,  # the sweep publishes it when it is due
            "last_status_code": exc.status_code,
            "last_error": exc.reason[:255],
        }
        return self._write(attempt, values)

    def _settle(
        self, attempt: Attempt, status: str, code: int | None, error: str | None
    ) -> str | None:
        values: dict[str, Any] = {
            "status": status,
            "lease_until": None,
            "last_status_code": code,
            "last_error": error[:255] if error else None,
            "finished_at": datetime.now(UTC),
        }
        return self._write(attempt, values)

    def _write(self, attempt: Attempt, values: dict[str, Any]) -> str | None:
        with self.sessions.begin() as session:
            written = DeliveryRepo(session).settle(attempt.delivery_id, attempt.attempt, values)
        if not written:
            log.warning("stale webhook attempt dropped delivery=%s", attempt.delivery_id)
            return None
        return str(values["status"])


def _body(row: WebhookDeliveryRow) -> bytes:
    payload = row.payload
    return event_body(row.id, row.event_type, payload["data"], row.created_at)
