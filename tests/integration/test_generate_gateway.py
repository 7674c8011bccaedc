"""The generate gateway: OpenAI completions and chat completions (plain and streamed) and
the native job events, over real HTTP, Redis and SQL.

The test plays the worker by hand (claim the job, write its token stream, finish it), so
no engine runs. The gateway here has its own job context on a Redis database the session's
worker does not consume, and a models file naming a tiny causal LM.
"""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from api_gateway import streaming
from jobs.context import JobsContext
from jobs.keys import Principal
from jobs.records import JobView
from jobs.specs import GenerateResult, GenerateTiming
from jobs.streams import StreamEntry, TokenStreams
from tests.conftest import (
    TINY_MODEL,
    Stack,
    WorkerProcess,
    flush_redis,
    make_context,
    served,
    stack_env,
    unique,
)

MODEL = TINY_MODEL
WAIT_S = 20.0


@dataclass
class Gateway:
    url: str
    context: JobsContext

    def tenant(self) -> tuple[str, Principal]:
        """A fresh tenant per test, so the hand-played worker finds only that test's jobs."""
        key = self.context.keys.create(unique("gen")).secret
        return key, self.context.keys.authenticate(key)

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def http(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[Gateway]:
    flush_redis(stack.redis_db + 2)
    models_file = stack.context.settings.models_file  # registers the tiny causal LM
    context = make_context(stack.database_url, stack.redis_db + 2, models_file=models_file)
    with served(context, wait_timeout_s=WAIT_S) as url:
        yield Gateway(url, context)
    context.close()


@dataclass
class Script:
    """What the hand-played worker does with the next queued generate job of a tenant."""

    deltas: list[str]
    text: str | None = None  # the stored text; default: the deltas joined
    end: str | None = "stop"  # the stream's end entry; None writes none
    finish_reason: str = "stop"
    fail: bool = False
    cancel_first: bool = False  # a cancel is requested while it runs
    restart_after: int | None = None  # a takeover: {"restart": 2} after this many deltas


class HandWorker(threading.Thread):
    def __init__(self, context: JobsContext, who: Principal, script: Script) -> None:
        super().__init__(daemon=True)
        self.context = context
        self.who = who
        self.script = script
        self.job_id = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._play()
        except BaseException as exc:  # re-raised in the test thread by finish()
            self.error = exc

    def _play(self) -> None:
        self.job_id = self._next_job()
        lifecycle = self.context.lifecycle("hand-worker")
        claim = lifecycle.claim(self.job_id)
        assert claim is not None
        if self.script.cancel_first:
            self.context.service.cancel(self.who, self.job_id)
        streams = TokenStreams(self.context.redis)
        for index, delta in enumerate(self.script.deltas):
            if index == self.script.restart_after:
                streams.write([StreamEntry(self.job_id, restart=2)])
            streams.write([StreamEntry(self.job_id, delta=delta)])
            time.sleep(0.02)
        if self.script.end is not None:
            streams.write([StreamEntry(self.job_id, end=self.script.end)])
        if self.script.fail:
            lifecycle.fail(claim, "EngineError", "the engine broke")
        else:
            lifecycle.succeed(claim, self._result())

    def _next_job(self) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            page = self.context.service.list_jobs(self.who, kind="generate", status="queued")
            if page.data:
                return page.data[0].id
            time.sleep(0.02)
        raise TimeoutError("no generate job was submitted")

    def _result(self) -> dict[str, Any]:
        text = "".join(self.script.deltas) if self.script.text is None else self.script.text
        timing = GenerateTiming(queued_ms=1.0, first_token_ms=2.0, total_ms=3.0)
        result = GenerateResult(
            model=MODEL,
            text=text,
            finish_reason=self.script.finish_reason,  # type: ignore[arg-type]
            prompt_tokens=7,
            completion_tokens=len(self.script.deltas),
            timing=timing,
        )
        return result.model_dump(mode="json")

    def finish(self) -> JobView:
        self.join(timeout=30)
        if self.error is not None:
            raise self.error
        return self.context.service.get(self.who, self.job_id)


def play(gateway: Gateway, who: Principal, script: Script) -> HandWorker:
    worker = HandWorker(gateway.context, who, script)
    worker.start()
    return worker


def messages(text: str = "hello there") -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_chat_stream_with_the_openai_package(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    worker = play(gateway, who, Script(["Hel", "lo", " wor", "ld"], finish_reason="length"))
    chunks = list(
        gateway.openai(key).chat.completions.create(
            model=MODEL,
            messages=messages(),
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    job = worker.finish()
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == job.result["text"] == "Hello world"  # type: ignore[index]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 4, 11)
    assert {c.id for c in chunks} == {f"chatcmpl-{job.id}"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert job.spec["stream"] is True and job.spec["max_new_tokens"] == 4 and job.priority == 8


def test_a_restarted_generation_ends_the_stream_with_an_error(gateway: Gateway) -> None:
    """Text already sent cannot be taken back: a takeover ends the stream with an error
    that says where the final text is, instead of appending the new attempt's text."""
    key, who = gateway.tenant()
    worker = play(gateway, who, Script(["one", "two", "uno", "dos"], restart_after=2))
    stream = gateway.openai(key).chat.completions.create(
        model=MODEL, messages=messages(), stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="started over on another worker"):
        for chunk in stream:
            received += [c.delta.content or "" for c in chunk.choices]
    job = worker.finish()
    assert "".join(received) == "onetwo"
    assert job.status == "succeeded"


def sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_completion_stream_without_end_entry_finishes_from_sql(gateway: Gateway) -> None:
    """No end entry and a stored text longer than the stream: the rest comes from SQL."""
    key, who = gateway.tenant()
    worker = play(gateway, who, Script(["abc", "def"], text="abcdefghi", end=None))
    body = {"model": MODEL, "prompt": "count", "stream": True}
    with gateway.http(key) as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = sse_data(response)
    job = worker.finish()
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "abcdefghi"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert {c["id"] for c in chunks} == {f"cmpl-{job.id}"}
    assert all("usage" not in c for c in chunks)  # not asked for


def test_plain_chat_and_completion(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    client = gateway.openai(key)
    worker = play(gateway, who, Script(["Hi", "!"], finish_reason="length"))
    chat = client.chat.completions.create(model=MODEL, messages=messages())
    job = worker.finish()
    assert chat.id == f"chatcmpl-{job.id}" and chat.model == MODEL
    assert chat.choices[0].message.content == "Hi!" and chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.total_tokens == 9
    assert job.spec["stream"] is False
    worker = play(gateway, who, Script(["once"], end=None))
    completion = client.completions.create(model=MODEL, prompt=["upon a time"], stop="\n")
    job = worker.finish()
    assert completion.id == f"cmpl-{job.id}" and completion.choices[0].text == "once"
    assert completion.choices[0].finish_reason == "stop" and job.spec["stop"] == ["\n"]


def test_failed_job_ends_the_stream_with_an_error_event(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    worker = play(gateway, who, Script(["partial"], end="error", fail=True))
    stream = gateway.openai(key).chat.completions.create(
        model=MODEL,
        messages=messages(),
        stream=True,
    )
    with pytest.raises(openai.APIError, match="failed") as raised:
        for _ in stream:
            pass
    assert raised.value.body["code"] == "job_failed"  # type: ignore[index]
    assert worker.finish().status == "failed"


def test_cancelled_job_is_a_409_not_a_finish_reason(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    worker = play(gateway, who, Script(["half"], cancel_first=True, finish_reason="cancelled"))
    with pytest.raises(openai.ConflictError) as raised:
        gateway.openai(key).completions.create(model=MODEL, prompt="go")
    assert raised.value.code == "job_cancelled"
    job = worker.finish()
    assert job.status == "cancelled" and job.result["text"] == "half"  # type: ignore[index]


def test_native_events_and_client(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    from api_gateway.client import SeekqClient

    with SeekqClient(gateway.url, key) as client:
        worker = play(gateway, who, Script(["one ", "two ", "three"], text="one two three!"))
        job = client.submit("generate", {"model": MODEL, "prompt": "count", "stream": True})
        texts = list(client.stream_events(job["id"]))
        assert worker.finish().id == job["id"]
        assert texts == ["one ", "two ", "three", "!"]
        assert client.get(job["id"])["status"] == "succeeded"
        worker = play(gateway, who, Script(["done"]))
        finished = client.generate({"model": MODEL, "prompt": "go"})
        assert finished["result"]["text"] == "done" and worker.finish().id == finished["id"]
    with gateway.http(key) as http:
        events = http.get(f"/v1/jobs/{job['id']}/events").text  # a finished job: at once
    assert events.endswith("\n\n") and "event: done\ndata: {" in events
    done = json.loads(events.split("event: done\ndata: ", 1)[1])
    assert done["id"] == job["id"] and done["status"] == "succeeded"


def test_events_of_unknown_or_foreign_jobs_are_404(gateway: Gateway) -> None:
    _, who = gateway.tenant()
    other_key, _ = gateway.tenant()
    job = gateway.context.service.submit(who, "generate", {"model": MODEL, "prompt": "x"}).job
    with gateway.http(other_key) as http:
        for job_id in (job.id, str(uuid.uuid4()), "not-a-uuid"):
            response = http.get(f"/v1/jobs/{job_id}/events")
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "not_found"


def test_a_client_that_disconnects_does_not_cancel_the_job(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    body = {"model": MODEL, "messages": messages(), "stream": True}
    with gateway.http(key) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        first = json.loads(next(line for line in r.iter_lines() if line)[6:])
    job_id = first["id"].removeprefix("chatcmpl-")
    time.sleep(0.3)
    assert gateway.context.service.get(who, job_id).status == "queued"


UNSUPPORTED: list[tuple[str, str, dict[str, Any], str]] = [
    ("n=2", "chat", {"n": 2}, "n: only n=1 is supported"),
    ("logprobs", "chat", {"logprobs": True}, "logprobs: not supported"),
    ("top_logprobs", "chat", {"top_logprobs": 2}, "top_logprobs: not supported"),
    ("logit_bias", "chat", {"logit_bias": {"1": 5.0}}, "logit_bias: not supported"),
    ("frequency_penalty", "chat", {"frequency_penalty": 0.5}, "frequency_penalty: only 0"),
    ("presence_penalty", "completion", {"presence_penalty": 1.0}, "presence_penalty: only 0"),
    ("completion logprobs", "completion", {"logprobs": 3}, "logprobs: not supported"),
    ("tools", "chat", {"tools": []}, "tools: Extra inputs are not permitted"),
    ("tool role", "chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
    ("stream_options alone", "chat", {"stream_options": {"include_usage": True}}, "stream is"),
    ("two prompts", "completion", {"prompt": ["a", "b"]}, "prompt: only one prompt"),
    ("token prompt", "completion", {"prompt": [1, 2]}, "prompt"),
    ("two limits", "chat", {"max_tokens": 4, "max_completion_tokens": 5}, "give one"),
    ("max_tokens 0", "chat", {"max_tokens": 0}, "max_tokens"),
    ("temperature 3", "chat", {"temperature": 3.0}, "temperature"),
    ("seed negative", "completion", {"seed": -1}, "seed"),
]


@pytest.mark.parametrize(
    ("case", "api", "extra", "message"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED]
)
def test_unsupported_requests_are_precise_422s(
    gateway: Gateway, case: str, api: str, extra: dict[str, Any], message: str
) -> None:
    key, who = gateway.tenant()
    path, body = (
        ("/v1/chat/completions", {"model": MODEL, "messages": messages()})
        if api == "chat"
        else ("/v1/completions", {"model": MODEL, "prompt": "hi"})
    )
    with gateway.http(key) as http:
        response = http.post(path, json={**body, **extra})
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]
    assert gateway.context.service.list_jobs(who).data == []


def test_malformed_json_unknown_model_and_context_length(gateway: Gateway) -> None:
    key, who = gateway.tenant()
    too_long = {"model": MODEL, "messages": messages(), "max_tokens": 600}  # context: 512
    with gateway.http(key) as http:
        broken = http.post(
            "/v1/chat/completions",
            content=b'{"model": ',
            headers={"content-type": "application/json"},
        )
        unknown = http.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
        overflow = http.post("/v1/chat/completions", json=too_long)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert overflow.status_code == 400, overflow.text
    assert overflow.json()["error"]["code"] == "context_length_exceeded"
    assert gateway.context.service.list_jobs(who).data == []


def test_stream_deadline_ends_with_an_error_event(gateway: Gateway) -> None:
    """A job nobody runs: after the deadline an error event, and no [DONE]."""
    _, who = gateway.tenant()
    job = gateway.context.service.submit(who, "generate", {"model": MODEL, "prompt": "x"}).job

    async def collect() -> list[str]:
        redis = streaming.connect(gateway.context.settings.broker_url)
        stream = streaming.JobStream(redis, gateway.context.service, who, job.id, 1.5)
        fmt = streaming.ChunkFormat(True, "chatcmpl-x", 0, MODEL, include_usage=False)
        try:
            return [line async for line in streaming.openai_events(stream, fmt)]
        finally:
            await redis.aclose()

    lines = asyncio.run(collect())
    assert len(lines) == 2  # the role chunk, then the error
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "job_timeout" and job.id in error["message"]


def test_openapi_documents_the_streams(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    for path, method in [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/jobs/{job_id}/events", "get"),
    ]:
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        assert "text/event-stream" in content, path
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert "application/json" in chat


@pytest.fixture
def real_worker(stack: Stack, gateway: Gateway) -> Iterator[WorkerProcess]:
    """A real generate worker on the gateway's broker database. Only for the tests after
    it: it would race the hand-played worker."""
    models_file = str(gateway.context.settings.models_file)
    env = stack_env(
        stack.database_url, stack.redis_db + 2, stack.tmp, SEEKQ_MODELS_FILE=models_file
    )
    worker = WorkerProcess(env, stack.tmp / "gateway-generate.log", queues="gpu.generate")
    yield worker.start()
    worker.stop()


def test_real_worker_streams_what_it_stores(gateway: Gateway, real_worker: WorkerProcess) -> None:
    key, who = gateway.tenant()
    client = gateway.openai(key)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages(),
            max_tokens=24,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    job = gateway.context.service.get(who, chunks[0].id.removeprefix("chatcmpl-"))
    assert job.status == "succeeded" and job.result is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == job.result["text"]
    assert len([c for c in chunks if c.choices]) > 3  # from the token stream, not SQL at once
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == job.result["completion_tokens"]
    stream = client.completions.create(model=MODEL, prompt="the queue", max_tokens=8, stream=True)
    pieces = list(stream)
    job = gateway.context.service.get(who, pieces[0].id.removeprefix("cmpl-"))
    assert "".join(p.choices[0].text for p in pieces) == job.result["text"]  # type: ignore[index]
