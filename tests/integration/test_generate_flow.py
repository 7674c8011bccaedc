"""Generate jobs end to end: a real `seekq worker -Q gpu.generate` process (threads pool,
continuous-batching engine) running the tiny DeepSeek-V3 MoE, real Redis, real SQL."""

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from jobs.errors import ConfigError
from jobs.registry import ModelFileEntry, ModelKind, register
from seekq.client_commands import printable
from seekq.embedded import free_port
from tests.conftest import TINY_MODEL, Stack, WorkerProcess, stack_env

WAIT_S = 60.0
PROMPT = "the queue keeps every job"


@dataclass
class Generator:
    worker: WorkerProcess
    metrics_url: str


@pytest.fixture(scope="module")
def generator(stack: Stack) -> Iterator[Generator]:
    """A generate worker next to the session's embed worker, exporting its metrics."""
    models_file = stack.context.settings.models_file
    assert models_file is not None
    port = free_port()
    env = stack_env(
        stack.database_url,
        stack.redis_db,
        stack.tmp,
        SEEKQ_MODELS_FILE=str(models_file),
        SEEKQ_METRICS_PORT=str(port),
        SEEKQ_GENERATE_MAX_BATCH="16",
    )
    worker = WorkerProcess(env, stack.tmp / "generate-worker.log", queues="gpu.generate")
    yield Generator(worker.start(), f"http://127.0.0.1:{port}/metrics")
    worker.stop()


def generate(stack: Stack, **spec: Any) -> dict[str, Any]:
    spec = {"model": TINY_MODEL, "prompt": PROMPT, **spec}
    with stack.client() as client:
        job = client.wait(client.submit("generate", spec)["id"], timeout_s=WAIT_S)
    assert job["status"] == "succeeded", job
    return job


def test_max_new_tokens_and_expert_counts(stack: Stack, generator: Generator) -> None:
    result = generate(stack, max_new_tokens=24, seed=1)["result"]
    assert result["completion_tokens"] <= 24
    if result["finish_reason"] == "length":
        assert result["completion_tokens"] == 24
    # Every token fed through the model (the prompt, and each generated token but the
    # last) is routed to top-k = 2 experts in each of the 3 MoE layers (layer 0 is dense).
    fed = result["prompt_tokens"] + result["completion_tokens"] - 1
    assert sorted(result["expert_counts"]) == ["1", "2", "3"]
    for counts in result["expert_counts"].values():
        assert len(counts) == 8
        assert sum(counts) == fed * 2
    assert result["timing"]["first_token_ms"] <= result["timing"]["total_ms"]


def test_a_seed_reproduces_the_text(stack: Stack, generator: Generator) -> None:
    first = generate(stack, max_new_tokens=32, seed=42)["result"]["text"]
    again = generate(stack, max_new_tokens=32, seed=42)["result"]["text"]
    other = generate(stack, max_new_tokens=32, seed=43)["result"]["text"]
    assert first == again
    assert first != other


def test_greedy_matches_hf_generate(stack: Stack, generator: Generator) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_file = stack.context.settings.models_file
    assert models_file is not None
    directory = Path(models_file).parent / TINY_MODEL
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    got = generate(stack, max_new_tokens=20, temperature=0.0)["result"]["text"]
    assert got == expected


def test_stop_string_ends_the_text(stack: Stack, generator: Generator) -> None:
    free = generate(stack, max_new_tokens=48, seed=5)["result"]["text"]
    stop = next(free[i : i + 3] for i in range(4, len(free) - 3) if free[i : i + 3].isprintable())
    result = generate(stack, max_new_tokens=48, seed=5, stop=[stop])["result"]
    assert result["finish_reason"] == "stop"
    assert result["text"] == free[: free.index(stop)]
    assert stop not in result["text"]


def test_banned_words_never_appear(stack: Stack, generator: Generator) -> None:
    words_seen: list[str] = []
    for seed in range(6):
        text = generate(stack, max_new_tokens=64, seed=seed, temperature=0.8)["result"]["text"]
        words_seen += re.findall(r"[A-Za-z]{3,}", text)
    banned = sorted(set(words_seen))[:12]
    assert banned, "the tiny model produced no words to ban"
    pattern = re.compile(r"(?<!\w)(" + "|".join(banned) + r")(?!\w)", re.IGNORECASE)
    for seed in range(6):
        spec = {"max_new_tokens": 64, "seed": seed, "temperature": 0.8, "banned_words": banned}
        text = generate(stack, **spec)["result"]["text"]
        assert pattern.search(text) is None, (banned, text)


