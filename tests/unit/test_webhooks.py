"""Webhooks without a worker: where URLs may point (SSRF), which endings make which
events, signatures the official `openai` package verifies, and the sender against a real
loopback HTTP server (pinned address, no redirects, failures reported, never raised)."""

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from jobs.errors import WebhookUrlError
from jobs.webhook_delivery import DeliveryError, Sender
from jobs.webhook_urls import UrlPolicy
from jobs.webhooks import EVENT_TYPES, Ended, Signer, event_body, event_of
from storage.tables import WebhookEndpointRow

PUBLIC = "93.184.216.34"


def resolver(answers: dict[str, list[str]]) -> Any:
    return lambda host, port: answers.get(host, [])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.7/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://0.0.0.0/hook", "private"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://internal.example/hook", "private"),  # a name that resolves inward
        ("https://rebind.example/hook", "loopback"),  # one public answer, one loopback
        ("https://nowhere.example/hook", "does not resolve"),
        ("http://hooks.example/hook", "must start with https://"),
        ("ftp://hooks.example/hook", "must start with https://"),
        ("https://user:pw@hooks.example/hook", "user name or password"),
        ("https://hooks.example/hook#frag", "fragment"),
        ("https://hooks.example/a b", "spaces or control characters"),
        ("https://hooks.example:99999/", "not a valid URL"),
        ("https:///nohost", "has no host"),
        ("https://hooks.example/" + "a" * 2100, "1 to 2048 characters"),
    ],
)
def test_the_default_policy_refuses_inward_and_malformed_urls(url: str, problem: str) -> None:
    policy = UrlPolicy(
        resolver=resolver(
            {
                "internal.example": ["10.0.0.5"],
                "rebind.example": [PUBLIC, "127.0.0.1"],
                "hooks.example": [PUBLIC],
            }
        )
    )
    with pytest.raises(WebhookUrlError) as caught:
        policy.check(url)
    assert problem in str(caught.value)


def test_public_urls_pass_and_are_pinned_to_the_checked_address() -> None:
    policy = UrlPolicy(resolver=resolver({"hooks.example": [PUBLIC, "2606:2800::1"]}))
    target = policy.check("https://hooks.example/in?x=1")
    assert (target.host, target.port, target.address) == ("hooks.example", 443, PUBLIC)
    assert target.pinned_url == f"https://{PUBLIC}:443/in?x=1"
    assert target.host_header == "hooks.example"
    v6 = policy.check("https://[2606:2800::1]:8443/")
    assert v6.pinned_url == "https://[2606:2800::1]:8443/"
    assert v6.host_header == "[2606:2800::1]:8443"


def test_the_operator_can_allow_a_private_network_and_plain_http() -> None:
    policy = UrlPolicy(["10.0.0.0/8"], allow_http=True, resolver=resolver({}))
    assert policy.check("http://10.9.8.7:8080/h").address == "10.9.8.7"
    with pytest.raises(WebhookUrlError, match="private"):
        policy.check("http://192.168.1.1/h")  # only the listed network


def test_each_ending_makes_one_event_and_sub_jobs_none() -> None:
    job = str(uuid.uuid4())
    hexid = uuid.UUID(job).hex
    cases = {
        Ended(job, "t", "batch", "succeeded", outcome="completed"): "batch.completed",
        Ended(job, "t", "batch", "succeeded", outcome="expired"): "batch.expired",
        Ended(job, "t", "batch", "failed"): "batch.failed",
        Ended(job, "t", "batch", "cancelled"): "batch.cancelled",
        Ended(job, "t", "finetune", "succeeded"): "fine_tuning.job.succeeded",
        Ended(job, "t", "finetune", "failed"): "fine_tuning.job.failed",
        Ended(job, "t", "finetune", "cancelled"): "fine_tuning.job.cancelled",
        Ended(job, "t", "generate", "succeeded"): "job.succeeded",
        Ended(job, "t", "index", "failed"): "job.failed",
        Ended(job, "t", "embed", "cancelled"): "job.cancelled",
    }
    for ended, expected in cases.items():
        found = event_of(ended)
        assert found is not None and found[0] == expected
        assert found[0] in EVENT_TYPES
    assert event_of(Ended(job, "t", "batch", "failed")) == (
        "batch.failed",
        {"id": f"batch_{hexid}"},
    )
    assert event_of(Ended(job, "t", "finetune", "failed"))[1] == {"id": f"ftjob-{hexid}"}  # type: ignore[index]
    assert event_of(Ended(job, "t", "generate", "succeeded", parent_id=str(uuid.uuid4()))) is None
    assert event_of(Ended(job, "t", "generate", "running")) is None


