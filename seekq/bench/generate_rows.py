"""G1, G2 and G3: `generate` jobs on the tiny random DeepSeek-V3 MoE (`seekq models
make-tiny`'s model) against plain transformers `generate` in this process.

- G1  tokens/s of concurrent generate jobs through the queue (a `seekq worker -Q
      gpu.generate`: the threads pool and the continuous-batching engine) ÷ the same
      requests as sequential batch-1 `model.generate` calls;
- G2  the engine's continuous batching ÷ its static batching (as `generate` batches: admits
      only into an empty batch, finished rows hold their slot to the batch's end), in this
      process on the same loaded model, output lengths 16-128; G2-static (information
      only) against `generate` on padded batches;
- G3  time to the first streamed token through the queue (submit, then XREAD on the job's
      Redis stream) minus a direct prefill + first token in this process.

Random weights: EOS can come early, so every figure counts the tokens each side really
produced (EOS included, as the engine's `completion_tokens` does), never the requested
ones. Sampling is temperature 1.0 with top-k 50 (transformers' default), which keeps EOS
rare (these random weights rank it low); the rows say how many requests still ended at EOS.
"""

import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.status import JobStatus
from jobs.streams import StreamEntry, stream_key
from seekq.bench.embed_rows import synthetic_texts
from seekq.bench.harness import (
    TIMEOUT_S,
    Harness,
    Sizes,
    check_succeeded,
    generate_worker,
    wait_terminal,
)
from seekq.bench.report import Row
from seekq.embedded import TINY_MODEL

SEED = 20240607
TEMPERATURE = 1.0
TOP_K = 50
MIXED_BATCH = 16  # G2: the engine's max_batch, and the peer's padded batch
MIXED_TOKENS = (16, 128)  # G2: each request's max_new_tokens, drawn uniformly
WARM_REQUESTS = 4  # untimed requests per side before G1 and G2
FIRST_TOKEN_WARMUP = 3  # G3: untimed requests per side
FIRST_TOKEN_NEW = 4  # G3: max_new_tokens of each request (only the first is timed)
XREAD_BLOCK_MS = 1000  # below the context's 5 s Redis socket timeout


@dataclass(frozen=True)
class GenRun:
    """One timed run of one side."""

    seconds: float
    tokens: int  # completion tokens really produced (EOS counted)
    requested: int  # the sum of max_new_tokens
    early: int  # requests that ended at EOS before max_new_tokens
    batch_sizes: list[int] = field(default_factory=list)  # engine: running rows per step

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def mean_batch(self) -> float:
        return statistics.mean(self.batch_sizes) if self.batch_sizes else 0.0


@dataclass(frozen=True)
class Loaded:
    """The tiny model in this process, with the worker's torch thread count."""

    model: Any
    tokenizer: Any


def g_rows(harness: Harness, sizes: Sizes, status: Callable[[str], Any]) -> list[Row]:
    """G1 and G3 with a generate worker running, then G2 in this process without it.
    `status(text)` is a context manager that shows what runs."""
    loaded = load_tiny(harness)
    with generate_worker(harness.stack, sizes.generate_jobs):
        with status("G1: generate jobs through the queue vs sequential HF generate..."):
            g1 = g1_throughput(harness, sizes, loaded)
        with status("G3: first streamed token through the queue vs direct..."):
            g3 = g3_first_token(harness, sizes, loaded)
    with status("G2: continuous vs static batching, outputs of 16-128 tokens..."):
        g2 = g2_batching(harness, sizes, loaded)
    return [g1, *g2, g3]


def load_tiny(harness: Harness) -> Loaded:
    import torch

    from workers.backends.causal_lm import load_causal_lm

    torch.set_num_threads(harness.threads)
    model, tokenizer = load_causal_lm(harness.tiny_model, device="cpu")
    return Loaded(model, tokenizer)