def test_concurrent_jobs_are_batched(stack: Stack, generator: Generator) -> None:
    def one(seed: int) -> dict[str, Any]:
        return generate(stack, max_new_tokens=64, seed=seed)

    with ThreadPoolExecutor(max_workers=12) as pool:
        jobs = list(pool.map(one, range(12)))
    assert all(job["status"] == "succeeded" for job in jobs)
    metrics = httpx.get(generator.metrics_url, timeout=5).text
    # The batch-size histogram: some decoding steps held more than one sequence.
    count = _sample(metrics, "seekq_generate_batch_size_count", TINY_MODEL)
    singles = _sample(metrics, 'seekq_generate_batch_size_bucket{le="1.0"', TINY_MODEL)
    assert count > singles
    assert _sample(metrics, "seekq_moe_expert_tokens_total", TINY_MODEL) > 0
    assert 0 < _sample(metrics, "seekq_moe_expert_activation_rate", TINY_MODEL) <= 1


def test_cancel_stops_a_running_generation(stack: Stack, generator: Generator) -> None:
    spec = {"model": TINY_MODEL, "prompt": PROMPT, "max_new_tokens": 480, "stream": True}
    with stack.client() as client:
        job = client.submit("generate", spec)
        key = f"seekq:stream:{job['id']}"
        deadline = time.monotonic() + WAIT_S
        while not stack.context.redis.xlen(key) and time.monotonic() < deadline:
            time.sleep(0.01)
        client.cancel(job["id"])
        asked = time.monotonic()
        done = client.wait(job["id"], timeout_s=WAIT_S)
        took_s = time.monotonic() - asked
    assert done["status"] == "cancelled"
    result = done["result"]
    assert result["finish_reason"] == "cancelled"
    assert 0 < result["completion_tokens"] < 480
    assert took_s < 2.0  # a decoding step is milliseconds; the SQL fallback would be 2 s


def test_context_overflow_is_refused_before_queueing(stack: Stack) -> None:
    spec = {"model": TINY_MODEL, "prompt": "hello " * 400, "max_new_tokens": 200}
    with stack.http() as http:
        response = http.post("/v1/jobs", json={"kind": "generate", "spec": spec})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "512" in error["message"] and "hello" not in error["message"]


def test_personal_data_in_word_lists_is_refused(stack: Stack) -> None:
    spec = {"model": TINY_MODEL, "prompt": "hi", "banned_words": ["bob@example.com"]}
    with stack.http() as http:
        response = http.post("/v1/jobs", json={"kind": "generate", "spec": spec})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "banned_words: must not hold personal data (found EMAIL)"
    )


def test_pickle_only_model_is_refused(stack: Stack, tmp_path: Path) -> None:
    from jobs.registry import ModelRegistry
    from workers.backends.causal_lm import load_causal_lm
    from workers.models.tiny import make_tiny_deepseek

    directory = make_tiny_deepseek(tmp_path / "pickled")
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    models_file = tmp_path / "models.json"
    register(
        models_file, ModelFileEntry(name="pickled", kind=ModelKind.CAUSAL_LM, path=str(directory))
    )
    entry = ModelRegistry.load(models_file, frozenset()).get("pickled")
    with pytest.raises(ConfigError, match=r"no \.safetensors weights.*pytorch_model\.bin"):
        load_causal_lm(Path(entry.source), device="cpu")


def test_remote_code_needs_the_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's models file asks for remote code; only SEEKQ_TRUST_REMOTE_CODE (read
    by the settings, as the gateway and workers read it) lets the entry load."""
    from jobs.registry import ModelRegistry
    from jobs.settings import JobsSettings

    models_file = tmp_path / "models.json"
    entry = {"name": "custom", "kind": "causal-lm", "path": str(tmp_path)}
    models_file.write_text(json.dumps([{**entry, "trust_remote_code": True}]))
    with pytest.raises(ConfigError, match="SEEKQ_TRUST_REMOTE_CODE"):
        ModelRegistry.load(models_file, JobsSettings().trust_remote_code)
    monkeypatch.setenv("SEEKQ_TRUST_REMOTE_CODE", '["custom"]')
    allowed = ModelRegistry.load(models_file, JobsSettings().trust_remote_code)
    assert allowed.get("custom").trust_remote_code


def _sample(metrics: str, name: str, model: str) -> float:
    """The sum of the samples of `name` (a prefix, labels included) for `model`."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def openai_client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key("acme"), max_retries=0)


