"""Q1 and Q2: seekq's `ping` jobs against a bare Celery no-op on the same Redis."""

import statistics
import time
from collections.abc import Sequence

from jobs.status import JobStatus
from seekq.bench.harness import (
    TIMEOUT_S,
    WARMUP,
    Harness,
    Sizes,
    check_succeeded,
    wait_terminal,
)
from seekq.bench.report import Row

LATENCY_BLOCK = 10  # Q2 alternates seekq and the peer in blocks of this many calls

# ---------------------------------------------------------------- Q1: throughput


def q1_throughput(harness: Harness, sizes: Sizes) -> Row:
    """One seekq burst of N between two bare bursts of N (averaged): a drift in the
    machine's load over the run then weighs on both sides alike."""
    seekq_ping_burst(harness, WARMUP)
    bare_noop_burst(WARMUP)
    harness.settle()
    before = bare_noop_burst(sizes.pings)
    harness.settle()
    seekq = seekq_ping_burst(harness, sizes.pings)
    harness.settle()
    after = bare_noop_burst(sizes.pings)
    bare = (before + after) / 2
    return Row(
        id="Q1",
        what=f"tiny-job throughput, bursts of {sizes.pings}",
        seekq=f"{seekq:,.0f} jobs/s",
        peer=f"{bare:,.0f} tasks/s (bare Celery no-op; {before:,.0f} before, {after:,.0f} after)",
        ratio=f"{seekq / bare:.2f}x",
        target="≥ 0.70x",
        passed=seekq / bare >= 0.7,
    )


def seekq_ping_burst(harness: Harness, n: int) -> float:
    """Jobs/s: N pings submitted in-process, timed until all are terminal in SQL."""
    started = time.perf_counter()
    ids = [harness.submit("ping", {"payload": "x"}) for _ in range(n)]
    wait_terminal(harness, ids)
    elapsed = time.perf_counter() - started
    check_succeeded(harness, ids)
    return n / elapsed


def bare_noop_burst(n: int) -> float:
    """Tasks/s: N `noop.delay()`, then `.get()` on each."""
    from seekq.bench_peer import noop

    started = time.perf_counter()
    results = [noop.delay() for _ in range(n)]
    for result in results:
        result.get(timeout=TIMEOUT_S)
    return n / (time.perf_counter() - started)


# ---------------------------------------------------------------- Q2: latency


def q2_latency(harness: Harness, sizes: Sizes) -> Row:
    seekq_ms, bare_ms = interleaved_latencies(harness, sizes.latencies)
    seekq, bare = percentiles(seekq_ms), percentiles(bare_ms)
    gap = seekq[0] - bare[0]
    return Row(
        id="Q2",
        what=f"submit→result latency, sequential, {len(seekq_ms)} calls each",
        seekq=f"p50 {seekq[0]:.1f} ms / p99 {seekq[1]:.1f} ms",
        peer=f"p50 {bare[0]:.1f} ms / p99 {bare[1]:.1f} ms (bare delay().get())",
        ratio=f"Δp50 {gap:+.1f} ms",
        target="Δp50 ≤ 2 ms",
        passed=gap <= 2.0,
    )


def interleaved_latencies(harness: Harness, calls: int) -> tuple[list[float], list[float]]:
    """Seekq and peer latencies (ms), alternating blocks so both see the same noise."""
    for _ in range(WARMUP):
        seekq_latency_ms(harness)
        bare_latency_ms()
    seekq_ms: list[float] = []
    bare_ms: list[float] = []
    for _ in range(max(1, calls // LATENCY_BLOCK)):
        seekq_ms += [seekq_latency_ms(harness) for _ in range(LATENCY_BLOCK)]
        bare_ms += [bare_latency_ms() for _ in range(LATENCY_BLOCK)]
    return seekq_ms, bare_ms


def seekq_latency_ms(harness: Harness) -> float:
    started = time.perf_counter()
    job_id = harness.submit("ping", {"payload": "x"})
    view = harness.context.service.wait(harness.who, job_id, TIMEOUT_S)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if view.status != JobStatus.SUCCEEDED.value:
        raise RuntimeError(f"ping job ended {view.status}: {view.error}")
    return elapsed_ms


def bare_latency_ms() -> float:
    from seekq.bench_peer import noop

    started = time.perf_counter()
    noop.delay().get(timeout=TIMEOUT_S)
    return (time.perf_counter() - started) * 1000


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """p50 and p99."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]
