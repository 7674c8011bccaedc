"""Repositories of the webhook tables: endpoints and their deliveries (the outbox)."""

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.orm import Session

from storage.tables import WebhookDeliveryRow, WebhookEndpointRow


class EndpointRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: WebhookEndpointRow) -> None:
        self.session.add(row)

    def find(self, tenant_id: str, endpoint_id: str) -> WebhookEndpointRow | None:
        """The tenant's live (not deleted) endpoint."""
        query = select(WebhookEndpointRow).where(
            WebhookEndpointRow.id == endpoint_id,
            WebhookEndpointRow.tenant_id == tenant_id,
            WebhookEndpointRow.deleted_at.is_(None),
        )
        return self.session.scalar(query)

    def get(self, endpoint_id: str) -> WebhookEndpointRow | None:
        """Any endpoint, deleted or not (a delivery's sender)."""
        return self.session.get(WebhookEndpointRow, endpoint_id)

    def live(self, tenant_ids: Collection[str]) -> Sequence[WebhookEndpointRow]:
        query = select(WebhookEndpointRow).where(
            WebhookEndpointRow.tenant_id.in_(tenant_ids), WebhookEndpointRow.deleted_at.is_(None)
        )
        return self.session.scalars(query).all()

    def page(
        self, tenant_id: str, limit: int, after: WebhookEndpointRow | None
    ) -> Sequence[WebhookEndpointRow]:
        """Newest first; `after` is the last row of the previous page."""
        query = select(WebhookEndpointRow).where(
            WebhookEndpointRow.tenant_id == tenant_id, WebhookEndpointRow.deleted_at.is_(None)
        )
        return self.session.scalars(_newest_first(query, WebhookEndpointRow, after, limit)).all()

    def count_live(self, tenant_id: str) -> int:
        return len(self.live([tenant_id]))


class DeliveryRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_all(self, rows: Sequence[WebhookDeliveryRow]) -> None:
        self.session.add_all(rows)

    def get(self, delivery_id: str) -> WebhookDeliveryRow | None:
        return self.session.get(WebhookDeliveryRow, delivery_id)

    def page(
        self, endpoint_id: str, limit: int, after: WebhookDeliveryRow | None
    ) -> Sequence[WebhookDeliveryRow]:
        """An endpoint's deliveries, newest first."""
        query = select(WebhookDeliveryRow).where(WebhookDeliveryRow.endpoint_id == endpoint_id)
        return self.session.scalars(_newest_first(query, WebhookDeliveryRow, after, limit)).all()

    def claim(self, delivery_id: str, now: datetime, lease_until: datetime) -> bool:
        """pending (and due) -> sending, one attempt more: only one sender gets it."""
        query = (
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == delivery_id,
                WebhookDeliveryRow.status == "pending",
                WebhookDeliveryRow.next_attempt_at <= now,
            )
            .values(
                status="sending",
                attempts=WebhookDeliveryRow.attempts + 1,
                lease_until=lease_until,
            )
        )
        return bool(self.session.execute(query).rowcount)  # type: ignore[attr-defined]

    def settle(self, delivery_id: str, attempt: int, values: dict[str, Any]) -> bool:
        """Record an attempt's outcome, only while that attempt still holds the delivery."""
        query = (
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == delivery_id,
                WebhookDeliveryRow.status == "sending",
                WebhookDeliveryRow.attempts == attempt,
            )
            .values(**values)
        )
        return bool(self.session.execute(query).rowcount)  # type: ignore[attr-defined]

    def take_back(self, now: datetime) -> int:
        """Deliveries whose sender died mid-attempt (lease past) become pending again."""
        query = (
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.status == "sending", WebhookDeliveryRow.lease_until < now)
            .values(status="pending", lease_until=None, published_at=None)
        )
        return int(self.session.execute(query).rowcount)  # type: ignore[attr-defined]

    def due(self, now: datetime, republish_before: datetime, limit: int) -> list[str]:
        """Pending deliveries due now whose id is not on the queue (never published, or
        published before `republish_before`: the message was lost)."""
        query = (
            select(WebhookDeliveryRow.id)
            .where(
                WebhookDeliveryRow.status == "pending",
                WebhookDeliveryRow.next_attempt_at <= now,
                or_(
                    WebhookDeliveryRow.published_at.is_(None),
                    WebhookDeliveryRow.published_at < republish_before,
                ),
            )
            .order_by(WebhookDeliveryRow.next_attempt_at)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def mark_published(self, delivery_ids: Collection[str], now: datetime) -> None:
        query = (
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id.in_(delivery_ids), WebhookDeliveryRow.status == "pending")
            .values(published_at=now)
        )
        self.session.execute(query)


Row = TypeVar("Row", WebhookEndpointRow, WebhookDeliveryRow)


def _newest_first(
    query: Select[Any], table: type[Row], after: Row | None, limit: int
) -> Select[Any]:
    """Keyset pagination on (created_at, id), newest first, rows strictly after `after`."""
    if after is not None:
        query = query.where(
            or_(
                table.created_at < after.created_at,
                and_(table.created_at == after.created_at, table.id < after.id),
            )
        )
    return query.order_by(table.created_at.desc(), table.id.desc()).limit(limit)
