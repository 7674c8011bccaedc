"""`seekq flower`: Celery's Flower against seekq's broker, never without authentication.

Loopback by default; basic auth from SEEKQ_FLOWER_BASIC_AUTH (`user:password`, a password
of at least 12 characters), or, on the embedded SQLite setup only, credentials generated
once into `<data dir>/flower.auth` (0600). Flower's OAuth providers work too: set
FLOWER_AUTH_PROVIDER and its FLOWER_OAUTH2_* variables as Flower documents, plus
SEEKQ_FLOWER_AUTH (the e-mail regex). State (tasks seen, their events) is saved to
`<data dir>/flower.db`, so a restart keeps the history Flower has seen; queued jobs and
older history are in SQL (`GET /v1/jobs`), not in Flower.

Flower shows task arguments: seekq's messages carry a job id and nothing else.
"""

import os
import secrets

from celery import Celery
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.errors import ConfigError
from jobs.queue import make_celery
from jobs.settings import JobsSettings, get_jobs_settings, read_or_create
from storage.settings import StorageSettings, get_storage_settings

MIN_PASSWORD_CHARS = 12
AUTH_FILE = "flower.auth"


class FlowerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEEKQ_FLOWER_", extra="ignore")

    address: str = "127.0.0.1"
    port: int = Field(default=5555, ge=1, le=65535)
    basic_auth: SecretStr | None = None  # "user:password"
    auth: str | None = None  # with an OAuth provider: the e-mail regex Flower lets in


def basic_auth(settings: FlowerSettings, storage: StorageSettings) -> str | None:
    """`user:password` for Flower's --basic-auth; None when OAuth is configured instead."""
    if settings.basic_auth is not None:
        return _checked(settings.basic_auth.get_secret_value())
    if settings.auth and os.environ.get("FLOWER_AUTH_PROVIDER"):
        return None
    if not storage.uses_sqlite:
        raise ConfigError(
            "Flower needs authentication: set SEEKQ_FLOWER_BASIC_AUTH=user:password (or "
            "FLOWER_AUTH_PROVIDER with SEEKQ_FLOWER_AUTH for OAuth)"
        )
    return read_or_create(
        storage.data_dir / AUTH_FILE, lambda: f"seekq:{secrets.token_urlsafe(18)}"
    )


def flower_argv(settings: FlowerSettings, storage: StorageSettings) -> list[str]:
    argv = [
        "flower",
        f"--address={settings.address}",
        f"--port={settings.port}",
        "--persistent=True",
        f"--db={storage.data_dir / 'flower.db'}",
        "--state_save_interval=60000",
    ]
    credentials = basic_auth(settings, storage)
    if credentials is not None:
        argv.append(f"--basic-auth={credentials}")
    else:
        argv.append(f"--auth={settings.auth}")
    return argv


def run_flower() -> None:
    settings, storage = FlowerSettings(), get_storage_settings()
    storage.data_dir.mkdir(parents=True, exist_ok=True)
    argv = flower_argv(settings, storage)
    flower_celery(get_jobs_settings()).start(argv=argv)


def flower_celery(settings: JobsSettings) -> Celery:
    """seekq's Celery config on kombu's own Redis transport. Flower reads the broker URL
    back from the connection to count queued messages and knows only the redis and rediss
    schemes, which seekq's transport (jobs.broker) renames; the TLS options still come from
    `broker_use_ssl`."""
    app = make_celery(settings)
    app.conf.broker_transport = None
    return app


def _checked(value: str) -> str:
    user, sep, password = value.partition(":")
    if not sep or not user or len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(
            f"SEEKQ_FLOWER_BASIC_AUTH must be user:password with a password of at least "
            f"{MIN_PASSWORD_CHARS} characters"
        )
    return value
