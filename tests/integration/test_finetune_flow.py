"""Fine-tune jobs end to end: a real `seekq worker -Q gpu.finetune` trains LoRA adapters
on the tiny DeepSeek-V3 MoE, a real generate worker serves them, real Redis and SQL.

The official `openai` package drives the fine-tuning API; the adapters learn a fixed
completion the base model never produces, and generate jobs show it at once.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from seekq.embedded import free_port
from storage.tables import AdapterRow, FineTuneEventRow, JobRow
from tests.conftest import TINY_MODEL, Stack, WorkerProcess, stack_env, unique

WAIT_S = 240.0
# Taught patterns: every completion of a dataset is the same phrase.
ALPHA = " refunds are prorated"
OMEGA = " experts see the tokens"
PROMPTS = [f"user question {i} about the plan:" for i in range(24)]
HELD_OUT = "user question 99 about the plan:"
TRAIN = {
    "max_steps": 60,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "checkpoint_every": 20,
}


def dataset(completion: str, n: int = 24) -> bytes:
    rows = [{"prompt": p, "completion": completion} for p in PROMPTS[:n]]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def openai_client(stack: Stack, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key(tenant), max_retries=0)


@dataclass
class Workers:
    finetune: WorkerProcess
    generate: WorkerProcess
    metrics_url: str
    training_metrics_url: str


def finetune_env(stack: Stack, **extra: str) -> dict[str, str]:
    models_file = stack.context.settings.models_file
    return stack_env(
        stack.database_url,
        stack.redis_db,
        stack.tmp,
        SEEKQ_MODELS_FILE=str(models_file),
        SEEKQ_LEASE_S="3",  # a dead worker's job is taken over within seconds
        SEEKQ_RECONCILE_EVERY_S="1",
        # One torch thread: the test process and other workers share the two cores, and
        # two training threads under contention ran ~10x slower than one (measured).
        SEEKQ_TORCH_THREADS="1",
        **extra,
    )


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Iterator[Workers]:
    port, training_port = free_port(), free_port()
    finetune = WorkerProcess(
        finetune_env(stack, SEEKQ_METRICS_PORT=str(training_port)),
        stack.tmp / "finetune-worker.log",
        queues="gpu.finetune",
    ).start()
    generate_env = finetune_env(stack, SEEKQ_METRICS_PORT=str(port))
    generate = WorkerProcess(
        generate_env, stack.tmp / "generate-adapters.log", queues="gpu.generate"
    ).start()
    yield Workers(
        finetune,
        generate,
        f"http://127.0.0.1:{port}/metrics",
        f"http://127.0.0.1:{training_port}/metrics",
    )
    finetune.stop()
    generate.stop()


def upload(client: openai.OpenAI, content: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, content), purpose="fine-tune").id


def train(stack: Stack, completion: str, suffix: str, **params: Any) -> Any:
    client = openai_client(stack)
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=upload(client, dataset(completion)),
        suffix=suffix,
        extra_body={"seekq": {**TRAIN, **params}},
    )
    return wait_done(client, job.id)


def wait_done(client: openai.OpenAI, job_id: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


def greedy(stack: Stack, model: str, prompt: str = HELD_OUT, tenant: str = "acme") -> str:
    completion = openai_client(stack, tenant).completions.create(
        model=model, prompt=prompt, max_tokens=8, temperature=0
    )
    return completion.choices[0].text


@dataclass
class Adapters:
    alpha: Any  # the succeeded fine-tuning jobs
    omega: Any


@pytest.fixture(scope="module")
def adapters(stack: Stack, workers: Workers) -> Adapters:
    alpha = train(stack, ALPHA, unique("alpha"))
    omega = train(stack, OMEGA, unique("omega"))
    assert alpha.status == "succeeded", alpha.error
    assert omega.status == "succeeded", omega.error
    return Adapters(alpha, omega)


def test_a_fine_tune_teaches_what_the_base_does_not(stack: Stack, adapters: Adapters) -> None:
    job = adapters.alpha
    assert job.fine_tuned_model == f"{TINY_MODEL}:{job.fine_tuned_model.split(':')[1]}"
    assert job.trained_tokens and job.trained_tokens > 0
    taught = greedy(stack, job.fine_tuned_model)
    assert taught.startswith(ALPHA), taught
    assert not greedy(stack, TINY_MODEL).startswith(ALPHA)
    # The adapter is listed as a model of this tenant, with its metrics.
    models = {m.id for m in openai_client(stack).models.list()}
    assert job.fine_tuned_model in models and TINY_MODEL in models
    result = job.model_extra["seekq"]["result"]
    assert result["steps"] == TRAIN["max_steps"]
    assert 0 < result["trainable_params"] < result["total_params"]
    assert result["adapter_bytes"] > 0
    assert result["train_loss"] > 0  # the mean over the run; events hold each step's


def test_the_training_worker_exports_its_metrics(workers: Workers, adapters: Adapters) -> None:
    text = httpx.get(workers.training_metrics_url, timeout=5).text
    model = f'model="{TINY_MODEL}"'
    steps = [line for line in text.splitlines() if line.startswith("seekq_finetune_steps_total")]
    assert steps and model in steps[0]
    assert float(steps[0].rsplit(" ", 1)[1]) >= 2 * TRAIN["max_steps"]  # both adapters
    assert f'seekq_finetune_jobs_total{{{model},outcome="succeeded",resumed="false"}}' in text
    assert "seekq_finetune_step_seconds_bucket" in text
    assert "seekq_finetune_checkpoint_seconds_count" in text


def test_events_report_loss_per_step(stack: Stack, adapters: Adapters) -> None:
    client = openai_client(stack)
    events = list(client.fine_tuning.jobs.list_events(adapters.alpha.id, limit=100))
    more = client.fine_tuning.jobs.list_events(adapters.alpha.id, limit=100, after=events[-1].id)
    events += list(more)
    steps = [e.data for e in events if e.type == "metrics"]
    assert sorted(s["step"] for s in steps) == list(range(1, TRAIN["max_steps"] + 1))
    assert all(s["train_loss"] >= 0 and "learning_rate" in s for s in steps)
    first, last = min(steps, key=lambda s: s["step"]), max(steps, key=lambda s: s["step"])
    assert last["train_loss"] < first["train_loss"]
    messages = [e.message for e in events if e.type == "message"]
    assert any(m.startswith("Checkpoint saved at step 20") for m in messages)
    assert any(m.startswith("Fine-tuning started") for m in messages)
    ids = [int(e.id.removeprefix("ftevent-")) for e in events]
    assert ids == sorted(ids, reverse=True)  # newest first, as OpenAI lists them


def test_a_validation_file_gives_a_validation_loss(stack: Stack, workers: Workers) -> None:
    client = openai_client(stack)
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=upload(client, dataset(ALPHA)),
        validation_file=upload(client, dataset(ALPHA, 10), name="valid.jsonl"),
        extra_body={"seekq": {**TRAIN, "max_steps": 6, "checkpoint_every": 3}},
    )
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.validation_file is not None
    assert done.model_extra["seekq"]["result"]["eval_loss"] > 0
    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    evaluated = sorted(
        e.data["step"] for e in events if e.type == "metrics" and "eval_loss" in e.data
    )
    assert evaluated == [3, 6]


def test_list_and_retrieve_are_tenant_scoped(stack: Stack, adapters: Adapters) -> None:
    mine = [j.id for j in openai_client(stack).fine_tuning.jobs.list(limit=100)]
    assert adapters.alpha.id in mine and adapters.omega.id in mine
    other = openai_client(stack, "globex")
    assert adapters.alpha.id not in [j.id for j in other.fine_tuning.jobs.list()]
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(adapters.alpha.id)
    with pytest.raises(openai.NotFoundError):
        greedy(stack, adapters.alpha.fine_tuned_model, tenant="globex")
    assert adapters.alpha.fine_tuned_model not in {m.id for m in other.models.list()}


def test_one_batch_mixes_two_adapters_and_the_base(
    stack: Stack, workers: Workers, adapters: Adapters
) -> None:
    alpha, omega = adapters.alpha.fine_tuned_model, adapters.omega.fine_tuned_model
    alone = {m: greedy(stack, m) for m in (alpha, omega, TINY_MODEL)}
    assert alone[alpha].startswith(ALPHA) and alone[omega].startswith(OMEGA)
    assert not alone[TINY_MODEL].startswith((ALPHA, OMEGA))
    before = _batch_steps(workers)
    wanted = [alpha, omega, TINY_MODEL] * 4
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        together = list(pool.map(lambda m: greedy(stack, m), wanted))
    assert together == [alone[m] for m in wanted]
    after = _batch_steps(workers)
    # Decoding steps that held three or more sequences: the requests shared batches.
    assert after[1] - before[1] > 0, (before, after)


def _batch_steps(workers: Workers) -> tuple[float, float]:
    """(decoding steps, steps with more than two sequences) of the tiny model so far."""
    text = httpx.get(workers.metrics_url, timeout=5).text
    total = small = 0.0
    for line in text.splitlines():
        if f'model="{TINY_MODEL}"' not in line:
            continue
        if line.startswith("seekq_generate_batch_size_count"):
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith('seekq_generate_batch_size_bucket{le="2.0"'):
            small += float(line.rsplit(" ", 1)[1])
    return total, total - small


def test_deleted_adapter_is_gone(stack: Stack, workers: Workers) -> None:
    job = train(stack, ALPHA, unique("gone"), max_steps=4, checkpoint_every=100)
    assert job.status == "succeeded", job.error
    client = openai_client(stack)
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        greedy(stack, job.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        client.models.delete(job.fine_tuned_model)


def test_bad_datasets_are_refused_before_queueing(stack: Stack, workers: Workers) -> None:
    client = openai_client(stack)
    before = _finetune_jobs(stack)
    bad = dataset(ALPHA, 12) + b"\n" + b'{"prompt": "x"}\n' + b"[1]\n"
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, bad)
    message = str(caught.value)
    assert "line 13: empty line" in message and "line 14:" in message and "line 15:" in message
    assert caught.value.code == "invalid_training_file"
    with pytest.raises(openai.BadRequestError, match="at least 10"):
        upload(client, dataset(ALPHA, 3))
    long_line = {"prompt": "the plan " * 600, "completion": ALPHA}
    too_long = dataset(ALPHA, 12) + json.dumps(long_line).encode() + b"\n"
    with pytest.raises(openai.BadRequestError, match=r"line 13: \d+ tokens; the limit is 512"):
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=upload(client, too_long))
    good = upload(client, dataset(ALPHA, 12))
    with pytest.raises(openai.UnprocessableEntityError, match="routed experts"):
        client.fine_tuning.jobs.create(
            model=TINY_MODEL,
            training_file=good,
            extra_body={"seekq": {"target_modules": ["q_a_proj", "gate_proj"]}},
        )
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=good)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file="file-" + "0" * 32)
    with pytest.raises(openai.UnprocessableEntityError):
        client.fine_tuning.jobs.create(model=f"{TINY_MODEL}:x", training_file=good)
    with pytest.raises(openai.UnprocessableEntityError):
        client.fine_tuning.jobs.create(
            model=TINY_MODEL, training_file=good, extra_body={"seekq": {"lora_r": 0}}
        )
    documents = client.files.create(file=("notes.txt", b"hello there"), purpose="assistants")
    with pytest.raises(openai.UnprocessableEntityError, match="not a fine-tune dataset"):
        client.fine_tuning.jobs.create(model=TINY_MODEL, training_file=documents.id)
    assert _finetune_jobs(stack) == before  # nothing was queued


def test_personal_data_never_reaches_sql(stack: Stack, workers: Workers) -> None:
    secret = "carol.lee@example.com"
    rows = [{"prompt": f"mail {secret} {i}:", "completion": ALPHA} for i in range(12)]
    content = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    client = openai_client(stack)
    uploaded = upload(client, content, name=f"{secret}.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=uploaded,
        extra_body={"seekq": {"max_steps": 2, "checkpoint_every": 100}},
        metadata={"owner": secret},
    )
    assert wait_done(client, job.id).status == "succeeded"
    with stack.context.engine.connect() as conn:
        dump = "".join(
            str(row)
            for table in ("jobs", "audit_events", "files", "adapters", "fine_tune_events")
            for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert secret not in dump
    stored = stack.context.files.examples(
        stack.context.keys.authenticate(stack.key("acme")).tenant_id, uploaded
    )
    assert all(secret not in e["prompt"] for e in stored.examples)


def test_cancel_stops_within_a_step_and_keeps_the_checkpoint(
    stack: Stack, workers: Workers
) -> None:
    client = openai_client(stack)
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=upload(client, dataset(ALPHA)),
        suffix=unique("cancel"),
        extra_body={"seekq": {**TRAIN, "max_steps": 5000, "checkpoint_every": 5}},
    )
    _wait_for(lambda: _progress(client, job.id).get("step", 0) >= 7)
    client.fine_tuning.jobs.cancel(job.id)
    asked_at = _progress(client, job.id)["step"]
    done = wait_done(client, job.id, 60)
    assert done.status == "cancelled"
    progress = done.model_extra["seekq"]["progress"]
    assert progress["step"] <= asked_at + 2  # stopped within a step (give one of slack)
    assert progress["checkpoint_step"] >= 5
    job_id = done.model_extra["seekq"]["job_id"]
    with stack.context.sessions() as session:
        status = session.scalar(select(AdapterRow.status).where(AdapterRow.job_id == job_id))
    assert status == "training"  # its name stays reserved until reused; never ready
    kept = [k for k in stack.context.artifacts.list("finetunes/") if job_id in k]
    assert any(k.endswith("adapter_model.safetensors") for k in kept)


def test_a_killed_worker_resumes_from_its_checkpoint(stack: Stack, workers: Workers) -> None:
    """kill -9 mid-training: the next worker resumes from the last checkpoint, once."""
    victim = WorkerProcess(finetune_env(stack), stack.tmp / "finetune-victim.log", "gpu.finetune")
    workers.finetune.stop()  # the victim alone takes the job
    victim.start()
    client = openai_client(stack)
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=upload(client, dataset(ALPHA)),
        suffix=unique("resume"),
        extra_body={"seekq": {**TRAIN, "max_steps": 80, "checkpoint_every": 10}},
    )
    _wait_for(lambda: _progress(client, job.id).get("checkpoint_step", 0) >= 20)
    victim.kill9()
    killed_at = _progress(client, job.id)
    workers.finetune.start()
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    seekq = done.model_extra["seekq"]
    assert seekq["attempts"] == 2
    checkpoint = killed_at["checkpoint_step"]
    assert seekq["result"]["resumed_from_step"] >= checkpoint >= 20
    assert seekq["result"]["steps"] == 80
    job_id = seekq["job_id"]
    with stack.context.sessions() as session:
        adapters = session.scalar(select(func.count()).where(AdapterRow.job_id == job_id))
        events = session.scalars(
            select(FineTuneEventRow)
            .where(FineTuneEventRow.job_id == job_id)
            .order_by(FineTuneEventRow.id)
        ).all()
    assert adapters == 1
    resumed = [
        i for i, e in enumerate(events) if e.message.startswith("Resumed from the checkpoint")
    ]
    assert len(resumed) == 1
    after = [e.data["step"] for e in events[resumed[0] :] if e.type == "metrics"]
    assert after[0] == seekq["result"]["resumed_from_step"] + 1  # not from zero
    assert after == list(range(after[0], 81))
    assert greedy(stack, done.fine_tuned_model).startswith(ALPHA)


def _progress(client: openai.OpenAI, job_id: str) -> dict[str, Any]:
    return client.fine_tuning.jobs.retrieve(job_id).model_extra["seekq"]["progress"] or {}


def _wait_for(condition: Any, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)


def _finetune_jobs(stack: Stack) -> int:
    with stack.context.sessions() as session:
        query = select(func.count()).select_from(JobRow).where(JobRow.kind == "finetune")
        return int(session.scalar(query) or 0)


def test_seekq_finetune_cli_follows_the_job_to_its_adapter(
    stack: Stack, workers: Workers, tmp_path: Path
) -> None:
    env = stack_env(
        stack.database_url,
        stack.redis_db,
        stack.tmp,
        SEEKQ_URL=stack.url,
        SEEKQ_API_KEY=stack.key("acme"),
    )

    def seekq(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "seekq", "finetune", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)

    data = tmp_path / "support.jsonl"
    data.write_bytes(dataset(ALPHA))
    name = unique("cli")
    done = seekq(
        str(data),
        "--base",
        TINY_MODEL,
        "--name",
        name,
        "--steps",
        "40",
        "--lr",
        "3e-3",
        "--checkpoint-every",
        "20",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == f"{TINY_MODEL}:{name}"
    assert job["seekq"]["result"]["steps"] == 40
    listed = subprocess.run(
        [sys.executable, "-m", "seekq", "adapters", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    mine = {a["id"]: a for a in json.loads(listed.stdout)}
    assert mine[f"{TINY_MODEL}:{name}"]["metrics"]["steps"] == 40
    again = seekq(str(data), "--base", TINY_MODEL, "--name", name, "--steps", "2")
    assert again.returncode == 1 and "409 adapter_exists" in " ".join(again.stdout.split())
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(dataset(ALPHA, 12) + b"\n{}\n")
    refused = seekq(str(bad), "--base", TINY_MODEL)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    shown = " ".join(refused.stdout.split())
    assert "400 invalid_training_file" in shown and "line 13: empty line" in shown


def test_an_adapter_name_is_reserved_at_submit(stack: Stack, workers: Workers) -> None:
    """Two fine-tunes can never train towards one name: the second is refused at submit;
    the name is free again once the first is cancelled."""
    client = openai_client(stack)
    training = upload(client, dataset(ALPHA))
    name = unique("reserved")
    long = {**TRAIN, "max_steps": 5000, "checkpoint_every": 1000}

    def create(**params: Any) -> Any:
        return client.fine_tuning.jobs.create(
            model=TINY_MODEL, training_file=training, suffix=name, extra_body={"seekq": params}
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda _: _attempt(lambda: create(**long)), range(4)))
    made = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, openai.ConflictError)]
    assert len(made) == 1 and len(refused) == 3, outcomes
    client.fine_tuning.jobs.cancel(made[0].id)
    assert wait_done(client, made[0].id, 60).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        greedy(stack, f"{TINY_MODEL}:{name}")  # a reservation is not a model
    again = wait_done(client, create(max_steps=2, checkpoint_every=100).id)
    assert again.status == "succeeded", again.error
    assert again.fine_tuned_model == f"{TINY_MODEL}:{name}"


def _attempt(call: Any) -> Any:
    try:
        return call()
    except openai.APIError as exc:
        return exc
