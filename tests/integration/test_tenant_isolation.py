"""Every resource a tenant owns answers 404 to every other tenant, on every route that
names it, and is absent from the other tenant's listings; afterwards the owner still has
it, untouched. One parametrised test over jobs, files, indexes, batches, fine-tunes,
adapters, webhook endpoints and audit events."""

import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from storage.finetune_repos import AdapterRepo
from storage.tables import AdapterRow
from tests.conftest import TINY_MODEL, Stack, unique

Call = Callable[[httpx.Client], httpx.Response]


@dataclass
class Owned:
    tenant: str
    job: str
    file: str
    index: str
    batch: str
    finetune: str
    adapter: str  # <base>:<name>
    webhook: str


@pytest.fixture(scope="module")
def owned(stack: Stack) -> Owned:
    tenant = unique("owner")
    with stack.http(tenant) as a:
        job = _ok(a.post("/v1/jobs", json={"kind": "ping", "spec": {"payload": "mine"}}))["id"]
        text = _ok(
            a.post(
                "/v1/files",
                files={"file": ("notes.txt", b"private notes")},
                data={"purpose": "assistants"},
            )
        )["id"]
        index = unique("ix")
        _ok(a.post("/v1/indexes", json={"name": index}))
        line = {
            "custom_id": "r1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "all-MiniLM-L6-v2", "input": "hello"},
        }
        batch_file = _ok(
            a.post(
                "/v1/files",
                files={"file": ("in.jsonl", json.dumps(line).encode())},
                data={"purpose": "batch"},
            )
        )["id"]
        batch = _ok(
            a.post(
                "/v1/batches",
                json={
                    "input_file_id": batch_file,
                    "endpoint": "/v1/embeddings",
                    "completion_window": "24h",
                },
            )
        )["id"]
        rows = "".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(12))
        training = _ok(
            a.post(
                "/v1/files",
                files={"file": ("t.jsonl", rows.encode())},
                data={"purpose": "fine-tune"},
            )
        )["id"]
        finetune = _ok(
            a.post("/v1/fine_tuning/jobs", json={"model": TINY_MODEL, "training_file": training})
        )["id"]
        webhook = _ok(
            a.post(
                "/v1/webhook_endpoints",
                json={
                    "name": "ops",
                    "url": "https://93.184.216.34/hook",
                    "event_types": ["batch.completed"],
                },
            )
        )["id"]
    adapter = _ready_adapter(stack, tenant)
    return Owned(tenant, job, text, index, batch, finetune, adapter, webhook)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 300, response.text
    return dict(response.json())


def _ready_adapter(stack: Stack, tenant: str) -> str:
    """A served adapter row, as a finished fine-tune leaves it (no training here)."""
    who = stack.context.keys.authenticate(stack.key(tenant))
    name = unique("helper")
    with stack.context.sessions.begin() as session:
        AdapterRepo(session).add(
            AdapterRow(
                id="a_" + secrets.token_hex(16),
                tenant_id=who.tenant_id,
                base_model=TINY_MODEL,
                name=name,
                job_id=str(uuid.uuid4()),
                status="ready",
                training_file="file-x",
                hyperparameters={},
                metrics={},
                artifact_prefix=f"adapters/{name}",
                files={},
            )
        )
    return f"{TINY_MODEL}:{name}"


