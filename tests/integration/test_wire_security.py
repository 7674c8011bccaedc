"""Security checks on the wire and in the logs, against the session's real worker:

- a pickle message put straight on a queue is refused, never run, and the worker goes on;
- no secret of the session (the server secret, API keys, Flower's password, webhook
  signing secrets) appears in any log written so far: worker logs and the test process's
  own log (which holds the in-process gateway's)."""

import os
import pickle
import time
from pathlib import Path

from kombu import Connection, Exchange, Producer

from tests.conftest import TEST_SECRET, Stack, redis_url, unique
from tests.integration.test_flower import PASSWORD as FLOWER_PASSWORD


class Exploit:
    """Unpickling this would create `marker`: proof that pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_message_is_refused_and_never_run(stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    body = pickle.dumps(((Exploit(marker),), {}, {}))
    headers = {"id": unique("task"), "task": "seekq.ping", "lang": "py", "argsrepr": "()"}
    with Connection(redis_url(stack.redis_db)) as connection:
        producer = Producer(connection.channel(), exchange=Exchange("cpu.ping", type="direct"))
        producer.publish(
            body,
            routing_key="cpu.ping",
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers=headers,
        )
    deadline = time.monotonic() + 20
    while "untrusted content" not in stack.worker.log():
        assert time.monotonic() < deadline, stack.worker.log()[-2000:]
        time.sleep(0.2)
    assert not marker.exists()
    with stack.client() as client:  # the worker still serves JSON messages
        job = client.submit("ping", {"payload": "after"})
        assert client.wait(job["id"], timeout_s=60)["status"] == "succeeded"
    assert not marker.exists()


def test_no_secret_reaches_any_log(stack: Stack, test_log: Path) -> None:
    secrets_made = [TEST_SECRET, FLOWER_PASSWORD, *stack.keys.values()]
    secrets_made += [key[-43:] for key in stack.keys.values()]  # the secret half (43 chars)
    logs = {path.name: path.read_text(errors="replace") for path in stack.tmp.glob("*.log")}
    logs["test process"] = test_log.read_text(errors="replace")
    assert len(logs) >= 2
    for name, text in logs.items():
        for secret in secrets_made:
            assert secret not in text, f"a secret in {name}"
        assert "whsec_" not in text, f"a webhook signing secret in {name}"
