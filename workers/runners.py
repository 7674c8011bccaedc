"""Runners: plain functions from a (masked) spec and the model pool to a result."""

import base64
from collections.abc import Callable, Mapping

from pydantic import BaseModel

from jobs.catalog import CATALOG, JobKind
from jobs.specs import EmbedResult, EmbedSpec, PingResult, PingSpec
from workers.pool import ModelPool

ShouldStop = Callable[[], bool]
Runner = Callable[[BaseModel, ModelPool, ShouldStop], BaseModel]


def run_embed(spec: BaseModel, pool: ModelPool, should_stop: ShouldStop) -> BaseModel:
    assert isinstance(spec, EmbedSpec)
    embedder = pool.embedder(spec.model)
    out = embedder.embed(spec.input, spec.normalize, should_stop)
    little_endian = out.vectors.astype("<f4", copy=False)
    return EmbedResult(
        model=spec.model,
        dimensions=embedder.dimensions,
        vectors_base64=[base64.b64encode(row.tobytes()).decode() for row in little_endian],
        prompt_tokens=sum(out.token_counts),
        token_counts=out.token_counts,
    )


def run_ping(spec: BaseModel, pool: ModelPool, should_stop: ShouldStop) -> BaseModel:
    assert isinstance(spec, PingSpec)
    return PingResult(payload=spec.payload)


RUNNERS: Mapping[JobKind, Runner] = {
    JobKind.EMBED: run_embed,
    JobKind.PING: run_ping,
}

# Every kind in the catalog has a runner, checked when the worker package is imported.
assert set(RUNNERS) == set(CATALOG), f"runners missing for {set(CATALOG) - set(RUNNERS)}"
