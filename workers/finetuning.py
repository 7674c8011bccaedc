"""Fine-tune jobs on the worker: train a LoRA adapter, checkpoint to the artifact store,
report steps as events, resume after a crash, hand back the adapter to register.

Long-job reliability rests on SQL, not on Redis redelivery:
- the job's lease is renewed while it trains (workers.execution.LeaseKeeper); when a
  worker dies the lease runs out and the reconciler re-publishes the job;
- every `checkpoint_every` steps the checkpoint directory goes to the artifact store
  under a key naming the attempt and step, and only then does the job's progress point
  at it (a write fenced on the attempt: a stale attempt cannot move the pointer);
- a new attempt downloads the checkpoint the pointer names and resumes from it, so
  training continues from its last checkpoint, never from zero; a stale attempt (one
  whose lease was taken over) stops at its next step, and its writes (progress,
  checkpoint pointer, events) are fenced out, so only one attempt's work counts;
- a cancel stops training within one step; the last state is checkpointed and kept.
"""

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jobs.adapters import adapter_id
from jobs.context import JobsContext
from jobs.errors import ConfigError, JobCancelledError, RetryableError
from jobs.finetune_specs import FineTuneHyperparameters, FineTuneResult, FineTuneSpec
from jobs.lifecycle import Lifecycle
from jobs.registry import ModelKind, resolve_source
from storage.settings import get_storage_settings
from workers.metrics import GenerationMetrics
from workers.pool import ModelPool
from workers.runners import RunningJob
from workers.training import LoraHyperparameters, TrainingEvent, TrainingOutcome, train_lora

log = logging.getLogger(__name__)


