"""The job domain without I/O: specs, statuses, catalog, settings, batching, error mapping."""

import math

import pytest
from pydantic import ValidationError

from api_gateway.errors import status_for
from jobs import errors
from jobs.catalog import CATALOG, JobKind, get_entry, parse_spec, queues
from jobs.pii import PiiMasker
from jobs.service import IdempotencyConflictError, mask_spec
from jobs.settings import JobsSettings, load_secret_key
from jobs.specs import MAX_EMBED_INPUTS, EmbedSpec
from jobs.status import ALLOWED, TERMINAL, JobStatus, check_transition
from storage.settings import StorageSettings


def test_terminal_statuses_allow_nothing() -> None:
    for status in TERMINAL:
        assert ALLOWED[status] == frozenset()
        for target in JobStatus:
            with pytest.raises(errors.InvalidTransitionError):
                check_transition(status, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "running"),
        ("queued", "cancelled"),
        ("running", "succeeded"),
        ("running", "cancelling"),
        ("running", "running"),
        ("cancelling", "cancelled"),
    ],
)
def test_allowed_transitions(current: str, target: str) -> None:
    check_transition(JobStatus(current), JobStatus(target))


@pytest.mark.parametrize(
    ("current", "target"),
    [("queued", "succeeded"), ("queued", "cancelling"), ("cancelling", "running")],
)
def test_forbidden_transitions(current: str, target: str) -> None:
    with pytest.raises(errors.InvalidTransitionError, match="cannot become"):
        check_transition(JobStatus(current), JobStatus(target))


@pytest.mark.parametrize(
    "raw",
    [
        {"input": "not a list"},
        {"input": [1]},
        {"input": ["ok"], "normalize": 1},
        {"input": ["ok"], "normalize": "true"},
        {"input": ["ok"], "extra": 1},
        {"input": []},
        {"input": ["x"] * (MAX_EMBED_INPUTS + 1)},
        {"input": ["ok"], "model": "a/b"},
        {"input": ["ok"], "model": ""},
    ],
)
def test_embed_spec_is_strict(raw: dict[str, object]) -> None:
    with pytest.raises(errors.SpecError):
        parse_spec(get_entry("embed"), raw)


def test_spec_errors_never_echo_input() -> None:
    secret = "4111111111111111-secret"
    with pytest.raises(errors.SpecError) as caught:
        parse_spec(get_entry("embed"), {"input": [secret, 5], "surprise": secret})
    assert secret not in str(caught.value)
    assert "input.1" in str(caught.value) and "surprise" in str(caught.value)


def test_nan_is_not_a_float() -> None:
    from jobs.specs import StrictModel

    class WithFloat(StrictModel):
        value: float

    with pytest.raises(ValidationError):
        WithFloat(value=math.nan)
    with pytest.raises(ValidationError):
        WithFloat.model_validate({"value": math.inf})


def test_catalog_shape() -> None:
    assert get_entry("embed").queue == "gpu.embed"
    assert get_entry(JobKind.EMBED).task_name == "seekq.embed"
    assert "gpu.embed" in queues()
    assert get_entry("generate").queue == "gpu.generate"
    assert get_entry("index").queue == "cpu.index"
    assert get_entry("search").queue == "cpu.search"
    assert get_entry("finetune").queue == "gpu.finetune"
    assert get_entry("finetune").on_success is not None  # the adapter is registered with it
    with pytest.raises(errors.SpecError, match="unknown job kind"):
        get_entry("teleport")
    for entry in CATALOG.values():
        assert entry.soft_time_limit_s < entry.time_limit_s
        for field in entry.pii_fields:
            assert field in entry.spec_model.model_fields


def test_mask_spec_masks_every_pii_field_and_counts() -> None:
    masker = PiiMasker(b"k" * 32)
    spec = EmbedSpec(input=["card 4111 1111 1111 1111", "mail a@example.com", "plain"])
    masked, counts = mask_spec(get_entry("embed"), spec, masker)
    assert "4111 1111 1111 1111" not in str(masked) and "a@example.com" not in str(masked)
    assert masked["input"][2] == "plain"
    assert counts == {"CARD_NUMBER": 1, "EMAIL": 1}


def test_placeholder_and_short_secrets_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sqlite = StorageSettings(data_dir=tmp_path)
    for bad in ["changeme", "short", "secret"]:
        with pytest.raises(errors.ConfigError):
            load_secret_key(JobsSettings(secret_key=bad), sqlite)  # type: ignore[arg-type]
    postgres = StorageSettings(database_url="postgresql+psycopg://db/x", data_dir=tmp_path)
    with pytest.raises(errors.ConfigError, match="must be set"):
        load_secret_key(JobsSettings(), postgres)


def test_embedded_secret_is_generated_once_and_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    storage = StorageSettings(data_dir=tmp_path)
    first = load_secret_key(JobsSettings(), storage)
    assert first == load_secret_key(JobsSettings(), storage)
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.SpecError("x"), 422),
        (IdempotencyConflictError("x"), 409),
        (errors.JobNotFoundError("x"), 404),
        (errors.ModelNotFoundError("x"), 404),
        (errors.AuthError("x"), 401),
        (errors.BrokerUnavailableError("x"), 503),
        (errors.InvalidTransitionError("x"), 409),
        (errors.JobFailedError("x"), 502),
        (errors.JobTimeoutError("x"), 503),
    ],
)
def test_http_status_is_chosen_at_the_edge(error: errors.SeekqError, status: int) -> None:
    assert status_for(error)[0] == status


def test_token_batches_respect_budget_and_sort_longest_first() -> None:
    from workers.backends.hf import token_batches

    lengths = [5, 100, 7, 60, 60, 3, 250]
    batches = list(token_batches(lengths, budget=256, max_batch=3))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        padded = max(lengths[i] for i in batch)
        assert padded * len(batch) <= 256 or len(batch) == 1
    assert batches[0] == [6]  # the 250-token text alone: a second would exceed the budget
    assert [lengths[i] for i in batches[1]] == [100, 60]


def test_gpu_pinning_sets_cuda_visible_devices_before_torch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import typer

    from seekq.worker_command import _pin_gpu

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SEEKQ_DEVICE", raising=False)
    _pin_gpu(1, "solo")
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["SEEKQ_DEVICE"] == "cuda"
    with pytest.raises(typer.BadParameter, match="CUDA-safe"):
        _pin_gpu(0, "prefork")
    with pytest.raises(typer.BadParameter):
        _pin_gpu(-1, "solo")
