"""The batching engine in-process on the tiny DeepSeek-V3 MoE: batching does not change
greedy text, static and continuous agree, cancels end waiting and running requests."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.backends.causal_lm import load_causal_lm
from workers.engine import GenerationEngine, Request
from workers.models.tiny import make_tiny_deepseek
from workers.sampling import SamplingParams

PROMPTS = ["the queue keeps", "a small model turns each sentence into numbers", "hello"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    return load_causal_lm(make_tiny_deepseek(tmp_path_factory.mktemp("tiny")), device="cpu")


@pytest.fixture
def engine(loaded: tuple[object, object]) -> Iterator[GenerationEngine]:
    model, tokenizer = loaded
    engine = GenerationEngine("tiny", model, tokenizer, max_batch=2)  # type: ignore[arg-type]
    yield engine
    engine.close()


def request(engine: GenerationEngine, prompt: str, **params: object) -> Request:
    ids = list(engine.tokenizer(prompt)["input_ids"])
    return Request(prompt, ids, SamplingParams(**{"max_new_tokens": 12, **params}))  # type: ignore[arg-type]


def test_greedy_text_is_the_same_alone_and_batched(
    engine: GenerationEngine, loaded: tuple[object, object]
) -> None:
    alone = [engine.submit(request(engine, p, temperature=0.0)).result().text for p in PROMPTS]
    futures = [engine.submit(request(engine, p, temperature=0.0)) for p in PROMPTS]
    assert [f.result().text for f in futures] == alone
    model, tokenizer = loaded
    static = GenerationEngine("s", model, tokenizer, max_batch=2, continuous=False)  # type: ignore[arg-type]
    try:
        futures = [static.submit(request(static, p, temperature=0.0)) for p in PROMPTS]
        assert [f.result().text for f in futures] == alone
    finally:
        static.close()


def test_cancel_ends_running_and_waiting_requests(loaded: tuple[object, object]) -> None:
    first_text = threading.Event()
    model, tokenizer = loaded
    engine = GenerationEngine(
        "tiny",
        model,  # type: ignore[arg-type]
        tokenizer,  # type: ignore[arg-type]
        max_batch=2,
        streams=lambda entries: first_text.set(),
    )
    try:
        stop_running, stop_waiting = threading.Event(), threading.Event()
        running = [request(engine, p, max_new_tokens=400) for p in PROMPTS[:2]]
        running[0].stream, running[0].should_stop = True, stop_running.is_set
        waiting = request(engine, PROMPTS[2], max_new_tokens=400)
        waiting.should_stop = stop_waiting.is_set
        futures = [engine.submit(r) for r in [*running, waiting]]
        stop_waiting.set()  # both slots are taken: it is still waiting
        assert futures[2].result(timeout=10).finish_reason == "cancelled"
        assert futures[2].result().completion_tokens == 0
        assert first_text.wait(10)
        stop_running.set()
        cancelled = futures[0].result(timeout=10)
        assert cancelled.finish_reason == "cancelled"
        assert 0 < cancelled.completion_tokens < 400
        assert futures[1].result(timeout=60).finish_reason in {"length", "stop"}
    finally:
        engine.close()


def test_stop_string_and_length(engine: GenerationEngine) -> None:
    free = engine.submit(request(engine, PROMPTS[0], seed=3, max_new_tokens=30)).result()
    assert free.finish_reason == "length" and free.completion_tokens == 30
    stop = next(
        free.text[i : i + 2]
        for i in range(3, len(free.text))
        if free.text[i : i + 2].isprintable() and len(free.text[i : i + 2]) == 2
    )
    stopped = engine.submit(
        request(engine, PROMPTS[0], seed=3, max_new_tokens=30, stop=(stop,))
    ).result()
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]


def test_dtype_policy_and_a_bfloat16_entry(tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch

    from jobs.errors import ConfigError
    from workers.backends.causal_lm import resolve_dtype

    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ConfigError, match="dtype 'float8'"):
        resolve_dtype("float8", "cpu")
    directory = make_tiny_deepseek(tmp_path_factory.mktemp("bf16"))
    model, tokenizer = load_causal_lm(directory, device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype is torch.bfloat16  # type: ignore[attr-defined]
    engine = GenerationEngine("bf16", model, tokenizer, max_batch=2)  # type: ignore[arg-type]
    try:
        done = engine.submit(request(engine, "hello", max_new_tokens=5)).result(timeout=30)
    finally:
        engine.close()
    assert done.completion_tokens >= 1


def test_a_dead_engine_is_replaced_by_the_pool(tmp_path: Path) -> None:
    from jobs.registry import ModelFileEntry, ModelKind, ModelRegistry, register
    from workers.pool import ModelPool
    from workers.settings import WorkerSettings

    directory = make_tiny_deepseek(tmp_path / "tiny")
    models_file = tmp_path / "models.json"
    register(models_file, ModelFileEntry(name="t", kind=ModelKind.CAUSAL_LM, path=str(directory)))
    settings = WorkerSettings(device="cpu")  # other tests may leave SEEKQ_DEVICE set
    pool = ModelPool(ModelRegistry.load(models_file, frozenset()), settings)
    try:
        first = pool.causal_lm("t")
        assert pool.causal_lm("t") is first
        first.engine.close()  # as if its thread had died
        assert not first.engine.alive
        second = pool.causal_lm("t")
        assert second is not first and second.engine.alive
        done = second.engine.submit(request(second.engine, "hello", max_new_tokens=3)).result()
        assert done.completion_tokens >= 1
    finally:
        pool.close()


def test_waiting_requests_are_admitted_by_priority_then_arrival(
    loaded: tuple[object, object],
) -> None:
    """One slot, busy: batch lines (priority 2) wait, then a chat request (8) arrives. It
    runs next, ahead of lines that reached the engine before it; the lines keep their order."""
    model, tokenizer = loaded
    engine = GenerationEngine("one", model, tokenizer, max_batch=1)  # type: ignore[arg-type]
    finished: list[str] = []
    try:
        busy = request(engine, PROMPTS[0], seed=3, max_new_tokens=30)  # runs all 30 steps
        lines = [request(engine, PROMPTS[1], max_new_tokens=4) for _ in range(3)]
        chat = request(engine, PROMPTS[2], max_new_tokens=4)
        for name, req, priority in [
            ("busy", busy, 5),
            *[(f"line-{i}", r, 2) for i, r in enumerate(lines)],
            ("chat", chat, 8),
        ]:
            req.key, req.priority = name, priority
            req.future.add_done_callback(lambda _f, n=name: finished.append(n))  # type: ignore[misc]
            engine.submit(req)
            while name == "busy" and engine.running == 0:  # it holds the slot first
                time.sleep(0.001)
        chat.future.result(timeout=60)
        for r in lines:
            r.future.result(timeout=60)
        assert finished == ["busy", "chat", "line-0", "line-1", "line-2"]
    finally:
        engine.close()
