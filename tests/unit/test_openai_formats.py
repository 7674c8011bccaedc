"""OpenAI bodies ↔ seekq jobs: batch lines become the specs the endpoints submit, and
finished jobs become the bodies the endpoints answer (no Redis, database or model)."""

import base64
from array import array
from datetime import UTC, datetime
from typing import Any

import pytest

from jobs import errors
from jobs.catalog import JobKind, get_entry, parse_spec
from jobs.openai_formats import (
    BATCH_ENDPOINTS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    batch_error,
    batch_job_spec,
    batch_response_body,
    embed_spec,
)
from jobs.records import JobError, JobView
from jobs.specs import EmbedResult, GenerateResult, GenerateTiming

SECRET = "alice@example.com"
CREATED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CHAT = {
    "model": "tiny-chat",
    "messages": [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}],
        },
    ],
    "max_completion_tokens": 8,
    "temperature": 0.0,
    "stop": "\n",
    "user": SECRET,
}
COMPLETION = {"model": "tiny-gen", "prompt": ["Once"], "max_tokens": 5, "seed": 3, "top_k": 4}
EMBED = {"model": "all-MiniLM-L6-v2", "input": "hello", "user": SECRET}


def test_batch_endpoints() -> None:
    assert BATCH_ENDPOINTS == {
        "/v1/chat/completions": JobKind.GENERATE,
        "/v1/completions": JobKind.GENERATE,
        "/v1/embeddings": JobKind.EMBED,
    }


def test_batch_job_spec_is_what_the_endpoints_submit() -> None:
    kind, spec = batch_job_spec("/v1/chat/completions", CHAT)
    assert kind == JobKind.GENERATE
    assert spec == ChatCompletionRequest.model_validate(CHAT).generate_spec()
    assert spec == {
        "model": "tiny-chat",
        "max_new_tokens": 8,
        "temperature": 0.0,
        "stop": ["\n"],
        "stream": False,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi\n!"},
        ],
    }
    kind, spec = batch_job_spec("/v1/completions", COMPLETION)
    assert kind == JobKind.GENERATE
    assert spec == CompletionRequest.model_validate(COMPLETION).generate_spec()
    assert spec == {
        "model": "tiny-gen",
        "max_new_tokens": 5,
        "seed": 3,
        "top_k": 4,
        "stream": False,
        "prompt": "Once",
    }
    kind, spec = batch_job_spec("/v1/embeddings", EMBED)
    assert kind == JobKind.EMBED
    assert spec == embed_spec(EmbeddingsRequest.model_validate(EMBED))
    assert spec == {"model": "all-MiniLM-L6-v2", "input": ["hello"]}


@pytest.mark.parametrize(
    ("url", "body"),
    [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION), ("/v1/embeddings", EMBED)],
)
def test_batch_job_specs_pass_the_kinds_spec_check(url: str, body: dict[str, Any]) -> None:
    kind, spec = batch_job_spec(url, body)
    parse_spec(get_entry(kind), spec)


@pytest.mark.parametrize(
    ("url", "body", "names"),
    [
        ("/v1/chat/completions", {**CHAT, "tools": [SECRET]}, "tools"),
        ("/v1/chat/completions", {**CHAT, "n": 2}, "n: "),
        ("/v1/chat/completions", {**CHAT, "stream": True}, "stream"),
        ("/v1/completions", {**COMPLETION, "stream": True}, "stream"),
        ("/v1/completions", {**COMPLETION, "max_tokens": "5"}, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "prompt": [SECRET, SECRET]}, "prompt"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "tool", "content": SECRET}]},
            "role",
        ),
        ("/v1/chat/completions", {**CHAT, "temperature": True}, "temperature"),
        ("/v1/embeddings", {**EMBED, "input": [SECRET, 7]}, "input"),
        ("/v1/embeddings", {**EMBED, "encoding_format": SECRET}, "encoding_format"),
        ("/v1/embeddings", {**EMBED, SECRET: 1}, "<key>"),
        ("/v1/embeddings", [SECRET], "body"),
        ("/v1/files", EMBED, "url"),
    ],
)
def test_batch_job_spec_refusals_name_the_field_not_the_value(
    url: str, body: Any, names: str
) -> None:
    with pytest.raises(errors.SpecError) as caught:
        batch_job_spec(url, body)
    message = str(caught.value)
    assert names in message
    assert SECRET not in message and "alice" not in message


