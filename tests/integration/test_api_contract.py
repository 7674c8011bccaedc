"""The HTTP contract: auth, tenant isolation, bad input, idempotency, listing, cancel."""

import json
import time

import httpx
import pytest
from sqlalchemy import func, select

from storage.tables import AuditEventRow, JobRow
from tests.conftest import Stack, unique

MARKER = "MARKER-7f3a 4111111111111111 jane@example.com"


def count_rows(stack: Stack) -> tuple[int, int]:
    with stack.context.sessions() as session:
        jobs = session.scalar(select(func.count()).select_from(JobRow))
        audit = session.scalar(select(func.count()).select_from(AuditEventRow))
    return int(jobs or 0), int(audit or 0)


def embed_body(**spec: object) -> dict[str, object]:
    return {"kind": "embed", "spec": {"input": ["hello"], **spec}}


BAD_REQUESTS: list[tuple[str, object, int]] = [
    ("input is a number", {"kind": "embed", "spec": {"input": 5}}, 422),
    ("input text is a number", {"kind": "embed", "spec": {"input": [MARKER, 5]}}, 422),
    ("true as priority", {**embed_body(), "priority": True}, 422),
    ("string as priority", {**embed_body(), "priority": "5"}, 422),
    ("priority out of range", {**embed_body(), "priority": 10}, 422),
    ("unknown spec field", embed_body(extra_field=MARKER), 422),
    ("unknown top-level field", {**embed_body(), "surprise": MARKER}, 422),
    ("normalize as a string", embed_body(normalize="yes"), 422),
    ("empty input list", {"kind": "embed", "spec": {"input": []}}, 422),
    ("empty text", {"kind": "embed", "spec": {"input": [""]}}, 422),
    ("10,000 inputs", {"kind": "embed", "spec": {"input": ["x"] * 10_000}}, 422),
    ("a text over the size limit", {"kind": "embed", "spec": {"input": ["x" * 40_000]}}, 422),
    ("unknown kind", {"kind": "teleport", "spec": {}}, 422),
    ("kind not available yet", {"kind": "generate", "spec": {"prompt": MARKER}}, 422),
    ("unknown model", embed_body(model="no-such-model"), 404),
    ("path-like model name", embed_body(model="../../etc/passwd"), 422),
    ("spec is a list", {"kind": "embed", "spec": [MARKER]}, 422),
    ("bad idempotency key", {**embed_body(), "idempotency_key": "has space " + MARKER}, 422),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_job_requests_are_refused_cleanly(
    stack: Stack, case: str, body: object, status: int
) -> None:
    before = count_rows(stack)
    with stack.http() as http:
        response = http.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"]
    assert "MARKER" not in response.text and "4111111111111111" not in response.text
    assert count_rows(stack) == before


RAW_BAD_BODIES = [
    ("malformed JSON", b'{"kind": "embed", "spec": {', 400),
    ("NaN in spec", b'{"kind": "embed", "spec": {"input": ["a"], "normalize": NaN}}', 400),
    ("Infinity as priority", b'{"kind":"embed","spec":{"input":["a"]},"priority":Infinity}', 400),
    ("not an object", b'["MARKER"]', 422),
    ("empty body", b"", 422),
]


@pytest.mark.parametrize(
    ("case", "raw", "status"), RAW_BAD_BODIES, ids=[c[0] for c in RAW_BAD_BODIES]
)
def test_malformed_bodies(stack: Stack, case: str, raw: bytes, status: int) -> None:
    before = count_rows(stack)
    with stack.http() as http:
        response = http.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert "MARKER" not in response.text
    assert count_rows(stack) == before


def test_oversized_body_is_413(stack: Stack) -> None:
    body = json.dumps({"kind": "embed", "spec": {"input": ["y" * 30_000] * 200}}).encode()
    assert len(body) > 4 * 1024 * 1024
    with stack.http() as http:
        response = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        chunked = http.post(
            "/v1/jobs",
            content=iter([body[:1_000_000]] * 5),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert chunked.status_code == 413


def test_openai_embeddings_bad_input(stack: Stack) -> None:
    with stack.http() as http:
        for body, status in [
            ({"model": "all-MiniLM-L6-v2", "input": []}, 422),
            ({"model": "all-MiniLM-L6-v2", "input": [[1, 2, 3]]}, 422),
            ({"model": "all-MiniLM-L6-v2", "input": MARKER, "encoding_format": "int8"}, 422),
            ({"model": "all-MiniLM-L6-v2", "input": ["a"] * 10_000}, 422),
            ({"model": "all-MiniLM-L6-v2", "input": "a", "dimensions": 16}, 422),
            ({"input": "a"}, 422),
        ]:
            response = http.post("/v1/embeddings", json=body)
            assert response.status_code == status, (body, response.text)
            assert "MARKER" not in response.text


def test_auth_required_and_checked(stack: Stack) -> None:
    cases = [
        ({}, 401),
        ({"Authorization": "Bearer not-a-key"}, 401),
        ({"Authorization": "Bearer sq_0123456789abcdef_" + "A" * 43}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ]
    for headers, status in cases:
        response = httpx.get(f"{stack.url}/v1/jobs", headers=headers)
        assert response.status_code == status
        assert response.headers.get("www-authenticate") == "Bearer"


def test_revoked_key_is_refused(stack: Stack) -> None:
    new = stack.context.keys.create(unique("revoked"))
    headers = {"Authorization": f"Bearer {new.secret}"}
    assert httpx.get(f"{stack.url}/v1/jobs", headers=headers).status_code == 200
    assert stack.context.keys.revoke(new.key_id)
    assert httpx.get(f"{stack.url}/v1/jobs", headers=headers).status_code == 401


def test_tenants_never_see_each_other(stack: Stack) -> None:
    with stack.client("tenant-a") as a:
        job = a.submit("ping", {"payload": "a's job"})
    with stack.http("tenant-b") as b:
        assert b.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert b.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
        listed = b.get("/v1/jobs", params={"limit": 200}).json()["data"]
        assert job["id"] not in {j["id"] for j in listed}
        audit = b.get("/v1/audit", params={"limit": 200}).json()["data"]
        assert job["id"] not in {e["job_id"] for e in audit}
        assert b.get("/v1/jobs/not-a-uuid").status_code == 404


def test_idempotency_key_returns_the_original_job(stack: Stack) -> None:
    key = unique("idem")
    body = {"kind": "ping", "spec": {"payload": "once"}, "idempotency_key": key}
    with stack.http() as http:
        first = http.post("/v1/jobs", json=body)
        again = http.post("/v1/jobs", json=body)
        conflict = http.post("/v1/jobs", json={**body, "spec": {"payload": "different"}})
        by_header = http.post(
            "/v1/jobs",
            json={"kind": "ping", "spec": {"payload": "once"}},
            headers={"Idempotency-Key": key},
        )
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409
    assert by_header.status_code == 200 and by_header.json()["id"] == first.json()["id"]


def test_list_filters_and_cursor_pagination(stack: Stack) -> None:
    tenant = unique("pager")
    with stack.client(tenant) as client:
        ids = [client.submit("ping", {"payload": str(i)})["id"] for i in range(5)]
        first = client.list_jobs(limit=2)
        second = client.list_jobs(limit=2, cursor=first["next_cursor"])
        third = client.list_jobs(limit=2, cursor=second["next_cursor"])
        embeds = client.list_jobs(kind="embed")
    seen = [j["id"] for page in (first, second, third) for j in page["data"]]
    assert seen == list(reversed(ids))
    assert third["next_cursor"] is None
    assert embeds["data"] == []
    with stack.http(tenant) as http:
        assert http.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
        assert http.get("/v1/jobs", params={"cursor": "garbage!"}).status_code == 422
        assert http.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_cancel_finished_job_is_a_conflict(stack: Stack) -> None:
    with stack.client() as client:
        job = client.wait(client.submit("ping", {"payload": "x"})["id"], timeout_s=30)
    assert job["status"] == "succeeded"
    with stack.http() as http:
        response = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409


def test_health_readiness_and_openapi(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{stack.url}/readyz").json()
    assert ready == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
    schema = httpx.get(f"{stack.url}/openapi.json").json()
    for path in [
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/audit",
        "/v1/embeddings",
        "/v1/models",
        "/healthz",
        "/readyz",
    ]:
        assert path in schema["paths"], path
    assert httpx.get(f"{stack.url}/docs").status_code == 200


def test_long_polls_do_not_hold_gateway_threads(stack: Stack) -> None:
    """60 concurrent long-polls (more than the gateway's 40 threadpool threads) on a job no
    worker runs here (the session's worker does not serve gpu.generate) leave the gateway
    free to answer other calls at once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import TINY_MODEL

    spec = {"model": TINY_MODEL, "prompt": "nobody runs me", "max_new_tokens": 4}
    with stack.client() as client:
        job = client.submit("generate", spec)
    with ThreadPoolExecutor(max_workers=60) as pool:
        waits = [pool.submit(_long_poll, stack, job["id"]) for _ in range(60)]
        time.sleep(0.5)  # the waits are all in progress
        started = time.monotonic()
        with stack.http() as http:
            assert http.get(f"/v1/jobs/{job['id']}").status_code == 200
        answered_s = time.monotonic() - started
        statuses = [w.result() for w in waits]
    assert answered_s < 1.0
    assert statuses == ["queued"] * 60
    with stack.client() as client:
        client.cancel(job["id"])


def _long_poll(stack: Stack, job_id: str) -> str:
    with stack.http() as http:
        response = http.get(f"/v1/jobs/{job_id}", params={"wait": 3})
    return str(response.json()["status"])
