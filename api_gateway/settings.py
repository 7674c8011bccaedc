"""Gateway settings, read from SEEKQ_* environment variables."""

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEEKQ_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Whole request bodies above this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # How long synchronous endpoints (/v1/embeddings) wait for their job.
    wait_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    # When set, GET /metrics asks for `Authorization: Bearer <this>` (Prometheus's
    # `authorization` / `bearer_token_file`); unset, it is open, like most exporters:
    # it holds route templates and counts, no tenant data.
    metrics_token: SecretStr | None = None
    # Tenants whose keys may look at any tenant's jobs on the dashboard (its tenant
    # filter; a JSON list of tenant names). Empty: every tenant sees its own only.
    dashboard_admin_tenants: frozenset[str] = frozenset()
    # Requests per minute per API key (api_gateway.rate_limit), shared by every gateway
    # through Redis; a key may send `rate_limit_burst` at once. 0 turns the limit off.
    rate_limit_per_minute: int = Field(default=6000, ge=0, le=10_000_000)
    rate_limit_burst: int = Field(default=600, ge=1, le=1_000_000)


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    return GatewaySettings()
