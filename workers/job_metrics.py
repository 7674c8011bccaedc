"""Job-level metrics of a worker process, in the worker's registry:

- `seekq_job_queue_wait_seconds{kind,model}`: from submit to this attempt's claim.
- `seekq_job_run_seconds{kind,model}`: from the claim to the attempt's end.
- `seekq_jobs_total{kind,model,outcome,error}`: attempts by how they ended (succeeded,
  failed, cancelled, retried) and the error class (`none` when there was none).
- `seekq_model_load_seconds{model}`: loading a model into this process.

P50/P99 come from the histograms (`histogram_quantile`). `model` is the base model of the
job's spec (`-` for kinds without one): a fine-tuned `<base>:<adapter>` is counted under
its base, so tenants' adapter names never become label values.
"""

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from jobs.lifecycle import Claim

WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
RUN_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
LOAD_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OUTCOMES = frozenset({"succeeded", "failed", "cancelled", "retried"})


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["kind", "model"]
        self.queue_wait = Histogram(
            "seekq_job_queue_wait_seconds",
            "From submit to the attempt's claim, by kind and base model.",
            labels,
            buckets=WAIT_BUCKETS_S,
            registry=registry,
        )
        self.run = Histogram(
            "seekq_job_run_seconds",
            "From the claim to the attempt's end, by kind and base model.",
            labels,
            buckets=RUN_BUCKETS_S,
            registry=registry,
        )
        self.jobs = Counter(
            "seekq_jobs",
            "Job attempts by how they ended and their error class.",
            [*labels, "outcome", "error"],
            registry=registry,
        )
        self.model_load = Histogram(
            "seekq_model_load_seconds",
            "Loading a model into this worker process.",
            ["model"],
            buckets=LOAD_BUCKETS_S,
            registry=registry,
        )

    def observe_end(self, claim: Claim, status: str, error_type: str | None) -> None:
        """A lifecycle's EndObserver: one attempt ended (its write committed)."""
        labels = (claim.kind, base_model(claim.spec.get("model")))
        now = datetime.now(UTC)
        if claim.claimed_at is not None:
            if claim.created_at is not None:
                wait = (claim.claimed_at - claim.created_at).total_seconds()
                self.queue_wait.labels(*labels).observe(max(0.0, wait))
            run = (now - claim.claimed_at).total_seconds()
            self.run.labels(*labels).observe(max(0.0, run))
        outcome = status if status in OUTCOMES else "failed"
        self.jobs.labels(*labels, outcome, (error_type or "none")[:64]).inc()

    def observe_model_load(self, model: str, seconds: float) -> None:
        self.model_load.labels(model).observe(seconds)


def base_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        return "-"
    return model.split(":", 1)[0]
