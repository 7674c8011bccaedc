"""Iteration-level (continuous) batching of generate requests on one causal LM.

One engine thread per loaded model runs the decoding loop; Celery task threads hand it
requests and wait on a Future. Each iteration the engine
  1. admits waiting requests into free slots (up to `max_batch` sequences): their prompts
     are prefilled together (left-padded), and their KV cache is merged into the running
     batch's by left-padding the shorter one;
  2. picks one token for every running sequence (per-sequence sampling parameters);
  3. retires finished sequences (EOS, a stop string, max_new_tokens, a cancel request),
     which frees their slots at once, and trims padding no sequence needs any more;
  4. runs one decoding step for the sequences still running.
A request may name a LoRA adapter (`Request.adapter`): it is loaded onto the base model at
admission, between steps (workers/adapters.py keeps an LRU of up to `max_adapters`), and
every forward pass names each row's adapter, so rows of different adapters and of the base
model share the batch. An adapter that cannot be loaded fails its own request only.
With `continuous=False` it batches statically, as `generate` does: it admits only into
an empty batch, and finished rows keep their slot (computed, their output ignored) until
the batch's longest request is done. Kept as the G2 benchmark's peer.

On the CPU the engine thread runs torch with `threads` intra-op threads (default 1):
torch's OpenMP parallelism from a second Python thread was measured ~2.5x slower than
one thread for the tiny MoE on 2 cores (docs/design.md).

transformers' own continuous batching (`generate_batch`) cannot hold DeepSeek-V3's MLA
cache (see docs/design.md), hence this loop, written against the public model forward
(`cache=`, `position_ids`, `attention_mask`) and `DynamicCache`.
"""

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from jobs.streams import StreamEntry
from workers.adapters import BASE_ADAPTER, AdapterLoadError, AdapterRef, ResidentAdapters
from workers.experts import ExpertCounter
from workers.sampling import (
    MAX_GUARD_TRIES,
    BannedWordGuard,
    IncrementalDecoder,
    RowProcessors,
    SamplingParams,
    StopMatcher,
    filter_logits,
    sample_rows,
)

log = logging.getLogger(__name__)


class EngineMetrics(Protocol):
    def observe_experts(self, model: str, counts: Any, layer_ids: list[int]) -> None: ...
    def observe_step(self, model: str, batch_size: int) -> None: ...
    def observe_request(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        first_token_s: float | None,
        finish_reason: str,
    ) -> None: ...


@dataclass
class Request:
    key: str  # the job id: names the token stream
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool = False
    should_stop: Callable[[], bool] = lambda: False
    adapter: AdapterRef | None = None  # a LoRA adapter on the base model; None: the base
    # 0 lowest, 9 highest: waiting requests are admitted highest first, then oldest first
    # (an interactive chat ahead of batch lines that reached the engine before it).
    priority: int = 5
    future: "Future[Generation]" = field(default_factory=Future)
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int
    completion_tokens: int
    queued_s: float
    first_token_s: float
    total_s: float
    # {MoE layer index: tokens per expert}; None for dense models.
    expert_counts: dict[int, list[int]] | None


