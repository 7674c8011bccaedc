"""Prometheus metrics of one worker process: generation counts, batch sizes, MoE expert
use, and fine-tune training (steps, step time, loss, checkpoints, outcomes).

Each `GenerationMetrics` owns its own `CollectorRegistry` (no module globals), served by
`serve()` for Prometheus to scrape. Labels carry model names (validated by the registry)
and closed sets of words only, never user text.

Expert use is kept as numpy arrays per model and turned into samples when scraped, so the
per-step `observe_experts` is a few array operations, not one labelled `inc` per expert:

- `seekq_moe_expert_tokens_total{model,layer,expert}`: tokens routed to each expert.
- `seekq_moe_expert_activation_rate{model}`: the share of (layer, expert) pairs that got at
  least one token within the last `window_s` seconds. Each pair's last-seen time is kept
  (memory: layers x experts floats, whatever the traffic), which answers exactly what
  per-second buckets in a deque would answer to the second. A model with no step in the
  window has no rate: the series disappears (and `activation_rate` returns None) rather
  than keeping a stale value or dropping to 0 and looking like a router collapse.
"""

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DEFAULT_WINDOW_S = 300.0
FINISH_REASONS = frozenset({"stop", "length", "cancelled", "error"})
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FIRST_TOKEN_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STEP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FINETUNE_OUTCOMES = frozenset({"succeeded", "cancelled", "failed"})


@dataclass
class ExpertUse:
    """One model's expert counts: running totals and each pair's last-seen time."""

    layer_ids: list[int]
    totals: "np.ndarray[Any, Any]"
    last_seen: "np.ndarray[Any, Any]"
    last_step: float = field(default=float("-inf"))

    @classmethod
    def empty(cls, layer_ids: list[int], shape: tuple[int, ...]) -> "ExpertUse":
        return cls(list(layer_ids), np.zeros(shape, np.int64), np.full(shape, -np.inf))

    def fits(self, layer_ids: list[int], shape: tuple[int, ...]) -> bool:
        return self.layer_ids == list(layer_ids) and self.totals.shape == shape

    def rate(self, since: float) -> float | None:
        """Share of pairs seen at or after `since`; None when no step came since then."""
        if self.last_step < since:
            return None
        return float(np.mean(self.last_seen >= since))

    def copy(self) -> "ExpertUse":
        return ExpertUse(self.layer_ids, self.totals.copy(), self.last_seen.copy(), self.last_step)


class ExpertCollector(Collector):
    """Turns every model's ExpertUse into the two expert metric families at scrape time."""

    def __init__(self, metrics: "GenerationMetrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "seekq_moe_expert_tokens",
            "Tokens routed to each MoE expert (pad tokens excluded).",
            labels=["model", "layer", "expert"],
        )
        rate = GaugeMetricFamily(
            "seekq_moe_expert_activation_rate",
            "Share of (layer, expert) pairs that received a token within the window; "
            "absent when the model had no step in the window.",
            labels=["model"],
        )
        since = self.metrics.clock() - self.metrics.window_s
        for model, use in self.metrics.snapshot().items():
            add_token_samples(tokens, model, use)
            value = use.rate(since)
            if value is not None:
                rate.add_metric([model], value)
        yield tokens
        yield rate


def add_token_samples(family: CounterMetricFamily, model: str, use: ExpertUse) -> None:
    for row, layer in enumerate(use.layer_ids):
        for expert, total in enumerate(use.totals[row].tolist()):
            family.add_metric([model, str(layer), str(expert)], total)


