"""Webhook endpoints, OpenAI's shapes (`client.webhooks.create / retrieve / update / list
/ delete / rotate_secret / test`, `client.webhooks.event_types.list`), plus the list of an
endpoint's deliveries (seekq's own).

The signing secret is shown once, by create and rotate_secret; afterwards only a hint.
"""

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import SpecError, WebhookNotFoundError, WebhookTestFailedError
from jobs.keys import Principal
from jobs.records import CursorPage
from jobs.webhook_delivery import DeliveryError, Sender
from jobs.webhook_urls import MAX_URL_CHARS, UrlPolicy
from jobs.webhooks import EVENT_TYPES, Signer, event_body, hint, new_event_id
from storage.tables import WebhookDeliveryRow, WebhookEndpointRow
from storage.webhook_repos import DeliveryRepo, EndpointRepo

ENDPOINT_ID = re.compile(r"^we_[0-9a-f]{32}$")
DELIVERY_ID = re.compile(r"^evt_[0-9a-f]{32}$")
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]
ROTATION_OVERLAP = timedelta(hours=24)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EndpointCreate(_Body):
    name: Name
    url: Url
    event_types: EventTypes


class EndpointUpdate(_Body):
    name: Name | None = None
    url: Url | None = None
    event_types: EventTypes | None = None


class RotateSecret(_Body):
    keep_old_secret_active_for_24_hours: bool = False


class TestRequest(_Body):
    event_type: EventType


