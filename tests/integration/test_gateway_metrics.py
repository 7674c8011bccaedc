"""GET /metrics on the real gateway: scraped and parsed with prometheus_client's own
parser; latency by route template and status, errors by route, queue depth per queue;
no raw path, id or submitted text in any label."""

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, make_context


def scrape(url: str, **headers: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = httpx.get(url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for found, v in samples if all(found.get(k) == x for k, x in labels.items()))


def test_metrics_cover_latency_errors_and_queues(stack: Stack) -> None:
    before = scrape(stack.url)
    http = stack.http()
    secret_text = "my card is 4111 1111 1111 1111"
    missing = str(uuid.uuid4())
    assert http.get(f"/v1/jobs/{missing}").status_code == 404
    assert http.post("/v1/jobs", json={"kind": "ping", "spec": {"payload": 7}}).status_code == 422
    assert (
        http.post("/v1/jobs", json={"kind": "ping", "spec": {"payload": secret_text}}).status_code
        == 202
    )
    assert httpx.get(stack.url + "/v1/no/such/path").status_code == 404
    after = scrape(stack.url)

    count = "seekq_http_request_duration_seconds_count"
    route = "/v1/jobs/{job_id}"
    grown = value(after[count], route=route, status="404") - value(
        before.get(count, []), route=route, status="404"
    )
    assert grown == 1
    assert value(after[count], route="/v1/jobs", method="POST", status="202") >= 1
    buckets = after["seekq_http_request_duration_seconds_bucket"]
    assert value(buckets, route="/v1/jobs", method="POST", status="202", le="+Inf") >= 1
    errors = after["seekq_http_errors_total"]
    assert value(errors, route="/v1/jobs", method="POST", status="422") >= 1
    assert value(errors, route="unmatched", status="404") >= 1
    assert value(errors, route="/v1/jobs", status="202") == 0  # successes are not errors
    depth = {labels["queue"] for labels, _ in after["seekq_queue_depth"]}
    assert {"gpu.embed", "gpu.generate", "cpu.batch", "cpu.webhooks"} <= depth
    labels_text = repr([labels for samples in after.values() for labels, _ in samples])
    assert missing not in labels_text and "4111" not in labels_text
    assert "/v1/no/such/path" not in labels_text


def test_a_metrics_token_is_required_when_set(stack: Stack) -> None:
    from fastapi.testclient import TestClient

    from api_gateway.app import create_app
    from api_gateway.settings import GatewaySettings

    app = create_app(stack.context, GatewaySettings(metrics_token="scrape-" + "x" * 24))
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-" + "x" * 24})
        assert ok.status_code == 200 and "seekq_queue_depth" in ok.text


def test_queued_jobs_and_their_age_come_from_sql(stack: Stack) -> None:
    quiet = make_context(stack.database_url, stack.redis_db + 2, stack.tmp)  # no worker
    try:
        who = quiet.keys.authenticate(stack.key("acme"))
        quiet.service.submit(who, "ping", {})
    finally:
        quiet.close()
    after = scrape(stack.url)
    assert value(after["seekq_jobs_queued"], kind="ping") >= 1
    assert value(after["seekq_queue_oldest_age_seconds"], kind="ping") >= 0