class GenerationMetrics:
    """The metrics a generation worker exports, with their own registry."""

    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.registry = CollectorRegistry()
        self._experts: dict[str, ExpertUse] = {}
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self.tokens = Counter(
            "seekq_generate_tokens",
            "Prompt and completion tokens of finished generate requests.",
            ["model", "phase"],
            registry=self.registry,
        )
        self.requests = Counter(
            "seekq_generate_requests",
            "Finished generate requests by finish reason.",
            ["model", "finish_reason"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "seekq_generate_batch_size",
            "Sequences in each decoding step.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.first_token_s = Histogram(
            "seekq_generate_time_to_first_token_seconds",
            "From the engine receiving a request to its first token.",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(ExpertCollector(self))
        self._add_finetune_metrics()

    def _add_finetune_metrics(self) -> None:
        self.finetune_steps = Counter(
            "seekq_finetune_steps",
            "Optimizer steps of fine-tune jobs, by base model.",
            ["model"],
            registry=self.registry,
        )
        self.finetune_step_s = Histogram(
            "seekq_finetune_step_seconds",
            "Wall time of one optimizer step (forward, backward, optimizer, logging).",
            ["model"],
            buckets=STEP_BUCKETS_S,
            registry=self.registry,
        )
        self.finetune_loss = Gauge(
            "seekq_finetune_train_loss",
            "The last logged training loss of the fine-tune running on this worker.",
            ["model"],
            registry=self.registry,
        )
        self.finetune_checkpoint_s = Histogram(
            "seekq_finetune_checkpoint_seconds",
            "Uploading one checkpoint to the artifact store and pointing the job at it.",
            ["model"],
            buckets=STEP_BUCKETS_S,
            registry=self.registry,
        )
        self.finetune_jobs = Counter(
            "seekq_finetune_jobs",
            "Fine-tune attempts that ended on this worker, by outcome; resumed: whether "
            "the attempt started from a checkpoint.",
            ["model", "outcome", "resumed"],
            registry=self.registry,
        )

    def observe_finetune_step(self, model: str, seconds: float | None, loss: float) -> None:
        """One optimizer step; `seconds` None when the step's time is not its own."""
        self.finetune_steps.labels(model).inc()
        if seconds is not None:
            self.finetune_step_s.labels(model).observe(seconds)
        self.finetune_loss.labels(model).set(loss)

    def observe_checkpoint(self, model: str, seconds: float) -> None:
        self.finetune_checkpoint_s.labels(model).observe(seconds)

    def observe_finetune_end(self, model: str, outcome: str, resumed: bool) -> None:
        label = outcome if outcome in FINETUNE_OUTCOMES else "failed"
        self.finetune_jobs.labels(model, label, "true" if resumed else "false").inc()

    def observe_experts(
        self, model: str, counts: "np.ndarray[Any, Any]", layer_ids: list[int]
    ) -> None:
        """One decoding step's tokens per expert: `counts[i, e]` for MoE layer `layer_ids[i]`."""
        if counts.ndim != 2 or counts.shape[0] != len(layer_ids):
            raise ValueError(f"counts of shape {counts.shape} do not match {len(layer_ids)} layers")
        now = self.clock()
        with self._lock:
            use = self._experts.get(model)
            if use is None or not use.fits(layer_ids, counts.shape):
                # A first step, or the model was reloaded with another shape: start afresh.
                use = self._experts[model] = ExpertUse.empty(layer_ids, counts.shape)
            use.totals += counts.astype(np.int64, copy=False)
            use.last_seen[counts > 0] = now
            use.last_step = now

    def activation_rate(self, model: str) -> float | None:
        """Share of pairs with a token in the window; None when the model had no step in it."""
        since = self.clock() - self.window_s
        with self._lock:
            use = self._experts.get(model)
            return None if use is None else use.rate(since)

    def snapshot(self) -> dict[str, ExpertUse]:
        """A copy of every model's expert use, safe to read while steps go on."""
        with self._lock:
            return {model: use.copy() for model, use in self._experts.items()}

    def observe_step(self, model: str, batch_size: int) -> None:
        self.batch_size.labels(model).observe(batch_size)

    def observe_request(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        first_token_s: float | None,
        finish_reason: str,
    ) -> None:
        """One finished request; `first_token_s` is None when no token was produced."""
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
        reason = finish_reason if finish_reason in FINISH_REASONS else "other"
        self.requests.labels(model, reason).inc()
        if first_token_s is not None:
            self.first_token_s.labels(model).observe(first_token_s)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP in a daemon thread; port 0 picks a free port. Returns it."""
        server, _thread = start_http_server(port, addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