class Sequence:
    """One running request: its tokens, text, sampling state and stop checks."""

    def __init__(self, request: Request, engine: "GenerationEngine") -> None:
        self.request = request
        self.params = request.params
        self.adapter = request.adapter.key if request.adapter else BASE_ADAPTER
        self.history = list(request.prompt_ids)  # prompt + generated, for penalties
        self.generated = 0
        self.text = ""
        self.streamed = 0  # characters of text already written to the stream
        self.decoder = IncrementalDecoder(engine.decode)
        self.stops = StopMatcher(self.params.stop)
        self.guard = BannedWordGuard(self.params.banned_words) if self.params.banned_words else None
        self.processors = RowProcessors(self.params, engine.tokenizer, sorted(engine.eos_ids))
        seed = self.params.seed if self.params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator(device=engine.device).manual_seed(seed)
        self.prefilled_at = 0.0
        self.first_token_at = 0.0
        self.finish_reason: str | None = None
        self.resolved = False  # its Future is set (static batching keeps the row running)

    def add(self, token: int, delta: str, eos: bool) -> None:
        """Record a chosen token and decide whether the sequence is done."""
        self.generated += 1
        self.history.append(token)
        if not self.first_token_at:
            self.first_token_at = time.perf_counter()
        last = eos or self.generated >= self.params.max_new_tokens
        if last:
            delta += self.decoder.flush()  # an incomplete character at the very end
        before = len(self.text)
        self.text += delta
        cut = self.stops.find(self.text, before)
        if cut >= 0:
            self.text = self.text[:cut]
        if cut >= 0 or eos:
            self.finish_reason = "stop"
        elif last:
            self.finish_reason = "length"

    def stream_delta(self) -> str:
        """Text safe to stream now (all of it once finished)."""
        held = 0 if self.finish_reason else self.stops.held_back(self.text)
        end = len(self.text) - held
        delta = self.text[self.streamed : end] if end > self.streamed else ""
        self.streamed = max(self.streamed, end)
        return delta


@dataclass
class Batch:
    """The running sequences and their tensors, row-aligned."""

    sequences: list[Sequence]
    cache: DynamicCache
    mask: torch.Tensor  # (rows, cached positions + 1 for the next token)
    logits: torch.Tensor  # (rows, vocab): next-token logits
    experts: torch.Tensor | None  # (rows, MoE layers, experts): tokens routed so far

    def __len__(self) -> int:
        return len(self.sequences)

    def merge(self, other: "Batch") -> "Batch":
        width = max(self.mask.shape[1], other.mask.shape[1])
        positions = width - 1  # cached positions; the last mask column is the next token
        cache = DynamicCache()
        pairs = zip(self.cache.layers, other.cache.layers, strict=True)
        for index, (mine, theirs) in enumerate(pairs):
            (my_keys, my_values), (their_keys, their_values) = _kv(mine), _kv(theirs)
            keys = [_pad_left(my_keys, positions), _pad_left(their_keys, positions)]
            values = [_pad_left(my_values, positions), _pad_left(their_values, positions)]
            cache.update(torch.cat(keys), torch.cat(values), index)
        mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)])
        experts = _cat_or_none(self.experts, other.experts)
        logits = torch.cat([self.logits, other.logits])
        return Batch(self.sequences + other.sequences, cache, mask, logits, experts)

    def keep(self, rows: list[int]) -> "Batch":
        """Only `rows`, with leading padding columns that no kept row uses cut off."""
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0].item())
        cache = DynamicCache()
        for layer_index, layer in enumerate(self.cache.layers):
            keys, values = _kv(layer)
            cache.update(
                keys.index_select(0, index)[:, :, start:],
                values.index_select(0, index)[:, :, start:],
                layer_index,
            )
        experts = self.experts[rows] if self.experts is not None else None
        sequences = [self.sequences[i] for i in rows]
        return Batch(sequences, cache, mask[:, start:], self.logits.index_select(0, index), experts)