def endpoint(version: int = 1, previous_until: datetime | None = None) -> WebhookEndpointRow:
    return WebhookEndpointRow(
        id="we_" + "a" * 32,
        tenant_id="t",
        name="n",
        url="https://hooks.example/",
        event_types=["batch.completed"],
        secret_version=version,
        previous_secret_until=previous_until,
    )


def test_signatures_verify_with_the_official_openai_package() -> None:
    signer = Signer(b"k" * 32)
    row = endpoint()
    secret = signer.secret(row.id, 1)
    assert secret.startswith("whsec_")
    body = event_body("evt_1", "batch.completed", {"id": "batch_x"}, datetime.now(UTC))
    headers = signer.headers(row, "evt_1", body)
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert (event.type, event.data.id, event.id) == ("batch.completed", "batch_x", "evt_1")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body + b" ", headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, headers, secret=signer.secret(row.id, 2))


def test_a_rotation_can_keep_the_old_secret_valid_for_a_while() -> None:
    signer = Signer(b"k" * 32)
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    old, new = signer.secret(endpoint().id, 1), signer.secret(endpoint().id, 2)
    body = b'{"id":"evt_2"}'
    kept = endpoint(2, datetime.now(UTC) + timedelta(hours=24))
    headers = signer.headers(kept, "evt_2", body)
    for secret in (old, new):
        client.webhooks.verify_signature(body, headers, secret=secret)
    dropped = signer.headers(endpoint(2, None), "evt_2", body)
    client.webhooks.verify_signature(body, dropped, secret=new)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, dropped, secret=old)


class Receiver(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[tuple[str, dict[str, str], bytes]] = []
    delay_s = 0.0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        type(self).seen.append((self.path, headers, body))
        time.sleep(type(self).delay_s)
        code = type(self).answers.pop(0) if type(self).answers else 204
        self.send_response(code)
        if code in (301, 302, 307):
            self.send_header("location", "http://169.254.169.254/latest")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.answers, Receiver.seen, Receiver.delay_s = [], [], 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://hooks.test:{server.server_address[1]}/hook?x=1"
    server.shutdown()


def loopback_sender(timeout_s: float = 5.0) -> Sender:
    policy = UrlPolicy(
        ["127.0.0.1/32"], allow_http=True, resolver=resolver({"hooks.test": ["127.0.0.1"]})
    )
    return Sender(policy, timeout_s)


def test_the_sender_posts_to_the_pinned_address_with_the_original_host(receiver: str) -> None:
    assert loopback_sender().post(receiver, b"{}", {"webhook-id": "evt_3"}) == 204
    path, headers, body = Receiver.seen[0]
    assert (path, body, headers["webhook-id"]) == ("/hook?x=1", b"{}", "evt_3")
    assert headers["host"].startswith("hooks.test:")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(500, "answered HTTP 500"), (302, "answered HTTP 302"), (410, "HTTP 410")],
)
def test_error_answers_and_redirects_are_failed_attempts(
    receiver: str, answer: int, reason: str
) -> None:
    Receiver.answers = [answer]
    with pytest.raises(DeliveryError) as caught:
        loopback_sender().post(receiver, b"{}", {})
    assert reason in caught.value.reason and caught.value.status_code == answer
    assert len(Receiver.seen) == 1  # the redirect was not followed


def test_a_slow_or_absent_receiver_is_a_failed_attempt(receiver: str) -> None:
    Receiver.delay_s = 1.0
    with pytest.raises(DeliveryError, match=r"no answer within 0\.3 s"):
        loopback_sender(0.3).post(receiver, b"{}", {})
    closed = "http://hooks.test:9/hook"  # the discard port: nothing listens
    with pytest.raises(DeliveryError, match="connection failed"):
        loopback_sender().post(closed, b"{}", {})


def test_the_sender_rechecks_the_address_at_delivery_time(receiver: str) -> None:
    strict = Sender(UrlPolicy(allow_http=True, resolver=resolver({"hooks.test": ["127.0.0.1"]})), 5)
    with pytest.raises(DeliveryError, match="loopback"):
        strict.post(receiver, b"{}", {})
    assert Receiver.seen == []