def test_stream_is_refused_in_batches() -> None:
    with pytest.raises(errors.SpecError, match="stream is not supported in batches"):
        batch_job_spec("/v1/chat/completions", {**CHAT, "stream": True})


def _job(kind: JobKind, result: dict[str, Any] | None, status: str = "succeeded") -> JobView:
    return JobView(
        id="01HZJOB",
        kind=kind.value,
        status=status,
        priority=5,
        spec={},
        result=result,
        error=None,
        attempts=1,
        idempotency_key=None,
        created_at=CREATED,
        started_at=CREATED,
        cancel_requested_at=None,
        finished_at=CREATED,
    )


def _generated(finish_reason: str = "length") -> dict[str, Any]:
    timing = GenerateTiming(queued_ms=1.0, first_token_ms=2.0, total_ms=3.0)
    result = GenerateResult(
        model="tiny-chat",
        text="Hello there",
        finish_reason=finish_reason,  # type: ignore[arg-type]
        prompt_tokens=7,
        completion_tokens=8,
        timing=timing,
    )
    return result.model_dump(mode="json")


def test_chat_completion_body() -> None:
    status, body = batch_response_body(
        "/v1/chat/completions", CHAT, _job(JobKind.GENERATE, _generated())
    )
    assert status == 200
    assert body == {
        "id": "chatcmpl-01HZJOB",
        "object": "chat.completion",
        "created": int(CREATED.timestamp()),
        "model": "tiny-chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "length",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15},
    }


def test_text_completion_body() -> None:
    job = _job(JobKind.GENERATE, _generated("stop"))
    status, body = batch_response_body("/v1/completions", COMPLETION, job)
    assert status == 200
    assert body["id"] == "cmpl-01HZJOB" and body["object"] == "text_completion"
    assert body["model"] == "tiny-gen"
    assert body["choices"] == [
        {"index": 0, "text": "Hello there", "finish_reason": "stop", "logprobs": None}
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}


def _vector(values: list[float]) -> str:
    return base64.b64encode(array("f", values).tobytes()).decode()


def _embedded() -> dict[str, Any]:
    vectors = [_vector([0.5, -1.0, 2.0]), _vector([0.25, 0.0, -0.75])]
    result = EmbedResult(
        model="all-MiniLM-L6-v2",
        dimensions=3,
        vectors_base64=vectors,
        prompt_tokens=9,
        token_counts=[4, 5],
    )
    return result.model_dump(mode="json")


def test_embeddings_body_floats_and_base64() -> None:
    request = {**EMBED, "input": ["a", "b"]}
    job = _job(JobKind.EMBED, _embedded())
    status, body = batch_response_body("/v1/embeddings", request, job)
    assert status == 200
    assert body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.0, 2.0]},
            {"object": "embedding", "index": 1, "embedding": [0.25, 0.0, -0.75]},
        ],
        "model": "all-MiniLM-L6-v2",
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
    }
    asked = {**request, "encoding_format": "base64", "dimensions": 3}
    _, body = batch_response_body("/v1/embeddings", asked, job)
    encoded = [item["embedding"] for item in body["data"]]
    assert encoded == _embedded()["vectors_base64"]
    decoded = array("f", base64.b64decode(encoded[1])).tolist()
    assert decoded == [0.25, 0.0, -0.75]


def test_embeddings_other_dimensions_refused() -> None:
    job = _job(JobKind.EMBED, _embedded())
    with pytest.raises(errors.SpecError, match=r"dimensions: .* only produces 3"):
        batch_response_body("/v1/embeddings", {**EMBED, "dimensions": 8}, job)


def test_jobs_without_a_response() -> None:
    failed = _job(JobKind.GENERATE, None, "failed").model_copy(
        update={"error": JobError(type="ContextLengthError", message="prompt too long")}
    )
    with pytest.raises(errors.JobFailedError):
        batch_response_body("/v1/chat/completions", CHAT, failed)
    assert batch_error(failed) == {"code": "ContextLengthError", "message": "prompt too long"}
    cancelled = _job(JobKind.GENERATE, _generated("cancelled"), "cancelled")
    with pytest.raises(errors.JobCancelledError):
        batch_response_body("/v1/completions", COMPLETION, cancelled)
    with pytest.raises(errors.JobTimeoutError):
        batch_response_body("/v1/embeddings", EMBED, _job(JobKind.EMBED, None, "running"))