class GenerationEngine:
    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch: int = 32,
        continuous: bool = True,
        threads: int | None = 1,
        min_admit: int | None = None,
        max_wait_steps: int = 8,
        pad_to_multiple_of: int | None = None,
        streams: Callable[[list[StreamEntry]], None] | None = None,
        metrics: EngineMetrics | None = None,
        max_adapters: int = 8,
    ) -> None:
        self.name = name
        # The base model, wrapped in a PeftModel once a request brings an adapter.
        self.model: torch.nn.Module = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.continuous = continuous
        self.threads = threads
        self.pad_to_multiple_of = pad_to_multiple_of
        self.streams = streams
        self.metrics = metrics
        self.device = model.device
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = _pad_id(tokenizer, self.eos_ids)
        self.experts = ExpertCounter(model)
        self.adapters = ResidentAdapters(max_adapters)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decode_ids = backend.decode if backend is not None else tokenizer.decode
        self._inbox: queue.Queue[Request] = queue.Queue()
        self._waiting: deque[Request] = deque()
        self._waited_steps = 0
        self.min_admit = max(1, min_admit if min_admit is not None else max_batch // 8)
        self.max_wait_steps = max_wait_steps
        self._batch: Batch | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def decode(self, ids: list[int]) -> str:
        return str(self._decode_ids(ids, skip_special_tokens=True))

    def submit(self, request: Request) -> "Future[Generation]":
        if self._stopping.is_set() or not self._thread.is_alive():
            raise RuntimeError(f"generation engine for {self.name} is not running")
        self._inbox.put(request)
        return request.future

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)
        self.experts.close()

    @property
    def running(self) -> int:
        return len(self._batch) if self._batch else 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def _run(self) -> None:
        if self.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.threads)  # this thread's intra-op pool only
        while not self._stopping.is_set():
            try:
                self._iterate()
            except Exception as exc:  # a backend failure fails the requests it touched
                log.exception("generation step failed model=%s", self.name)
                self._fail_all(exc)
        self._fail_all(RuntimeError("generation engine stopped"))

    @torch.inference_mode()
    def _iterate(self) -> None:
        admitted = self._admit()
        if admitted:
            try:
                admitted = self._load_adapters(admitted)
                group = self._prefill(admitted) if admitted else None
            except Exception as exc:  # the new requests are in neither batch nor inbox
                self._fail(admitted, exc)
                raise
            if group is not None:
                self._batch = group if self._batch is None else self._batch.merge(group)
        if self._batch is None:
            return
        self._choose_tokens(self._batch)
        self._batch = self._retire(self._batch)
        if self._batch is not None:
            self._decode_step(self._batch)

    def _admit(self) -> list[Request]:
        """Requests to start now. A running batch takes newcomers once `min_admit` slots are
        free, or once the oldest newcomer has waited `max_wait_steps` decoding steps: each
        admission costs a prefill pass and a cache copy, so admitting one by one as slots
        free up would spend more than it gains (TGI's waiting-served policy, simplified)."""
        running = self.running
        self._collect(block=not running and not self._waiting)
        self._drop_cancelled()
        if not self._waiting or (running and not self.continuous):
            return []
        free = self.max_batch - running
        if running and free < self.min_admit and self._waited_steps < self.max_wait_steps:
            self._waited_steps += 1
            return []
        self._waited_steps = 0
        if free >= len(self._waiting):
            admitted, self._waiting = list(self._waiting), deque()
            return admitted
        # Highest priority first; sorted() is stable, so arrival order within a priority.
        ranked = sorted(self._waiting, key=lambda r: -r.priority)
        admitted, rest = ranked[:free], ranked[free:]
        self._waiting = deque(sorted(rest, key=lambda r: r.received_at))
        return admitted

    def _collect(self, block: bool) -> None:
        """Move submitted requests from the inbox to the waiting line."""
        try:
            if block:
                self._waiting.append(self._inbox.get(timeout=0.05))
            while True:
                self._waiting.append(self._inbox.get_nowait())
        except queue.Empty:
            pass

    def _drop_cancelled(self) -> None:
        """Waiting requests whose job was cancelled end now, without taking a slot."""
        stopped = [r.should_stop() for r in self._waiting]
        if not any(stopped):
            return
        cancelled = [r for r, stop in zip(self._waiting, stopped, strict=True) if stop]
        self._waiting = deque(r for r, stop in zip(self._waiting, stopped, strict=True) if not stop)
        for request in cancelled:
            sequence = Sequence(request, self)
            sequence.finish_reason = "cancelled"
            self._finish([sequence])

    def _load_adapters(self, requests: list[Request]) -> list[Request]:
        """The requests whose adapter is resident now. One whose adapter cannot be loaded
        fails alone. Runs between forward passes, and outside inference mode: the adapters'
        weights are ordinary parameters of the model."""
        refs = [r.adapter for r in requests if r.adapter is not None]
        if not refs:
            return requests
        failed = self._ensure_adapters(refs)
        kept = []
        for request in requests:
            error = failed.get(request.adapter.key) if request.adapter else None
            if error is None:
                kept.append(request)
                continue
            log.warning("adapter refused model=%s job_id=%s: %s", self.name, request.key, error)
            self._fail([request], error)
        return kept

    def _ensure_adapters(self, refs: list[AdapterRef]) -> dict[str, AdapterLoadError]:
        """Load what `refs` need; the errors of those that could not be, by key."""
        in_use = {s.adapter for s in self._batch.sequences} if self._batch else set()
        in_use |= {ref.key for ref in refs}
        failed: dict[str, AdapterLoadError] = {}
        with torch.inference_mode(False):
            for ref in {ref.key: ref for ref in refs}.values():
                try:
                    self.model = self.adapters.ensure(self.model, in_use, ref)
                except AdapterLoadError as exc:
                    failed[ref.key] = exc
        return failed

    def _forward(self, sequences: list[Sequence], **inputs: Any) -> Any:
        """One forward pass over `sequences`' rows, each through its own adapter (a plain
        call until the first adapter is loaded)."""
        return self.adapters.forward(self.model, [s.adapter for s in sequences], **inputs)

    def _prefill(self, requests: list[Request]) -> Batch:
        sequences = [Sequence(r, self) for r in requests]
        ids, mask = self._pad([r.prompt_ids for r in requests])
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        self.experts.begin(mask.bool())
        out = self._forward(
            sequences,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        now = time.perf_counter()
        for sequence in sequences:
            sequence.prefilled_at = now
        experts = self._observe_experts()
        logits = out.logits[:, -1].float()
        return Batch(sequences, cache, F.pad(mask, (0, 1), value=1), logits, experts)

    def _decode_step(self, batch: Batch) -> None:
        tokens = torch.tensor(
            [[s.history[-1]] for s in batch.sequences], device=self.device, dtype=torch.long
        )
        positions = batch.mask.sum(dim=1, keepdim=True) - 1
        self.experts.begin(torch.ones_like(tokens, dtype=torch.bool))
        out = self._forward(
            batch.sequences,
            input_ids=tokens,
            attention_mask=batch.mask,
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
        )
        batch.logits = out.logits[:, -1].float()
        batch.mask = F.pad(batch.mask, (0, 1), value=1)
        step_experts = self._observe_experts()
        if batch.experts is not None and step_experts is not None:
            batch.experts += step_experts
        if self.metrics is not None:
            self.metrics.observe_step(self.name, len(batch))

    def _choose_tokens(self, batch: Batch) -> None:
        sequences = batch.sequences
        logits = batch.logits
        for row, sequence in enumerate(sequences):
            if sequence.processors:
                logits[row] = sequence.processors(sequence.history, logits[row])
        params = [s.params for s in sequences]
        filtered = filter_logits(
            logits,
            torch.tensor([p.temperature for p in params], device=logits.device),
            torch.tensor([p.top_k for p in params], device=logits.device),
            torch.tensor([p.top_p for p in params], device=logits.device),
        )
        greedy = [p.greedy for p in params]
        chosen = sample_rows(filtered, greedy, [s.generator for s in sequences])
        for row, sequence in enumerate(sequences):
            if sequence.finish_reason:  # static batching: a finished row holds its slot
                continue
            if sequence.request.should_stop():
                sequence.finish_reason = "cancelled"
                continue
            token = chosen[row]
            if sequence.guard is not None:
                token = self._guarded(sequence, filtered[row], token, greedy[row])
                if token < 0:
                    sequence.finish_reason = "stop"
                    continue
            eos = token in self.eos_ids
            sequence.add(token, "" if eos else sequence.decoder.push(token), eos)

    def _guarded(self, sequence: Sequence, logits: torch.Tensor, token: int, greedy: bool) -> int:
        """`token`, or the next best/next drawn one that does not spell a banned word."""
        assert sequence.guard is not None
        logits = logits.clone()
        for _ in range(MAX_GUARD_TRIES):
            if token in self.eos_ids or sequence.guard.allows(
                sequence.text, sequence.decoder.peek(token)
            ):
                return token
            logits[token] = float("-inf")
            if torch.isinf(logits).all():
                return -1
            token = sample_rows(logits.unsqueeze(0), [greedy], [sequence.generator])[0]
        return -1

    def _retire(self, batch: Batch) -> Batch | None:
        live = [s for s in batch.sequences if not s.resolved]
        self._write_stream(live)
        done = [row for row, s in enumerate(batch.sequences) if s.finish_reason and not s.resolved]
        if done:
            self._finish([batch.sequences[row] for row in done], batch.experts, done)
        kept = [row for row, s in enumerate(batch.sequences) if not s.finish_reason]
        if not kept:
            return None
        if not done or not self.continuous:
            return batch
        return batch.keep(kept)

    def _finish(
        self,
        sequences: list[Sequence],
        experts: torch.Tensor | None = None,
        rows: list[int] | None = None,
    ) -> None:
        now = time.perf_counter()
        for index, sequence in enumerate(sequences):
            counts = experts[rows[index]] if experts is not None and rows is not None else None
            generation = _generation(sequence, now, counts, self.experts.layer_ids)
            if self.metrics is not None:
                self.metrics.observe_request(
                    self.name,
                    generation.prompt_tokens,
                    generation.completion_tokens,
                    generation.first_token_s if sequence.first_token_at else None,
                    generation.finish_reason,
                )
            sequence.resolved = True
            sequence.request.future.set_result(generation)

    def _write_stream(self, sequences: list[Sequence]) -> None:
        if self.streams is None:
            return
        entries = []
        for sequence in sequences:
            if not sequence.request.stream:
                continue
            delta = sequence.stream_delta()
            if delta:
                entries.append(StreamEntry(sequence.request.key, delta=delta))
            if sequence.finish_reason:
                entries.append(StreamEntry(sequence.request.key, end=sequence.finish_reason))
        if entries:
            self.streams(entries)

    def _observe_experts(self) -> torch.Tensor | None:
        counts = self.experts.collect()
        if counts is not None and self.metrics is not None:
            self.metrics.observe_experts(
                self.name, counts.sum(dim=0).numpy(), self.experts.layer_ids
            )
        return counts

    def _pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _fail_all(self, exc: Exception) -> None:
        """Fail the running batch and everything waiting in the inbox."""
        requests = [s.request for s in self._batch.sequences] if self._batch else []
        self._batch = None
        self._collect(block=False)
        requests += self._waiting
        self._waiting.clear()
        self._fail(requests, exc)

    def _fail(self, requests: list[Request], exc: Exception) -> None:
        failed = [r for r in requests if not r.future.done()]
        for request in failed:
            request.future.set_exception(exc)
        if self.streams is not None and failed:
            self.streams([StreamEntry(r.key, end="error") for r in failed if r.stream])


def _generation(
    sequence: Sequence, now: float, counts: torch.Tensor | None, layer_ids: list[int]
) -> Generation:
    request = sequence.request
    started = sequence.prefilled_at or now
    first = sequence.first_token_at or now
    return Generation(
        text=sequence.text,
        finish_reason=sequence.finish_reason or "stop",
        prompt_tokens=len(request.prompt_ids),
        completion_tokens=sequence.generated,
        queued_s=started - request.received_at,
        first_token_s=first - request.received_at,
        total_s=now - request.received_at,
        expert_counts=(
            {layer: counts[i].tolist() for i, layer in enumerate(layer_ids)}
            if counts is not None
            else None
        ),
    )


def _kv(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache layer's keys and values; the engine merges plain (full-attention) layers."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError(f"cannot batch a {type(layer).__name__} cache layer")
    return keys, values


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, heads, positions, dim) left-padded with zeros to `width` positions."""
    missing = width - tensor.shape[-2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing > 0 else tensor


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return F.pad(mask, (missing, 0), value=0) if missing > 0 else mask


def _cat_or_none(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return torch.cat([a, b]) if a is not None and b is not None else None


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids if i is not None)


def _pad_id(tokenizer: PreTrainedTokenizerBase, eos_ids: frozenset[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos_ids) if eos_ids else 0
