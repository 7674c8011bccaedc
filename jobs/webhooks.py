"""Webhook events: which job endings make which events, how they are signed, and the
outbox that records them in the same transaction as the ending.

Events follow OpenAI's webhooks (and so Standard Webhooks): the body is
`{"id": "evt_...", "object": "event", "type": "batch.completed", "created_at": <unix>,
"data": {"id": "batch_..."}}` and three headers sign it, `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">` under the endpoint's `whsec_` secret, so the official
`openai` package verifies them (`client.webhooks.unwrap`). Events carry ids only, never a
job's input or output.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from jobs.batch_specs import openai_batch_id
from storage.tables import WebhookDeliveryRow, WebhookEndpointRow
from storage.webhook_repos import EndpointRepo

log = logging.getLogger(__name__)

WEBHOOK_TASK = "seekq.webhook"
WEBHOOK_QUEUE = "cpu.webhooks"
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
FINE_TUNING_EVENTS = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
)
JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")  # every other top-level job
EVENT_TYPES = BATCH_EVENTS + FINE_TUNING_EVENTS + JOB_EVENTS
ENDPOINT_CACHE_S = 1.0


@dataclass(frozen=True)
class Ended:
    """A job that reached a terminal status (`outcome`: a batch's completed / expired)."""

    job_id: str
    tenant_id: str
    kind: str
    status: str
    parent_id: str | None = None
    outcome: str | None = None


def event_of(ended: Ended) -> tuple[str, dict[str, Any]] | None:
    """(event type, data) for a job's ending; None for sub-jobs (a batch's lines, an index
    job's embed batches): their parent's event speaks for them."""
    if ended.parent_id is not None or ended.status not in ("succeeded", "failed", "cancelled"):
        return None
    if ended.kind == "batch":
        if ended.status == "succeeded":
            outcome = ended.outcome if ended.outcome in ("completed", "expired") else "completed"
            return f"batch.{outcome}", {"id": openai_batch_id(ended.job_id)}
        return f"batch.{ended.status}", {"id": openai_batch_id(ended.job_id)}
    if ended.kind == "finetune":
        data = {"id": "ftjob-" + uuid.UUID(ended.job_id).hex}
        return f"fine_tuning.job.{ended.status}", data
    return f"job.{ended.status}", {"id": ended.job_id, "kind": ended.kind}


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def event_body(event_id: str, event_type: str, data: dict[str, Any], at: datetime) -> bytes:
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created_at": int(at.timestamp()),
        "data": data,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


class Signer:
    """Endpoint secrets, derived (never stored): HMAC of the endpoint id and its secret
    version under a sub-key of the server secret."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def secret(self, endpoint_id: str, version: int) -> str:
        raw = hmac.new(self.key, f"{endpoint_id}:{version}".encode(), hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(raw).decode()

    def secrets(self, row: WebhookEndpointRow, now: datetime) -> list[str]:
        """The current secret, and the previous one while a rotation keeps it valid."""
        current = [self.secret(row.id, row.secret_version)]
        until = row.previous_secret_until
        if until is not None and until > now and row.secret_version > 1:
            current.append(self.secret(row.id, row.secret_version - 1))
        return current

    def headers(self, row: WebhookEndpointRow, event_id: str, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        signed = f"{event_id}.{timestamp}.".encode() + body
        signatures = [
            "v1," + base64.b64encode(hmac.new(_raw(s), signed, hashlib.sha256).digest()).decode()
            for s in self.secrets(row, datetime.now(UTC))
        ]
        return {
            "content-type": "application/json",
            "user-agent": "seekq-webhooks/1",
            "webhook-id": event_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": " ".join(signatures),
        }


def _raw(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def hint(secret: str) -> str:
    return f"whsec_...{secret[-4:]}"


class WebhookOutbox:
    """Writes one delivery row per (event, subscribed endpoint) inside the caller's
    transaction, so an event exists exactly when the ending it reports was committed;
    `publish` then queues their ids (after the commit). The sweep publishes any whose
    message was lost.

    Which endpoints a tenant has is read once per ENDPOINT_CACHE_S per process: an
    endpoint hears of jobs that end from about a second after it was created."""

    def __init__(self, publish: Callable[[Sequence[str]], None]) -> None:
        self._publish = publish
        self._cache: dict[str, tuple[float, list[tuple[str, frozenset[str]]]]] = {}
        self._lock = threading.Lock()

    def record(self, session: Session, ended: Sequence[Ended]) -> list[str]:
        """The delivery ids written (publish them once the transaction commits)."""
        events = [(e, found) for e in ended if (found := event_of(e)) is not None]
        if not events:
            return []
        endpoints = self._endpoints(session, {e.tenant_id for e, _ in events})
        now = datetime.now(UTC)
        rows = []
        for ended_job, (event_type, data) in events:
            for endpoint_id, types in endpoints.get(ended_job.tenant_id, []):
                if event_type in types:
                    rows.append(_delivery(endpoint_id, ended_job.tenant_id, event_type, data, now))
        session.add_all(rows)
        return [row.id for row in rows]

    def publish(self, delivery_ids: Sequence[str]) -> None:
        """Queue the deliveries; a broker failure is logged and left to the sweep."""
        if not delivery_ids:
            return
        try:
            self._publish(delivery_ids)
        except Exception as exc:
            log.warning(
                "webhook deliveries not queued n=%d error=%s", len(delivery_ids), type(exc).__name__
            )

    def _endpoints(
        self, session: Session, tenants: Collection[str]
    ) -> dict[str, list[tuple[str, frozenset[str]]]]:
        now = time.monotonic()
        found: dict[str, list[tuple[str, frozenset[str]]]] = {}
        with self._lock:
            for tenant in tenants:
                cached = self._cache.get(tenant)
                if cached is not None and cached[0] > now:
                    found[tenant] = cached[1]
        missing = [t for t in tenants if t not in found]
        if missing:
            fresh: dict[str, list[tuple[str, frozenset[str]]]] = {t: [] for t in missing}
            for row in EndpointRepo(session).live(missing):
                fresh[row.tenant_id].append((row.id, frozenset(row.event_types)))
            with self._lock:
                for tenant, endpoints in fresh.items():
                    self._cache[tenant] = (now + ENDPOINT_CACHE_S, endpoints)
            found.update(fresh)
        return found


def _delivery(
    endpoint_id: str, tenant_id: str, event_type: str, data: dict[str, Any], now: datetime
) -> WebhookDeliveryRow:
    event_id = new_event_id()
    payload = {"type": event_type, "created_at": int(now.timestamp()), "data": data}
    return WebhookDeliveryRow(
        id=event_id,
        endpoint_id=endpoint_id,
        tenant_id=tenant_id,
        event_type=event_type,
        payload=payload,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        published_at=now,  # published right after the commit; the sweep covers a failure
        created_at=now,
    )
