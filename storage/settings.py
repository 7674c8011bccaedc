"""Storage settings, read from SEEKQ_* environment variables."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEEKQ_", extra="ignore")

    data_dir: Path = Path(".seekq")
    # Unset: a SQLite file in the data dir. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    pool_size: int = Field(default=5, ge=1, le=100)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'seekq.db').resolve()}"

    @property
    def uses_sqlite(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")


@lru_cache
def get_storage_settings() -> StorageSettings:
    return StorageSettings()