def alternate_best(
    harness: Harness, sides: dict[str, Callable[[], GenRun]], rounds: int
) -> dict[str, GenRun]:
    """Rounds alternating the sides, each after a settle; the fastest round of each."""
    runs: dict[str, list[GenRun]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            harness.settle()
            runs[name].append(side())
    return {name: max(found, key=lambda run: run.tokens_per_s) for name, found in runs.items()}


# ---------------------------------------------------------------- G1: throughput


def g1_throughput(harness: Harness, sizes: Sizes, loaded: Loaded) -> Row:
    prompts = synthetic_texts(sizes.generate_jobs, SEED)
    seeds = list(range(len(prompts)))
    tokens = [sizes.generate_tokens] * len(prompts)
    queue_generate(harness, prompts[:WARM_REQUESTS], seeds, tokens)
    hf_sequential(loaded, prompts[:1], seeds, tokens)
    sides = {
        "queue": lambda: queue_generate(harness, prompts, seeds, tokens),
        "hf": lambda: hf_sequential(loaded, prompts, seeds, tokens),
    }
    best = alternate_best(harness, sides, sizes.generate_rounds)
    queue, hf = best["queue"], best["hf"]
    ratio = queue.tokens_per_s / hf.tokens_per_s
    return Row(
        id="G1",
        what=(
            f"{len(prompts)} concurrent generate jobs (tiny DeepSeek-V3 MoE, max_new_tokens "
            f"{sizes.generate_tokens}, temperature {TEMPERATURE}, top-k {TOP_K}) through "
            f"the queue, best of {sizes.generate_rounds}; tokens produced: queue "
            f"{queue.tokens:,} ({queue.early} ended at EOS), peer {hf.tokens:,} "
            f"({hf.early} at EOS) of {queue.requested:,} requested"
        ),
        seekq=f"{queue.tokens_per_s:,.0f} tok/s",
        peer=f"{hf.tokens_per_s:,.0f} tok/s (HF generate in-process, batch 1, one at a time)",
        ratio=f"{ratio:.2f}x",
        target="≥ 5x",
        passed=ratio >= 5.0,
    )


def generate_spec(prompt: str, seed: int, max_new_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": TINY_MODEL,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "seed": seed,
        **extra,
    }


def queue_generate(
    harness: Harness, prompts: Sequence[str], seeds: Sequence[int], tokens: Sequence[int]
) -> GenRun:
    """All jobs submitted at once from this process, timed until every row is terminal in
    SQL; the tokens are the results' completion_tokens (read after the clock stops)."""
    started = time.perf_counter()
    ids = [
        harness.submit("generate", generate_spec(prompt, seed, count))
        for prompt, seed, count in zip(prompts, seeds, tokens, strict=False)
    ]
    wait_terminal(harness, ids)
    elapsed = time.perf_counter() - started
    check_succeeded(harness, ids)
    results = [harness.context.service.get(harness.who, job_id).result or {} for job_id in ids]
    return GenRun(
        seconds=elapsed,
        tokens=sum(int(r["completion_tokens"]) for r in results),
        requested=sum(tokens[: len(ids)]),
        early=sum(r["finish_reason"] == "stop" for r in results),
    )


def hf_sequential(
    loaded: Loaded, prompts: Sequence[str], seeds: Sequence[int], tokens: Sequence[int]
) -> GenRun:
    """The peer: one `model.generate` per prompt (batch 1, tokenizing included), one after
    the other, the same sampling; the tokens each really produced."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    eos = model.generation_config.eos_token_id
    produced = early = 0
    started = time.perf_counter()
    for prompt, seed, count in zip(prompts, seeds, tokens, strict=False):
        inputs = tokenizer(prompt, return_tensors="pt")
        torch.manual_seed(seed)
        out = model.generate(**inputs, **_hf_sampling(count))
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        produced += len(new)
        early += eos in new
    elapsed = time.perf_counter() - started
    return GenRun(elapsed, produced, sum(tokens[: len(prompts)]), early)


def _hf_sampling(max_new_tokens: int) -> dict[str, Any]:
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": True,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "top_p": 1.0,
    }


# ---------------------------------------------------------------- G2: batching


class StepSizes:
    """EngineMetrics that keeps the running batch size of every decoding step."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def observe_experts(self, model: str, counts: Any, layer_ids: list[int]) -> None:
        pass

    def observe_step(self, model: str, batch_size: int) -> None:
        self.sizes.append(batch_size)

    def observe_request(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        first_token_s: float | None,
        finish_reason: str,
    ) -> None:
        pass


def g2_batching(harness: Harness, sizes: Sizes, loaded: Loaded) -> list[Row]:
    prompts = synthetic_texts(sizes.mixed_requests, SEED + 1)
    rng = random.Random(SEED)  # noqa: S311 (benchmark lengths, not secrets)
    tokens = [rng.randint(*MIXED_TOKENS) for _ in prompts]
    seeds = list(range(len(prompts)))
    warm = WARM_REQUESTS
    engine_generate(loaded, prompts[:warm], seeds, tokens, continuous=True)
    hf_static(loaded, prompts[:warm], seeds, tokens)
    sides = {
        "continuous": lambda: engine_generate(loaded, prompts, seeds, tokens, continuous=True),
        "static": lambda: engine_generate(loaded, prompts, seeds, tokens, continuous=False),
        "hf": lambda: hf_static(loaded, prompts, seeds, tokens),
    }
    best = alternate_best(harness, sides, sizes.generate_rounds)
    return [
        _g2_row(best["continuous"], best["static"], sizes),
        _g2_static_row(best["continuous"], best["hf"]),
    ]


def _g2_row(continuous: GenRun, static: GenRun, sizes: Sizes) -> Row:
    ratio = continuous.tokens_per_s / static.tokens_per_s
    low, high = MIXED_TOKENS
    return Row(
        id="G2",
        what=(
            f"{sizes.mixed_requests} requests submitted together, max_new_tokens drawn "
            f"uniformly from {low}-{high} (seeded), max_batch {MIXED_BATCH}, in-process "
            f"GenerationEngine on one loaded model, continuous vs static (as generate "
            f"batches: admits only into an empty batch, finished rows hold their slot until "
            f"the batch's longest request ends), best of {sizes.generate_rounds}; tokens "
            f"produced {continuous.tokens:,} / {static.tokens:,} of {continuous.requested:,} "
            f"requested ({continuous.early} / {static.early} ended at EOS); mean running "
            f"batch {continuous.mean_batch:.1f} / {static.mean_batch:.1f}"
        ),
        seekq=f"{continuous.tokens_per_s:,.0f} tok/s (continuous)",
        peer=f"{static.tokens_per_s:,.0f} tok/s (static)",
        ratio=f"{ratio:.2f}x",
        target="≥ 1.4x",
        passed=ratio >= 1.4,
    )


def _g2_static_row(continuous: GenRun, hf: GenRun) -> Row:
    ratio = continuous.tokens_per_s / hf.tokens_per_s
    return Row(
        id="G2-static",
        what=(
            f"G2's continuous engine vs plain transformers: generate on padded batches of "
            f"{MIXED_BATCH}, each run to its longest request; only each request's own "
            f"max_new_tokens counted ({hf.tokens:,} tokens, {hf.early} ended at EOS)"
        ),
        seekq=f"{continuous.tokens_per_s:,.0f} tok/s",
        peer=f"{hf.tokens_per_s:,.0f} tok/s (HF generate, batches of {MIXED_BATCH})",
        ratio=f"{ratio:.2f}x",
        target="-",
        passed=None,
    )


def engine_generate(
    loaded: Loaded,
    prompts: Sequence[str],
    seeds: Sequence[int],
    tokens: Sequence[int],
    *,
    continuous: bool,
) -> GenRun:
    """A fresh engine on the loaded model; every request submitted at once, timed until the
    last finishes. The engine thread starts and the prompts are tokenized outside the
    clock. All requests must be waiting before the engine's first admission, or static
    batching would start on a partial batch and hold it to its end: the first step's
    batch is checked, and a run that missed it is run again."""
    from workers.engine import GenerationEngine

    ids = [list(loaded.tokenizer(prompt)["input_ids"]) for prompt in prompts]
    full = min(MIXED_BATCH, len(ids))
    for _ in range(3):
        steps = StepSizes()
        engine = GenerationEngine(
            "bench",
            loaded.model,
            loaded.tokenizer,
            max_batch=MIXED_BATCH,
            continuous=continuous,
            metrics=steps,
        )
        try:
            elapsed, done = _timed_requests(engine, ids, seeds, tokens)
        finally:
            engine.close()
        if not steps.sizes or steps.sizes[0] >= full:
            break
    else:
        raise RuntimeError(f"the engine's first batch had {steps.sizes[0]} of {full} requests")
    return GenRun(
        seconds=elapsed,
        tokens=sum(g.completion_tokens for g in done),
        requested=sum(tokens[: len(prompts)]),
        early=sum(g.finish_reason == "stop" for g in done),
        batch_sizes=steps.sizes,
    )


def _timed_requests(
    engine: Any, ids: Sequence[list[int]], seeds: Sequence[int], tokens: Sequence[int]
) -> tuple[float, list[Any]]:
    """Submits every request, then waits for all. While submitting, this thread keeps the
    GIL (a long switch interval; submitting never blocks), so the engine thread, woken by
    the first request, admits only once all are queued."""
    from workers.engine import Request
    from workers.sampling import SamplingParams

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        started = time.perf_counter()
        futures = []
        for index, (prompt_ids, seed, count) in enumerate(zip(ids, seeds, tokens, strict=False)):
            params = SamplingParams(count, temperature=TEMPERATURE, top_k=TOP_K, seed=seed)
            futures.append(engine.submit(Request(f"bench-{index}", prompt_ids, params)))
    finally:
        sys.setswitchinterval(interval)
    done = [future.result(timeout=TIMEOUT_S) for future in futures]
    return time.perf_counter() - started, done


def hf_static(
    loaded: Loaded, prompts: Sequence[str], seeds: Sequence[int], tokens: Sequence[int]
) -> GenRun:
    """What plain transformers gives: `generate` on left-padded batches of MIXED_BATCH in
    order, each to its longest request's max_new_tokens; a request's tokens count up to
    its own max_new_tokens (and its EOS). Tokenized outside the clock, as for the engine."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    eos = model.generation_config.eos_token_id
    starts = range(0, len(prompts), MIXED_BATCH)
    batches = [
        tokenizer(list(prompts[i : i + MIXED_BATCH]), return_tensors="pt", padding=True)
        for i in starts
    ]
    produced = early = 0
    started = time.perf_counter()
    for start, inputs in zip(starts, batches, strict=True):
        wanted = list(tokens[start : start + len(inputs["input_ids"])])
        torch.manual_seed(seeds[start])
        out = model.generate(**inputs, **_hf_sampling(max(wanted)))
        for row, count in zip(out[:, inputs["input_ids"].shape[1] :].tolist(), wanted, strict=True):
            mine = row[:count]
            if eos in mine:
                produced += mine.index(eos) + 1
                early += 1
            else:
                produced += count
    elapsed = time.perf_counter() - started
    return GenRun(elapsed, produced, sum(tokens[: len(prompts)]), early)


# ---------------------------------------------------------------- G3: first token


@dataclass
class FirstTokens:
    queue_ms: list[float] = field(default_factory=list)
    direct_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)  # in-process engine, stream entry
    worker_ms: list[float] = field(default_factory=list)  # the worker engine's own TTFT


def g3_first_token(harness: Harness, sizes: Sizes, loaded: Loaded) -> Row:
    """Greedy decoding, so every side makes the same first token, on prompts whose first
    token is whole text (a stream entry is written only for non-empty text); requests
    one at a time, the three sides in turn."""
    prompts = clean_first_token_prompts(loaded, sizes.first_tokens + FIRST_TOKEN_WARMUP)
    found = FirstTokens()
    with InProcessStreams(loaded) as engine:
        for index, prompt in enumerate(prompts):
            timed = index >= FIRST_TOKEN_WARMUP
            if index == FIRST_TOKEN_WARMUP:
                harness.settle()
            queue_ms, worker_ms = queue_first_token_ms(harness, prompt)
            direct_ms = direct_first_token_ms(loaded, prompt)
            engine_ms = engine.first_token_ms(prompt, index)
            if timed:
                found.queue_ms.append(queue_ms)
                found.worker_ms.append(worker_ms)
                found.direct_ms.append(direct_ms)
                found.engine_ms.append(engine_ms)
    return _g3_row(found)


def _g3_row(found: FirstTokens) -> Row:
    queue, direct = p50_p90(found.queue_ms), p50_p90(found.direct_ms)
    engine, worker = p50_p90(found.engine_ms), p50_p90(found.worker_ms)
    gap = queue[0] - direct[0]
    return Row(
        id="G3",
        what=(
            f"time to first streamed token, {len(found.queue_ms)} sequential greedy requests "
            "per side, alternating: submit → first entry read (XREAD BLOCK) from the job's "
            "Redis stream, vs tokenize + prefill + argmax + decode in-process"
        ),
        seekq=(
            f"p50 {queue[0]:.1f} ms / p90 {queue[1]:.1f} ms (worker engine's own TTFT p50 "
            f"{worker[0]:.1f} ms)"
        ),
        peer=(
            f"p50 {direct[0]:.1f} ms / p90 {direct[1]:.1f} ms (direct prefill; in-process "
            f"engine p50 {engine[0]:.1f} ms / p90 {engine[1]:.1f} ms)"
        ),
        ratio=f"Δp50 {gap:+.1f} ms (vs in-process engine {queue[0] - engine[0]:+.1f} ms)",
        target="Δp50 ≤ 5 ms",
        passed=gap <= 5.0,
    )


def clean_first_token_prompts(loaded: Loaded, count: int) -> list[str]:
    """`count` synthetic prompts whose greedy first token is neither EOS nor a piece of
    a character: its text alone is the stream's first entry."""
    prompts: list[str] = []
    seed = SEED + 2
    while len(prompts) < count:
        for prompt in synthetic_texts(count, seed):
            if len(prompts) < count and _first_token_is_text(loaded, prompt):
                prompts.append(prompt)
        seed += 1
    return prompts


def _first_token_is_text(loaded: Loaded, prompt: str) -> bool:
    token, text = _prefill_first_token(loaded, prompt)
    eos = loaded.model.generation_config.eos_token_id
    return token != eos and bool(text) and "\ufffd" not in text


def _prefill_first_token(loaded: Loaded, prompt: str) -> tuple[int, str]:
    import torch

    with torch.inference_mode():
        inputs = loaded.tokenizer(prompt, return_tensors="pt")
        logits = loaded.model(**inputs, use_cache=True, logits_to_keep=1).logits
        token = int(logits[0, -1].argmax())
        return token, str(loaded.tokenizer.decode([token], skip_special_tokens=True))


def direct_first_token_ms(loaded: Loaded, prompt: str) -> float:
    """The peer: the least a caller holding the model does for a first token of text."""
    started = time.perf_counter()
    _prefill_first_token(loaded, prompt)
    return (time.perf_counter() - started) * 1000


def queue_first_token_ms(harness: Harness, prompt: str) -> tuple[float, float]:
    """Submit with `stream: true`, then XREAD BLOCK on the job's stream (from its start)
    until the first entry arrives; the job is then waited out, untimed. Also returns the
    worker engine's own first-token time from the result."""
    redis = harness.context.redis
    deadline = time.monotonic() + TIMEOUT_S
    started = time.perf_counter()
    job_id = harness.submit(
        "generate",
        {
            "model": TINY_MODEL,
            "prompt": prompt,
            "max_new_tokens": FIRST_TOKEN_NEW,
            "temperature": 0.0,
            "stream": True,
        },
    )
    key = stream_key(job_id)
    while not redis.xread({key: "0-0"}, count=1, block=XREAD_BLOCK_MS):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stream entry for job {job_id} after {TIMEOUT_S:.0f}s")
    elapsed_ms = (time.perf_counter() - started) * 1000
    view = harness.context.service.wait(harness.who, job_id, TIMEOUT_S)
    if view.status != JobStatus.SUCCEEDED.value or not view.result:
        raise RuntimeError(f"generate job ended {view.status}: {view.error}")
    return elapsed_ms, float(view.result["timing"]["first_token_ms"])


class InProcessStreams:
    """A GenerationEngine in this process whose stream writes are timed: the engine's own
    share of the queue's first-token time, without the queue."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.engine: Any = None
        self._first: dict[str, float] = {}
        self._arrived: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "InProcessStreams":
        from workers.engine import GenerationEngine

        self.engine = GenerationEngine(
            "bench-g3", self.loaded.model, self.loaded.tokenizer, streams=self._write
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.engine.close()

    def _write(self, entries: list[StreamEntry]) -> None:
        now = time.perf_counter()
        with self._lock:
            for entry in entries:
                if entry.job_id in self._arrived and entry.job_id not in self._first:
                    self._first[entry.job_id] = now
                    self._arrived[entry.job_id].set()

    def first_token_ms(self, prompt: str, index: int) -> float:
        from workers.engine import Request
        from workers.sampling import SamplingParams

        key = f"g3-{index}"
        arrived = threading.Event()
        with self._lock:
            self._arrived[key] = arrived
        started = time.perf_counter()
        ids = list(self.loaded.tokenizer(prompt)["input_ids"])
        params = SamplingParams(FIRST_TOKEN_NEW, temperature=0.0)
        future = self.engine.submit(Request(key, ids, params, stream=True))
        if not arrived.wait(TIMEOUT_S):
            raise TimeoutError("no stream entry from the in-process engine")
        future.result(timeout=TIMEOUT_S)
        return (self._first[key] - started) * 1000


def p50_p90(values: Sequence[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), cuts[8]