ROUTES: dict[str, Callable[[Owned], Call]] = {
    "GET job": lambda o: lambda c: c.get(f"/v1/jobs/{o.job}"),
    "cancel job": lambda o: lambda c: c.post(f"/v1/jobs/{o.job}/cancel"),
    "job events": lambda o: lambda c: c.get(f"/v1/jobs/{o.job}/events"),
    "GET file": lambda o: lambda c: c.get(f"/v1/files/{o.file}"),
    "file content": lambda o: lambda c: c.get(f"/v1/files/{o.file}/content"),
    "DELETE file": lambda o: lambda c: c.delete(f"/v1/files/{o.file}"),
    "GET index": lambda o: lambda c: c.get(f"/v1/indexes/{o.index}"),
    "index documents": lambda o: lambda c: c.get(f"/v1/indexes/{o.index}/documents"),
    "add documents": lambda o: (
        lambda c: c.post(
            f"/v1/indexes/{o.index}/documents", json={"documents": [{"id": "d", "text": "x"}]}
        )
    ),
    "search": lambda o: lambda c: c.post(f"/v1/indexes/{o.index}/search", json={"query": "x"}),
    "DELETE index": lambda o: lambda c: c.delete(f"/v1/indexes/{o.index}"),
    "GET batch": lambda o: lambda c: c.get(f"/v1/batches/{o.batch}"),
    "cancel batch": lambda o: lambda c: c.post(f"/v1/batches/{o.batch}/cancel"),
    "GET fine-tune": lambda o: lambda c: c.get(f"/v1/fine_tuning/jobs/{o.finetune}"),
    "fine-tune events": lambda o: lambda c: c.get(f"/v1/fine_tuning/jobs/{o.finetune}/events"),
    "cancel fine-tune": lambda o: lambda c: c.post(f"/v1/fine_tuning/jobs/{o.finetune}/cancel"),
    "GET adapter": lambda o: lambda c: c.get(f"/v1/models/{o.adapter}"),
    "DELETE adapter": lambda o: lambda c: c.delete(f"/v1/models/{o.adapter}"),
    "GET webhook": lambda o: lambda c: c.get(f"/v1/webhook_endpoints/{o.webhook}"),
    "update webhook": lambda o: (
        lambda c: c.post(f"/v1/webhook_endpoints/{o.webhook}", json={"name": "taken"})
    ),
    "rotate webhook": lambda o: (
        lambda c: c.post(f"/v1/webhook_endpoints/{o.webhook}/rotate_secret")
    ),
    "test webhook": lambda o: (
        lambda c: c.post(
            f"/v1/webhook_endpoints/{o.webhook}/test", json={"event_type": "batch.completed"}
        )
    ),
    "webhook deliveries": lambda o: (
        lambda c: c.get(f"/v1/webhook_endpoints/{o.webhook}/deliveries")
    ),
    "DELETE webhook": lambda o: lambda c: c.delete(f"/v1/webhook_endpoints/{o.webhook}"),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_another_tenant_gets_404(stack: Stack, owned: Owned, route: str) -> None:
    with stack.http(unique("intruder")) as b:
        answer = ROUTES[route](owned)(b)
    assert answer.status_code == 404, (route, answer.status_code, answer.text)
    assert answer.json()["error"]["code"].endswith("not_found")


def test_nothing_shows_in_another_tenants_listings(stack: Stack, owned: Owned) -> None:
    with stack.http(unique("intruder")) as b:
        listings = {
            "/v1/jobs": owned.job,
            "/v1/files": owned.file,
            "/v1/indexes": owned.index,
            "/v1/batches": owned.batch,
            "/v1/fine_tuning/jobs": owned.finetune,
            "/v1/models": owned.adapter,
            "/v1/webhook_endpoints": owned.webhook,
        }
        for path, resource in listings.items():
            answer = b.get(path)
            assert answer.status_code == 200, path
            assert resource not in answer.text, path
        audit = b.get("/v1/audit", params={"limit": 200}).json()["data"]
        assert owned.job not in {event["job_id"] for event in audit}


def test_the_owner_still_has_everything(stack: Stack, owned: Owned) -> None:
    """Runs after the intruders' calls above (pytest keeps file order): none landed."""
    with stack.http(owned.tenant) as a:
        for path in [
            f"/v1/jobs/{owned.job}",
            f"/v1/files/{owned.file}",
            f"/v1/indexes/{owned.index}",
            f"/v1/batches/{owned.batch}",
            f"/v1/fine_tuning/jobs/{owned.finetune}",
            f"/v1/models/{owned.adapter}",
            f"/v1/webhook_endpoints/{owned.webhook}",
        ]:
            assert a.get(path).status_code == 200, path
        endpoint = a.get(f"/v1/webhook_endpoints/{owned.webhook}").json()
        assert endpoint["name"] == "ops"  # the intruder's update did not land