def test_openai_chat_stream_equals_the_stored_result(stack: Stack, generator: Generator) -> None:
    client = openai_client(stack)
    stream = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "hello, my mail is bob@example.com"}],
        max_tokens=40,
        seed=11,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, ids = [], None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len(ids) == 1
    job_id = ids.pop().removeprefix("chatcmpl-")
    with stack.client() as native:
        stored = native.get(job_id)
    assert stored["status"] == "succeeded"
    assert "".join(pieces) == stored["result"]["text"]
    assert finish == stored["result"]["finish_reason"]
    assert usage is not None and usage.completion_tokens == stored["result"]["completion_tokens"]
    assert "bob@example.com" not in str(stored["spec"])


def test_openai_completions_plain_and_streamed(stack: Stack, generator: Generator) -> None:
    client = openai_client(stack)
    plain = client.completions.create(model=TINY_MODEL, prompt=PROMPT, max_tokens=24, seed=3)
    streamed = client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=24, seed=3, stream=True
    )
    text = "".join(choice.text for chunk in streamed for choice in chunk.choices)
    assert plain.choices[0].text == text
    assert plain.usage is not None and plain.usage.completion_tokens <= 24
    assert plain.choices[0].finish_reason in {"stop", "length"}


def test_openai_errors_are_openai_errors(stack: Stack, generator: Generator) -> None:
    client = openai_client(stack)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=TINY_MODEL, prompt="hello " * 400, max_tokens=200)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=5)


def test_seekq_generate_cli_streams_what_is_stored(stack: Stack, generator: Generator) -> None:
    import subprocess
    import sys

    env = stack_env(
        stack.database_url,
        stack.redis_db,
        stack.tmp,
        SEEKQ_URL=stack.url,
        SEEKQ_API_KEY=stack.key("acme"),
        SEEKQ_GENERATE_MODEL=TINY_MODEL,
    )

    def seekq(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "seekq", "generate", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    as_json = seekq(PROMPT, "--max-new-tokens", "12", "--seed", "9", "--json")
    assert as_json.returncode == 0, as_json.stderr
    job = json.loads(as_json.stdout)
    assert job["status"] == "succeeded" and job["result"]["completion_tokens"] <= 12
    streamed = seekq(PROMPT, "--max-new-tokens", "12", "--seed", "9")
    assert streamed.returncode == 0, streamed.stderr
    printed, _, status = streamed.stdout.partition("\nsucceeded")
    assert printed == printable(job["result"]["text"])  # the same seed, the same text
    status = " ".join(status.split())  # rich wraps long lines
    assert "finish=" in status and "completion tokens" in status
    refused = seekq("hello " * 400, "--max-new-tokens", "300")
    assert refused.returncode == 1
    assert "400 context_length_exceeded" in refused.stdout and "Traceback" not in refused.stderr


def test_worker_metrics_split_queue_wait_and_run_time(stack: Stack, generator: Generator) -> None:
    """Job-level series of the worker, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    generate(stack, max_new_tokens=4, seed=2)
    families = {
        f.name: f for f in text_string_to_metric_families(httpx.get(generator.metrics_url).text)
    }

    def total(name: str, suffix: str, **labels: str) -> float:
        samples = families[name].samples
        wanted = [s for s in samples if s.name == name + suffix]
        return sum(s.value for s in wanted if all(s.labels.get(k) == v for k, v in labels.items()))

    job = {"kind": "generate", "model": TINY_MODEL}
    assert total("seekq_job_queue_wait_seconds", "_count", **job) >= 1
    assert total("seekq_job_run_seconds", "_count", **job) >= 1
    assert total("seekq_job_run_seconds", "_sum", **job) > 0
    assert total("seekq_jobs", "_total", **job, outcome="succeeded", error="none") >= 1
    assert total("seekq_model_load_seconds", "_count", model=TINY_MODEL) == 1  # preloaded once
    queues = {s.labels["queue"] for s in families["seekq_queue_depth"].samples}
    assert {"gpu.generate", "gpu.embed", "cpu.webhooks"} <= queues
    # No GPU here: the GPU series are absent, not zero.
    assert "seekq_gpu_memory_allocated_bytes" not in families
