"""Runners: plain functions from a (masked) spec and the model pool to a result."""

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from jobs.catalog import CATALOG, JobKind
from jobs.errors import JobCancelledError
from jobs.prompts import check_context
from jobs.registry import split_model
from jobs.specs import (
    EmbedResult,
    EmbedSpec,
    GenerateResult,
    GenerateSpec,
    GenerateTiming,
    PingResult,
    PingSpec,
)
from jobs.streams import StreamEntry
from workers.engine import Generation, Request
from workers.pool import ModelPool
from workers.sampling import SamplingParams

ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    attempt: int
    # True once the job's cancel is requested or its attempt lost the job; cheap to call.
    should_stop: ShouldStop
    tenant_id: str = ""
    priority: int = 5  # 0 lowest, 9 highest: the generation engine admits higher first


Runner = Callable[[BaseModel, ModelPool, RunningJob], BaseModel]


def run_embed(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    assert isinstance(spec, EmbedSpec)
    embedder = pool.embedder(spec.model)
    out = embedder.embed(spec.input, spec.normalize, job.should_stop)
    little_endian = out.vectors.astype("<f4", copy=False)
    return EmbedResult(
        model=spec.model,
        dimensions=embedder.dimensions,
        vectors_base64=[base64.b64encode(row.tobytes()).decode() for row in little_endian],
        prompt_tokens=sum(out.token_counts),
        token_counts=out.token_counts,
    )


def run_generate(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    """Hand the request to the model's batching engine and wait for it to finish."""
    assert isinstance(spec, GenerateSpec)
    base, adapter = split_model(spec.model)
    lm = pool.causal_lm(base)
    prompt_ids = lm.encode(spec)
    check_context(len(prompt_ids), spec.max_new_tokens, lm.context_length)
    # A fine-tuned model: this tenant's adapter, loaded onto the base by the engine.
    ref = pool.adapter(job.tenant_id, spec.model) if adapter is not None else None
    if spec.stream and job.attempt > 1 and pool.streams is not None:
        pool.streams([StreamEntry(job.job_id, restart=job.attempt)])
    params = sampling_params(spec)
    request = Request(
        job.job_id,
        prompt_ids,
        params,
        spec.stream,
        job.should_stop,
        adapter=ref,
        priority=job.priority,
    )
    result = generate_result(spec.model, lm.engine.submit(request).result())
    if result.finish_reason == "cancelled":
        raise JobCancelledError("cancelled while generating", result.model_dump(mode="json"))
    return result


def sampling_params(spec: GenerateSpec) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        repetition_penalty=spec.repetition_penalty,
        seed=spec.seed,
        stop=tuple(spec.stop),
        banned_words=tuple(spec.banned_words),
    )


def generate_result(model: str, generation: Generation) -> GenerateResult:
    counts = generation.expert_counts
    return GenerateResult(
        model=model,
        text=generation.text,
        finish_reason=generation.finish_reason,  # type: ignore[arg-type]
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        timing=GenerateTiming(
            queued_ms=generation.queued_s * 1000,
            first_token_ms=generation.first_token_s * 1000,
            total_ms=generation.total_s * 1000,
        ),
        expert_counts={str(k): v for k, v in counts.items()} if counts is not None else None,
    )


def run_ping(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    assert isinstance(spec, PingSpec)
    deadline = time.monotonic() + spec.hold_s
    while time.monotonic() < deadline:
        if job.should_stop() and not spec.ignore_stop:
            raise JobCancelledError("ping stopped: asked to (cancel, lost lease, time limit)")
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return PingResult(payload=spec.payload)


def run_index(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    from workers.indexing import run_index as run

    return run(spec, pool, job)


def run_search(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    from workers.searching import run_search as run

    return run(spec, pool, job)


def run_finetune(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    from workers.finetuning import run_finetune as run

    return run(spec, pool, job)


def run_batch(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    from workers.batching import run_batch as run

    return run(spec, pool, job)


RUNNERS: Mapping[JobKind, Runner] = {
    JobKind.EMBED: run_embed,
    JobKind.GENERATE: run_generate,
    JobKind.INDEX: run_index,
    JobKind.SEARCH: run_search,
    JobKind.FINETUNE: run_finetune,
    JobKind.BATCH: run_batch,
    JobKind.PING: run_ping,
}

# Every kind in the catalog has a runner, checked when the worker package is imported.
assert set(RUNNERS) == set(CATALOG), f"runners missing for {set(CATALOG) - set(RUNNERS)}"