def run_finetune(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    assert isinstance(spec, FineTuneSpec)
    context = pool.context
    if context is None:
        raise ConfigError("fine-tune jobs need the worker's job context")
    metrics = pool.metrics if isinstance(pool.metrics, GenerationMetrics) else None
    run = FineTuneRun(context, job, spec, metrics)
    outcome = "failed"
    try:
        result = run.train(pool.settings.device)
        outcome = "succeeded"
        return result
    except JobCancelledError:
        outcome = "cancelled"
        raise
    except RetryableError:
        raise
    except Exception as exc:
        run.event(f"Fine-tuning failed: {type(exc).__name__}: {exc}"[:2000], level="error")
        raise
    finally:
        if metrics is not None:
            resumed = bool(run.progress.get("resumed_from_step"))
            metrics.observe_finetune_end(spec.model, outcome, resumed)


class FineTuneRun:
    """One attempt of one fine-tune job: the TrainingHooks train_lora calls back."""

    def __init__(
        self,
        context: JobsContext,
        job: RunningJob,
        spec: FineTuneSpec,
        metrics: GenerationMetrics | None = None,
    ) -> None:
        self.context = context
        self.job = job
        self.spec = spec
        self.metrics = metrics
        self.last_step_s = 0.0  # elapsed_s of the previous step, for the step time
        self.lifecycle: Lifecycle = context.lifecycle()
        self.progress: dict[str, Any] = self.lifecycle.progress_of(job.job_id) or {}
        self.work_dir = get_storage_settings().data_dir / "work" / "finetunes" / job.job_id
        self.lost = False  # the attempt lost the job: stop at the next step

    def train(self, device: str) -> FineTuneResult:
        entry = self.context.models.get(self.spec.model, ModelKind.CAUSAL_LM)
        training = self.context.files.examples(self.job.tenant_id, self.spec.training_file)
        examples = [_example(e) for e in training.examples]
        validation = None
        if self.spec.validation_file is not None:
            held = self.context.files.examples(self.job.tenant_id, self.spec.validation_file)
            validation = [_example(e) for e in held.examples]
        with _scratch(self.work_dir / f"attempt-{self.job.attempt}") as scratch:
            resume = self._fetch_checkpoint(scratch)
            self._announce_start(len(examples), resume)
            outcome = train_lora(
                resolve_source(entry.source),
                examples,
                lora_params(self.spec.hyperparameters),
                scratch,
                self,
                device=device,
                resume_from=resume,
                dtype=entry.dtype,
                eval_examples=validation,
            )
            if outcome.stopped or outcome.adapter_dir is None:
                raise JobCancelledError(
                    f"cancelled at step {outcome.steps} of {outcome.total_steps}; "
                    "the last checkpoint is kept",
                    {"steps": outcome.steps, "total_steps": outcome.total_steps},
                )
            return self._finish(outcome, training.sha256)

    def _finish(self, outcome: TrainingOutcome, dataset_sha256: str) -> FineTuneResult:
        assert outcome.adapter_dir is not None
        adapter = adapter_id(self.job.job_id)
        files = self.context.adapters.store(self.job.tenant_id, adapter, outcome.adapter_dir)
        size = sum(int(f["size"]) for f in files.values())
        self._drop_checkpoints()
        self.event(
            f"Training finished at step {outcome.steps}: train loss "
            f"{_fmt(outcome.train_loss)}, validation loss {_fmt(outcome.eval_loss)}; "
            f"adapter {size} bytes, registering {self.spec.model_name}",
            {
                "step": outcome.steps,
                "train_loss": outcome.train_loss,
                "eval_loss": outcome.eval_loss,
            },
        )
        return FineTuneResult(
            model=self.spec.model_name,
            adapter_id=adapter,
            steps=outcome.steps,
            total_steps=outcome.total_steps,
            train_loss=outcome.train_loss,
            eval_loss=outcome.eval_loss,
            trainable_params=outcome.trainable_params,
            total_params=outcome.total_params,
            trained_tokens=outcome.trained_tokens,
            adapter_bytes=size,
            adapter_files=files,
            resumed_from_step=outcome.resumed_from_step,
            dataset_sha256=dataset_sha256,
        )

    # --- TrainingHooks ------------------------------------------------------------------

    def should_stop(self) -> bool:
        return self.lost or self.job.should_stop()

    def on_log(self, event: TrainingEvent) -> None:
        done = event.step - int(self.progress.get("resumed_from_step", 0))
        remaining = event.total_steps - event.step
        eta_s = event.elapsed_s / done * remaining if done > 0 else None
        self.progress.update(
            step=event.step,
            total_steps=event.total_steps,
            epoch=round(event.epoch, 4),
            eta_s=round(eta_s, 1) if eta_s is not None else None,
            at=time.time(),
        )
        if event.loss is not None:
            self.progress["loss"] = event.loss
            if self.metrics is not None:
                # The attempt's first step also paid for loading the model: not timed.
                step_s = event.elapsed_s - self.last_step_s if self.last_step_s else None
                self.metrics.observe_finetune_step(self.spec.model, step_s, event.loss)
            self.last_step_s = event.elapsed_s
        if event.eval_loss is not None:
            self.progress["eval_loss"] = event.eval_loss
        self._report()
        self.event(_step_message(event), _step_data(event), kind="metrics")

    def on_checkpoint(self, directory: Path, step: int) -> None:
        """Upload the checkpoint, then point the job at it; the previous one goes."""
        if self.lost:
            return  # nothing would point at it
        started = time.perf_counter()
        prefix = f"finetunes/{self.job.tenant_id}/{self.job.job_id}/a{self.job.attempt}-s{step}"
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            relative = path.relative_to(directory).as_posix()
            self.context.artifacts.put(f"{prefix}/{relative}", path.read_bytes())
        previous = self.progress.get("checkpoint_key")
        self.progress.update(checkpoint_key=prefix, checkpoint_step=step)
        if not self._report():
            return
        if previous and previous != prefix:
            for key in self.context.artifacts.list(previous + "/"):
                self.context.artifacts.delete(key)
        self.event(f"Checkpoint saved at step {step}", {"step": step})
        if self.metrics is not None:
            self.metrics.observe_checkpoint(self.spec.model, time.perf_counter() - started)

    # --- helpers ------------------------------------------------------------------------

    def event(
        self,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        kind: str = "message",
        level: str = "info",
    ) -> None:
        written = self.context.finetunes.record(
            self.job.job_id,
            self.job.tenant_id,
            message,
            data,
            kind=kind,
            level=level,
            attempt=self.job.attempt,
        )
        if not written:
            self.lost = True

    def _report(self) -> bool:
        if not self.lifecycle.report(self.job.job_id, self.job.attempt, self.progress):
            log.warning("fine-tune lost its job; stopping job_id=%s", self.job.job_id)
            self.lost = True
            return False
        return True

    def _drop_checkpoints(self) -> None:
        """Training is over and the adapter stored: its checkpoints are of no more use
        (a cancelled or failed job keeps its last one)."""
        self.progress.pop("checkpoint_key", None)
        if not self._report():
            return
        prefix = f"finetunes/{self.job.tenant_id}/{self.job.job_id}/"
        for key in self.context.artifacts.list(prefix):
            self.context.artifacts.delete(key)

    def _fetch_checkpoint(self, scratch: Path) -> Path | None:
        prefix = self.progress.get("checkpoint_key")
        if not prefix:
            return None
        target = scratch / "resume"
        for key in self.context.artifacts.list(prefix + "/"):
            path = target / key.removeprefix(prefix + "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.context.artifacts.get(key))
        return target if target.is_dir() else None

    def _announce_start(self, examples: int, resume: Path | None) -> None:
        step = int(self.progress.get("checkpoint_step", 0)) if resume else 0
        self.progress["resumed_from_step"] = step
        if resume is not None:
            self.event(
                f"Resumed from the checkpoint at step {step} (attempt {self.job.attempt})",
                {"step": step, "attempt": self.job.attempt},
            )
        else:
            self.event(
                f"Fine-tuning started: {examples} examples, LoRA on {self.spec.model} "
                f"(attempt {self.job.attempt})",
                {"examples": examples, "attempt": self.job.attempt},
            )


def lora_params(params: FineTuneHyperparameters) -> LoraHyperparameters:
    return LoraHyperparameters(
        r=params.lora_r,
        alpha=params.lora_alpha,
        dropout=params.lora_dropout,
        target_modules=tuple(params.target_modules) if params.target_modules else None,
        n_epochs=params.n_epochs,
        max_steps=params.max_steps,
        learning_rate=params.learning_rate,
        batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        seed=params.seed,
        validation_split=params.validation_split,
        completion_only=params.completion_only,
        checkpoint_every=params.checkpoint_every,
        max_length=params.max_length,
        warmup_ratio=params.warmup_ratio,
        weight_decay=params.weight_decay,
    )


def _example(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k != "line"}


@contextmanager
def _scratch(path: Path) -> Iterator[Path]:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _step_message(event: TrainingEvent) -> str:
    parts = [f"Step {event.step}/{event.total_steps}:"]
    if event.loss is not None:
        parts.append(f"training loss={event.loss:.4f}")
    if event.eval_loss is not None:
        parts.append(f"validation loss={event.eval_loss:.4f}")
    return " ".join(parts)


def _step_data(event: TrainingEvent) -> dict[str, Any]:
    data: dict[str, Any] = {"step": event.step, "total_steps": event.total_steps}
    if event.loss is not None:
        data["train_loss"] = event.loss
    if event.learning_rate is not None:
        data["learning_rate"] = event.learning_rate
    if event.eval_loss is not None:
        data["eval_loss"] = event.eval_loss
    data["epoch"] = round(event.epoch, 4)
    return data
