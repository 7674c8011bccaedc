"""Settings of the job domain, read from SEEKQ_* environment variables."""

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.errors import ConfigError
from jobs.specs import MAX_NEW_TOKENS
from storage.settings import StorageSettings

PLACEHOLDER_SECRETS = {"changeme", "change-me", "changethis", "secret", "password", "seekq"}
MIN_SECRET_CHARS = 32


class JobsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEEKQ_", extra="ignore")

    # redis://[user]:password@host:port/db, or rediss://...?ssl_ca_certs=...&ssl_certfile=...
    # &ssl_keyfile=... (jobs.broker.broker_tls). Left out of repr: it may hold a password.
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    # Keys the PII fingerprints and the API-key hashes. Unset with SQLite: generated once
    # into the data dir (0600). Unset with any other database: refused.
    secret_key: SecretStr | None = None
    # A Redis command that gets no answer this long fails (publishes, the consumer's reads);
    # the consumer checks an idle connection this often (kombu's default is 25 s).
    broker_socket_timeout_s: float = Field(default=5.0, gt=0, le=300)
    broker_health_check_s: int = Field(default=10, ge=1, le=300)
    # Redis redelivers an unacked message after this long; a long job keeps its SQL lease.
    visibility_timeout_s: int = Field(default=3600, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Workers re-publish jobs whose lease ran out (their worker died) this often (seconds);
    # 0 turns the sweep off in that process.
    reconcile_every_s: float = Field(default=10.0, ge=0, le=3600)
    # The same sweep publishes queued jobs that have had no message for this long (Redis
    # was down at submit, or the submitting process died between commit and publish).
    dispatch_grace_s: float = Field(default=10.0, ge=0, le=3600)
    # Per-kind time limits overriding the catalog's, in seconds: {"generate": 600}. At 90%
    # the job is asked to stop and fails `TimeLimitExceededError`; at 100% a runner that
    # did not stop is failed anyway and its worker process exits (workers.execution).
    time_limits_s: dict[str, float] = {}
    # The models file (JSON); unset: <data dir>/models.json.
    models_file: Path | None = None
    # The largest max_new_tokens a generate job may ask for on this server.
    max_new_tokens: int = Field(default=1024, ge=1, le=MAX_NEW_TOKENS)
    # The largest document file an upload (POST /v1/files, seekq ingest) may be.
    max_file_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=1024**3)
    # Fine-tune datasets: at least this many examples (OpenAI's minimum), at most that many.
    finetune_min_examples: int = Field(default=10, ge=1, le=100_000)
    finetune_max_examples: int = Field(default=50_000, ge=1, le=10_000_000)
    # OpenAI batches: requests per batch input file.
    batch_max_lines: int = Field(default=50_000, ge=1, le=1_000_000)
    # A batch lets its lines out this many at a time (queued or running), and a tenant's
    # batches together at most batch_tenant_window: interactive requests and other
    # tenants' batches never wait behind more than that.
    batch_window: int = Field(default=64, ge=1, le=100_000)
    batch_tenant_window: int = Field(default=128, ge=1, le=1_000_000)
    # Jobs a tenant may have queued or running (top-level: a batch counts once, its lines
    # are held back by the windows above); more are refused with 429 + Retry-After at
    # submit instead of growing the queue without bound. 0: no limit.
    tenant_max_jobs_in_flight: int = Field(default=10_000, ge=0, le=10_000_000)
    # Input tokens (estimated: UTF-8 bytes / 4) a tenant may have queued or running, as
    # OpenAI's batch queue limit; a batch counts its whole input file. 0: no limit.
    tenant_max_enqueued_tokens: int = Field(default=50_000_000, ge=0, le=10**12)
    # Index jobs embed through sub-jobs on the embed queue of about this many tokens each.
    index_embed_batch_tokens: int = Field(default=8192, ge=256, le=1_000_000)
    # Webhooks: destinations in these networks (CIDR, JSON list) are allowed even though
    # private; every other private, loopback, link-local or reserved address is refused.
    webhook_allowed_networks: tuple[str, ...] = ()
    # Plain-http webhook URLs (https only by default).
    webhook_allow_http: bool = False
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Waits before the 2nd, 3rd, ... attempt of a failed delivery (seconds); once used up
    # the delivery fails. The default spreads 8 attempts over about 27 hours.
    webhook_retry_delays_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_max_endpoints: int = Field(default=16, ge=1, le=1000)
    # Models allowed to run code shipped with them (trust_remote_code). Empty by default.
    trust_remote_code: frozenset[str] = frozenset()

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @field_validator("webhook_retry_delays_s")
    @classmethod
    def _delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 20 or any(not 0 <= d <= 7 * 86400 for d in value):
            raise ValueError("at most 20 delays, each from 0 to 604800 seconds")
        return value

    @field_validator("time_limits_s")
    @classmethod
    def _time_limits(cls, value: dict[str, float]) -> dict[str, float]:
        from jobs.catalog import JobKind  # the catalog imports these settings' neighbours

        unknown = sorted(set(value) - {kind.value for kind in JobKind})
        if unknown:
            raise ValueError(f"unknown job kinds {unknown}; known: {[k.value for k in JobKind]}")
        if any(not 1 <= limit_s <= 7 * 86400 for limit_s in value.values()):
            raise ValueError("each time limit is from 1 to 604800 seconds")
        return value

    def resolved_models_file(self, storage: StorageSettings) -> Path:
        return self.models_file or storage.data_dir / "models.json"


@lru_cache
def get_jobs_settings() -> JobsSettings:
    return JobsSettings()


def load_secret_key(settings: JobsSettings, storage: StorageSettings) -> bytes:
    """The server secret: from SEEKQ_SECRET_KEY, or a generated file for embedded setups."""
    if settings.secret_key is not None:
        return _checked(settings.secret_key.get_secret_value())
    if not storage.uses_sqlite:
        raise ConfigError("SEEKQ_SECRET_KEY must be set when SEEKQ_DATABASE_URL is not SQLite")
    return _checked(
        read_or_create(storage.data_dir / "secret.key", lambda: secrets.token_urlsafe(48))
    )


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A sub-key per purpose, so one leaked use cannot be replayed for another."""
    return hmac.new(secret, f"seekq/{purpose}".encode(), hashlib.sha256).digest()


def _checked(value: str) -> bytes:
    if value.strip().lower() in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"SEEKQ_SECRET_KEY must be a random value of at least {MIN_SECRET_CHARS} characters"
        )
    return value.encode()


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """A generated secret kept in a file (0600): read if it exists, else `make()` written
    once. O_EXCL: two processes starting together agree on the first file written."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value