class EndpointView(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[str]
    created_at: int
    updated_at: int
    signing_secret_hint: str


class EndpointWithSecret(EndpointView):
    signing_secret: str


class EndpointPage(CursorPage[EndpointView]):
    """`client.webhooks.list()`."""


class DeletedEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class TestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class EventTypeList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class DeliveryView(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_endpoint_id: str
    event_type: str
    data: dict[str, str]
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: int
    next_attempt_at: int | None
    finished_at: int | None

    @classmethod
    def from_row(cls, row: WebhookDeliveryRow) -> "DeliveryView":
        pending = row.status == "pending"
        return cls(
            id=row.id,
            webhook_endpoint_id=row.endpoint_id,
            event_type=row.event_type,
            data={k: str(v) for k, v in row.payload.get("data", {}).items()},
            status=row.status,
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            created_at=_unix(row.created_at),
            next_attempt_at=_unix(row.next_attempt_at) if pending else None,
            finished_at=_unix(row.finished_at) if row.finished_at else None,
        )


class DeliveryPage(CursorPage[DeliveryView]):
    """An endpoint's deliveries, newest first."""


class WebhookService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        signer: Signer,
        policy: UrlPolicy,
        sender: Sender,
        max_endpoints: int,
    ) -> None:
        self.sessions = sessions
        self.signer = signer
        self.policy = policy
        self.sender = sender
        self.max_endpoints = max_endpoints

    def create(self, who: Principal, body: EndpointCreate) -> EndpointWithSecret:
        self.policy.check(body.url)
        now = datetime.now(UTC)
        row = WebhookEndpointRow(
            id="we_" + secrets.token_hex(16),
            tenant_id=who.tenant_id,
            name=body.name,
            url=body.url,
            event_types=sorted(set(body.event_types)),
            secret_version=1,
            created_at=now,
            updated_at=now,
        )
        with self.sessions.begin() as session:
            repo = EndpointRepo(session)
            if repo.count_live(who.tenant_id) >= self.max_endpoints:
                raise SpecError(
                    f"this tenant has {self.max_endpoints} webhook endpoints, the most it may "
                    "have: delete one first"
                )
            repo.add(row)
            session.flush()
            return self._with_secret(row)

    def get(self, who: Principal, endpoint_id: str) -> EndpointView:
        with self.sessions() as session:
            return self._view(self._row(session, who, endpoint_id))

    def update(self, who: Principal, endpoint_id: str, body: EndpointUpdate) -> EndpointView:
        if body.url is not None:
            self.policy.check(body.url)
        with self.sessions.begin() as session:
            row = self._row(session, who, endpoint_id)
            changes = {
                "name": body.name,
                "url": body.url,
                "event_types": sorted(set(body.event_types)) if body.event_types else None,
            }
            changed = False
            for field, value in changes.items():
                if value is not None and getattr(row, field) != value:
                    setattr(row, field, value)
                    changed = True
            if changed:
                row.updated_at = datetime.now(UTC)
            return self._view(row)

    def page(self, who: Principal, after: str | None, limit: int) -> EndpointPage:
        with self.sessions() as session:
            anchor = self._row(session, who, after) if after else None
            rows = EndpointRepo(session).page(who.tenant_id, limit + 1, anchor)
            views = [self._view(r) for r in rows[:limit]]
        return EndpointPage.of(views, has_more=len(rows) > limit)

    def delete(self, who: Principal, endpoint_id: str) -> DeletedEndpoint:
        """The endpoint stops receiving events; pending deliveries to it fail."""
        with self.sessions.begin() as session:
            row = self._row(session, who, endpoint_id)
            row.deleted_at = datetime.now(UTC)
        return DeletedEndpoint(id=endpoint_id)

    def rotate_secret(
        self, who: Principal, endpoint_id: str, body: RotateSecret
    ) -> EndpointWithSecret:
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            row = self._row(session, who, endpoint_id)
            row.secret_version += 1
            keep = body.keep_old_secret_active_for_24_hours
            row.previous_secret_until = now + ROTATION_OVERLAP if keep else None
            row.updated_at = now
            return self._with_secret(row)

    def test(self, who: Principal, endpoint_id: str, body: TestRequest) -> TestResult:
        """POST a sample event now (data names no real object) and say what came back."""
        with self.sessions() as session:
            row = self._row(session, who, endpoint_id)
            session.expunge(row)
        event_id = new_event_id()
        data = {"id": "test_" + secrets.token_hex(8)}
        payload = event_body(event_id, body.event_type, data, datetime.now(UTC))
        headers = self.signer.headers(row, event_id, payload)
        try:
            code = self.sender.post(row.url, payload, headers)
        except DeliveryError as exc:
            if exc.status_code is None:
                raise WebhookTestFailedError(f"test delivery failed: {exc.reason}") from None
            code = exc.status_code
        return TestResult(webhook_endpoint_id=row.id, event_type=body.event_type, status_code=code)

    def deliveries(
        self, who: Principal, endpoint_id: str, after: str | None, limit: int
    ) -> DeliveryPage:
        with self.sessions() as session:
            self._row(session, who, endpoint_id, deleted=True)
            repo = DeliveryRepo(session)
            anchor = repo.get(after) if after and DELIVERY_ID.match(after) else None
            if after and (anchor is None or anchor.endpoint_id != endpoint_id):
                raise SpecError("after: not a delivery of this endpoint")
            rows = repo.page(endpoint_id, limit + 1, anchor)
            views = [DeliveryView.from_row(r) for r in rows[:limit]]
        return DeliveryPage.of(views, has_more=len(rows) > limit)

    def _row(
        self, session: Session, who: Principal, endpoint_id: str, deleted: bool = False
    ) -> WebhookEndpointRow:
        row = None
        if ENDPOINT_ID.match(endpoint_id):
            repo = EndpointRepo(session)
            row = repo.get(endpoint_id) if deleted else repo.find(who.tenant_id, endpoint_id)
        if row is None or row.tenant_id != who.tenant_id:
            raise WebhookNotFoundError("no such webhook endpoint")
        return row

    def _view(self, row: WebhookEndpointRow) -> EndpointView:
        return EndpointView(**self._fields(row))

    def _with_secret(self, row: WebhookEndpointRow) -> EndpointWithSecret:
        secret = self.signer.secret(row.id, row.secret_version)
        return EndpointWithSecret(**self._fields(row), signing_secret=secret)

    def _fields(self, row: WebhookEndpointRow) -> dict[str, object]:
        secret = self.signer.secret(row.id, row.secret_version)
        return {
            "id": row.id,
            "name": row.name,
            "url": row.url,
            "event_types": list(row.event_types),
            "created_at": _unix(row.created_at),
            "updated_at": _unix(row.updated_at),
            "signing_secret_hint": hint(secret),
        }


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())
