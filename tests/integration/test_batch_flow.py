"""OpenAI batches end to end with the official `openai` package: a real batch worker
(`cpu.batch`) runs each line as a generate or embed sub-job on the real workers, and the
output and error files come back through `client.files.content`."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.conftest import TINY_MODEL, Stack, WorkerProcess, stack_env, unique

WAIT_S = 180.0
WINDOW = 8


@dataclass
class Workers:
    generate: WorkerProcess
    batch: WorkerProcess


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Iterator[Workers]:
    models_file = stack.context.settings.models_file
    env = stack_env(
        stack.database_url, stack.redis_db, stack.tmp, SEEKQ_MODELS_FILE=str(models_file)
    )
    # Four sequences at a time: slow enough that a cancel or a 3 s window lands mid-batch.
    slow = {**env, "SEEKQ_GENERATE_MAX_BATCH": "4"}
    generate = WorkerProcess(slow, stack.tmp / "batch-generate.log", "gpu.generate").start()
    # Small windows, so the ordering they buy shows within seconds.
    windows = {**env, "SEEKQ_BATCH_WINDOW": str(WINDOW), "SEEKQ_BATCH_TENANT_WINDOW": "16"}
    batch = WorkerProcess(windows, stack.tmp / "batch-worker.log", "cpu.batch").start()
    yield Workers(generate, batch)
    generate.stop()
    batch.stop()


def client_for(stack: Stack, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key(tenant), max_retries=0)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    request = {"model": TINY_MODEL, "messages": [{"role": "user", "content": text}]}
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {**request, "max_tokens": 8, "temperature": 0, **body},
    }


def run_batch(client: openai.OpenAI, rows: list[dict[str, Any]], endpoint: str, **kw: Any) -> Any:
    uploaded = client.files.create(file=("requests.jsonl", jsonl(rows)), purpose="batch")
    window = kw.pop("completion_window", "24h")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window=window, **kw
    )


def wait_batch(client: openai.OpenAI, batch_id: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.3)
    raise TimeoutError(batch_id)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_chat_batch_with_a_poisoned_line(stack: Stack, workers: Workers) -> None:
    client = client_for(stack)
    rows = [chat_line(f"req-{i}", f"hello number {i}") for i in range(5)]
    rows.insert(2, chat_line("poisoned", "hi", model="no-such-model"))
    created = run_batch(client, rows, "/v1/chat/completions", metadata={"team": "support"})
    assert created.status in ("validating", "in_progress")
    batch = wait_batch(client, created.id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed) == (6, 5)
    assert batch.request_counts.failed == 1
    assert batch.metadata == {"team": "support"}
    output = lines_of(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(5)]  # input order
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == TINY_MODEL
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 8
    # The same request run alone gives the same greedy text.
    alone = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "hello number 0"}],
        max_tokens=8,
        temperature=0,
    )
    first = output[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert first == alone.choices[0].message.content
    errors = lines_of(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["poisoned"]
    assert errors[0]["response"]["status_code"] == 404
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_an_embeddings_batch_matches_the_endpoint(stack: Stack, workers: Workers) -> None:
    client = client_for(stack)
    texts = ["queues decouple producers", "refunds take five days", "the router picks experts"]
    rows = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "all-MiniLM-L6-v2", "input": text},
        }
        for i, text in enumerate(texts)
    ]
    batch = wait_batch(client, run_batch(client, rows, "/v1/embeddings").id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    output = {o["custom_id"]: o["response"]["body"] for o in lines_of(client, batch.output_file_id)}
    direct = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    for i, item in enumerate(direct.data):
        got = output[f"e{i}"]["data"][0]["embedding"]
        assert max(abs(a - b) for a, b in zip(got, item.embedding, strict=True)) < 1e-5


def test_cancel_mid_batch_keeps_the_finished_lines(stack: Stack, workers: Workers) -> None:
    client = client_for(stack)
    rows = [chat_line(f"c{i}", f"write a long answer {i}", max_tokens=48) for i in range(80)]
    created = run_batch(client, rows, "/v1/chat/completions")
    deadline = time.monotonic() + WAIT_S
    while client.batches.retrieve(created.id).request_counts.completed < 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.batches.cancel(created.id).status in ("cancelling", "cancelled")
    batch = wait_batch(client, created.id)
    assert batch.status == "cancelled", batch
    output = lines_of(client, batch.output_file_id)
    errors = lines_of(client, batch.error_file_id)
    assert 3 <= len(output) < 80
    assert len(output) + len(errors) == 80
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    order = [int(line["custom_id"][1:]) for line in output]
    assert order == sorted(order)


def test_a_batch_past_its_window_expires(stack: Stack, workers: Workers) -> None:
    client = client_for(stack)
    rows = [chat_line(f"x{i}", f"answer {i}", max_tokens=48) for i in range(120)]
    batch = wait_batch(
        client, run_batch(client, rows, "/v1/chat/completions", completion_window="3s").id
    )
    assert batch.status == "expired", batch
    assert batch.expired_at is not None
    errors = lines_of(client, batch.error_file_id)
    assert errors and {e["error"]["code"] for e in errors} == {"batch_expired"}
    done = lines_of(client, batch.output_file_id)
    assert len(done) + len(errors) == 120


def test_malformed_files_are_refused_with_line_numbers(stack: Stack, workers: Workers) -> None:
    client = client_for(stack)
    rows = jsonl([chat_line("a", "x"), chat_line("a", "y")]) + b"not json\n"
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", rows), purpose="batch")
    message = str(caught.value)
    assert "line 2: duplicate custom_id (first on line 1)" in message
    assert "line 3: not valid JSON" in message
    good = client.files.create(file=("good.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError, match="/v1/chat/completions"):
        client.batches.create(
            input_file_id=good.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(
            input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="48h"
        )


def test_batches_are_tenant_scoped(stack: Stack, workers: Workers) -> None:
    client = client_for(stack)
    batch = wait_batch(
        client, run_batch(client, [chat_line(unique("t"), "hi")], "/v1/chat/completions").id
    )
    assert batch.id in [b.id for b in client.batches.list(limit=100)]
    other = client_for(stack, "globex")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(batch.output_file_id)
    assert batch.id not in [b.id for b in other.batches.list()]


def test_an_interactive_request_overtakes_a_big_batch(stack: Stack, workers: Workers) -> None:
    """A batch lets out WINDOW lines at a time, so a chat request sent while a big batch
    runs waits behind at most WINDOW lines, not behind the whole batch."""
    client = client_for(stack)
    quick = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "quick one"}]}
    quick.update(max_tokens=16, seed=7)  # the same tokens alone and during the batch

    def ask() -> tuple[float, int]:
        asked = time.monotonic()
        answer = client.chat.completions.create(**quick)  # type: ignore[call-overload]
        return time.monotonic() - asked, answer.usage.completion_tokens

    alone_s, alone_tokens = ask()
    rows = [chat_line(f"big{i}", f"tell me about plan {i}", max_tokens=16) for i in range(300)]
    batch_started = time.monotonic()
    created = run_batch(client, rows, "/v1/chat/completions")
    deadline = time.monotonic() + WAIT_S
    while client.batches.retrieve(created.id).request_counts.completed < WINDOW:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    interactive_s, tokens = ask()
    during = client.batches.retrieve(created.id)
    batch = wait_batch(client, created.id)
    batch_s = time.monotonic() - batch_started
    print(  # the numbers, for the closing note (pytest -s)
        f"interactive {interactive_s:.2f}s while the batch ran ({alone_s:.2f}s alone, "
        f"{tokens} tokens); batch {batch_s:.2f}s "
        f"({during.request_counts.completed}/300 done when the interactive one returned)"
    )
    assert tokens == alone_tokens
    assert batch.status == "completed"
    assert during.status == "in_progress" and during.request_counts.completed < 300
    assert interactive_s < batch_s / 4


def test_two_tenants_batches_interleave(stack: Stack, workers: Workers) -> None:
    """Tenant B's small batch, sent after tenant A's big one, is not held behind it."""
    big, small = client_for(stack, "acme"), client_for(stack, "globex")
    a = run_batch(
        big,
        [chat_line(f"a{i}", f"plan {i}", max_tokens=16) for i in range(240)],
        "/v1/chat/completions",
    )
    while big.batches.retrieve(a.id).request_counts.completed < WINDOW:
        time.sleep(0.1)
    sent = time.monotonic()
    b = run_batch(
        small,
        [chat_line(f"b{i}", f"plan {i}", max_tokens=16) for i in range(16)],
        "/v1/chat/completions",
    )
    done_b = wait_batch(small, b.id)
    b_s = time.monotonic() - sent
    a_then = big.batches.retrieve(a.id)
    done_a = wait_batch(big, a.id)
    a_s = time.monotonic() - sent
    print(
        f"tenant B's 16 lines done in {b_s:.2f}s; tenant A's 240 then at "
        f"{a_then.request_counts.completed}/240, done {a_s:.2f}s after B was sent"
    )
    assert done_b.status == done_a.status == "completed"
    assert a_then.status == "in_progress" and a_then.request_counts.completed < 240
