"""Webhooks end to end: endpoints managed with the official `openai` package, events of
real job endings POSTed by a real worker (`cpu.webhooks`) to a real HTTP receiver on
loopback, verified with `client.webhooks.unwrap`, retried with backoff by the
reconciler's sweep, and refused where the operator has not allowed them (SSRF)."""

import http.server
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from jobs.context import JobsContext
from tests.conftest import (
    Stack,
    WorkerProcess,
    make_context,
    served,
    stack_env,
    unique,
)

RETRY_DELAY_S = 0.5
WEBHOOK_ENV = {
    "SEEKQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
    "SEEKQ_WEBHOOK_ALLOW_HTTP": "true",
    "SEEKQ_WEBHOOK_RETRY_DELAYS_S": json.dumps([RETRY_DELAY_S, RETRY_DELAY_S]),
    "SEEKQ_RECONCILE_EVERY_S": "0.25",
}


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP server that answers the next codes in `answers` (then 204). Each
    test gets its own path (`reset`), so a late delivery of another test is not counted."""

    base: str = ""
    url: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def reset(self, answers: list[int] | None = None) -> None:
        self.answers, self.url = list(answers or []), f"{self.base}/{unique('hook')}"

    @property
    def seen(self) -> list[Received]:
        path = "/" + self.url.split("/", 3)[3]
        return [r for r in self.received if r.path == path]

    def answer(self, path: str) -> int:
        mine = "/" + self.url.split("/", 3)[3]
        return self.answers.pop(0) if path == mine and self.answers else 204

    def wait(self, count: int, timeout_s: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.seen)} of {count} deliveries arrived")
            time.sleep(0.05)
        return self.seen


@dataclass
class Hooks:
    url: str  # a gateway whose webhook policy allows loopback http
    context: JobsContext
    receiver: Receiver


def serve_receiver(receiver: Receiver) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.received.append(Received(time.monotonic(), self.path, headers, body))
            self.send_response(receiver.answer(self.path))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.base = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    receiver.reset()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def hooks(stack: Stack) -> Iterator[Hooks]:
    models_file = stack.context.settings.models_file
    env = stack_env(
        stack.database_url,
        stack.redis_db,
        stack.tmp,
        SEEKQ_MODELS_FILE=str(models_file),
        **WEBHOOK_ENV,
    )
    worker = WorkerProcess(env, stack.tmp / "webhooks-worker.log", "cpu.batch,cpu.webhooks")
    worker.start()
    context = make_context(
        stack.database_url,
        stack.redis_db,
        stack.tmp,
        models_file=models_file,
        webhook_allowed_networks=("127.0.0.1/32",),
        webhook_allow_http=True,
    )
    receiver = Receiver()
    http_server = serve_receiver(receiver)
    with served(context, wait_timeout_s=60) as url:
        yield Hooks(url, context, receiver)
    http_server.shutdown()
    worker.stop()
    context.close()


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def create_endpoint(sdk: openai.OpenAI, url: str, *events: str) -> Any:
    return sdk.webhooks.create(name="ops", url=url, event_types=list(events))  # type: ignore[arg-type]


def deliveries(hooks: Hooks, key: str, endpoint_id: str) -> list[dict[str, Any]]:
    path = f"/v1/webhook_endpoints/{endpoint_id}/deliveries"
    response = httpx.get(hooks.url + path, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def wait_delivery(hooks: Hooks, key: str, endpoint_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = deliveries(hooks, key, endpoint_id)
        if found and found[0]["status"] == status:
            return found[0]
        time.sleep(0.1)
    raise TimeoutError(f"no {status} delivery: {deliveries(hooks, key, endpoint_id)}")


def ping(hooks: Hooks, key: str) -> str:
    body = {"kind": "ping", "spec": {"payload": "hello"}}
    response = httpx.post(
        hooks.url + "/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


def test_the_official_client_manages_endpoints(stack: Stack, hooks: Hooks) -> None:
    key = stack.key(unique("wh"))
    sdk = client(hooks.url, key)
    made = create_endpoint(sdk, hooks.receiver.url, "batch.completed", "batch.failed")
    assert made.id.startswith("we_") and made.signing_secret.startswith("whsec_")
    assert made.signing_secret_hint == "whsec_..." + made.signing_secret[-4:]
    got = sdk.webhooks.retrieve(made.id)
    assert (got.url, sorted(got.event_types)) == (made.url, ["batch.completed", "batch.failed"])
    assert not hasattr(got, "signing_secret") or got.model_extra.get("signing_secret") is None
    updated = sdk.webhooks.update(made.id, name="renamed", event_types=["batch.expired"])
    assert (updated.name, updated.event_types) == ("renamed", ["batch.expired"])
    assert [e.id for e in sdk.webhooks.list()] == [made.id]
    assert "fine_tuning.job.succeeded" in sdk.webhooks.event_types.list().data
    rotated = sdk.webhooks.rotate_secret(made.id)
    assert rotated.signing_secret != made.signing_secret
    # Another tenant sees none of it.
    other = client(hooks.url, stack.key(unique("wh")))
    with pytest.raises(openai.NotFoundError):
        other.webhooks.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        other.webhooks.delete(made.id)
    assert sdk.webhooks.delete(made.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.webhooks.retrieve(made.id)
    with pytest.raises(openai.UnprocessableEntityError):
        create_endpoint(sdk, hooks.receiver.url, "no.such.event")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/internal",  # plain http, and loopback
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.8/hook",
        "https://localhost/hook",
    ],
)
def test_the_default_gateway_refuses_inward_urls(stack: Stack, url: str) -> None:
    sdk = client(stack.url, stack.key("acme"))
    with pytest.raises(openai.BadRequestError) as caught:
        create_endpoint(sdk, url, "batch.completed")
    assert caught.value.code == "invalid_webhook_url"
    assert "SEEKQ_WEBHOOK_ALLOWED_NETWORKS" in str(caught.value) or "https://" in str(caught.value)


def test_a_batch_ending_is_posted_signed(stack: Stack, hooks: Hooks) -> None:
    key = stack.key(unique("wh"))
    sdk = client(hooks.url, key)
    hooks.receiver.reset()
    endpoint = create_endpoint(sdk, hooks.receiver.url, "batch.completed", "batch.failed")
    lines = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "all-MiniLM-L6-v2", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    uploaded = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    [received] = hooks.receiver.wait(1)
    event = sdk.webhooks.unwrap(received.body, received.headers, secret=endpoint.signing_secret)
    assert (event.type, event.data.id) == ("batch.completed", batch.id)
    assert sdk.batches.retrieve(batch.id).status == "completed"
    # Ids only: nothing of the requests' text travels in the event.
    assert b"text 0" not in received.body
    done = wait_delivery(hooks, key, endpoint.id, "delivered")
    assert (done["id"], done["attempts"], done["last_status_code"]) == (event.id, 1, 204)


def test_failed_deliveries_are_retried_with_backoff(stack: Stack, hooks: Hooks) -> None:
    key = stack.key(unique("wh"))
    sdk = client(hooks.url, key)
    hooks.receiver.reset(answers=[500, 503])
    endpoint = create_endpoint(sdk, hooks.receiver.url, "job.succeeded")
    job_id = ping(hooks, key)
    seen = hooks.receiver.wait(3)
    done = wait_delivery(hooks, key, endpoint.id, "delivered")
    assert done["attempts"] == 3 and done["last_status_code"] == 204
    assert done["data"] == {"id": job_id, "kind": "ping"}
    # The same event each time (receivers dedupe on webhook-id), each signature valid.
    assert {r.headers["webhook-id"] for r in seen} == {done["id"]}
    for attempt in seen:
        sdk.webhooks.verify_signature(attempt.body, attempt.headers, secret=endpoint.signing_secret)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(seen)]
    assert all(gap >= RETRY_DELAY_S * 0.9 for gap in gaps), gaps


def test_a_delivery_fails_once_its_retries_are_used_up(stack: Stack, hooks: Hooks) -> None:
    key = stack.key(unique("wh"))
    sdk = client(hooks.url, key)
    hooks.receiver.reset(answers=[500, 500, 500])
    endpoint = create_endpoint(sdk, hooks.receiver.url, "job.succeeded")
    ping(hooks, key)
    failed = wait_delivery(hooks, key, endpoint.id, "failed")
    assert failed["attempts"] == 3 and failed["last_status_code"] == 500
    assert failed["last_error"] == "answered HTTP 500 (attempt 3 of 3: gave up)"
    assert len(hooks.receiver.seen) == 3


def test_a_job_cancelled_while_queued_is_an_event(stack: Stack, hooks: Hooks) -> None:
    tenant = unique("wh")
    key = stack.key(tenant)
    sdk = client(hooks.url, key)
    hooks.receiver.reset()
    endpoint = create_endpoint(sdk, hooks.receiver.url, "job.cancelled")
    # Submitted through a broker no worker reads (same database): it stays queued.
    quiet = make_context(stack.database_url, stack.redis_db + 2, stack.tmp)
    try:
        job = quiet.service.submit(quiet.keys.authenticate(key), "ping", {}).job
    finally:
        quiet.close()
    headers = {"Authorization": f"Bearer {key}"}
    cancelled = httpx.post(hooks.url + f"/v1/jobs/{job.id}/cancel", headers=headers).json()
    assert cancelled["status"] == "cancelled"
    [received] = hooks.receiver.wait(1)
    event = sdk.webhooks.unwrap(received.body, received.headers, secret=endpoint.signing_secret)
    assert (event.type, event.data.id) == ("job.cancelled", job.id)  # type: ignore[union-attr]


def test_the_test_call_posts_a_signed_sample(stack: Stack, hooks: Hooks) -> None:
    sdk = client(hooks.url, stack.key(unique("wh")))
    hooks.receiver.reset(answers=[202])
    endpoint = create_endpoint(sdk, hooks.receiver.url, "batch.completed")
    result = sdk.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded")
    assert (result.status_code, result.event_type) == (202, "fine_tuning.job.succeeded")
    [received] = hooks.receiver.seen
    event = sdk.webhooks.unwrap(received.body, received.headers, secret=endpoint.signing_secret)
    assert event.type == "fine_tuning.job.succeeded"
    hooks.receiver.answers = [500]
    assert sdk.webhooks.test(endpoint.id, event_type="batch.completed").status_code == 500
