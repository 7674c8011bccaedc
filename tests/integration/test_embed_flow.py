"""Submit → mask → SQL → Redis → real worker with the real model → result."""

import base64
import struct

import numpy as np
import openai
import pytest

from jobs.specs import decode_vector
from tests.conftest import Stack

TEXTS = [
    "How do refunds work for annual plans?",
    "A much longer sentence about queues, workers, GPUs and the many ways jobs can fail "
    "at three in the morning when nobody is watching the dashboards.",
    "短句",
    "Embeddings map text to vectors.",
]


def cosines(a: list[list[float]], b: np.ndarray) -> np.ndarray:
    left = np.asarray(a, dtype=np.float64)
    right = np.asarray(b, dtype=np.float64)
    dots = (left * right).sum(axis=1)
    return dots / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))


def test_embed_job_matches_sentence_transformers(stack: Stack, st_model) -> None:  # type: ignore[no-untyped-def]
    with stack.client() as client:
        job = client.submit("embed", {"input": TEXTS})
        assert job["status"] == "queued"
        done = client.wait(job["id"], timeout_s=60)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["dimensions"] == 384
    vectors = [decode_vector(v) for v in result["vectors_base64"]]
    assert len(vectors) == len(TEXTS) and {len(v) for v in vectors} == {384}
    expected = st_model.encode(TEXTS, normalize_embeddings=True)
    assert cosines(vectors, expected).min() >= 0.9999
    assert result["prompt_tokens"] == sum(result["token_counts"])
    assert result["token_counts"][1] > result["token_counts"][0] > 0
    assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]


def test_openai_package_embeddings(stack: Stack, st_model) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key("acme"), max_retries=0)
    expected = st_model.encode(TEXTS, normalize_embeddings=True)
    # The openai package asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    as_float = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float"
    )
    for response in (default, as_float):
        vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
        assert cosines(vectors, expected).min() >= 0.9999
        assert response.usage.prompt_tokens > len(TEXTS)
        assert response.model == "all-MiniLM-L6-v2"
    single = client.embeddings.create(model="all-MiniLM-L6-v2", input="one text")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    models = client.models.list()
    assert "all-MiniLM-L6-v2" in [m.id for m in models.data]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


def test_base64_encoding_is_little_endian_float32(stack: Stack) -> None:
    with stack.http() as http:
        body = {"model": "all-MiniLM-L6-v2", "input": ["abc"], "encoding_format": "base64"}
        encoded = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
        body["encoding_format"] = "float"
        floats = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert np.allclose(decoded, floats, atol=1e-6)


def test_ping_job_round_trip(stack: Stack) -> None:
    with stack.client() as client:
        job = client.submit("ping", {"payload": "hello"})
        done = client.wait(job["id"], timeout_s=30)
    assert done["status"] == "succeeded"
    assert done["result"] == {"payload": "hello"}
