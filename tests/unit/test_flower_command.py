"""`seekq flower` never starts without authentication, and never with a weak password."""

import stat
from pathlib import Path

import pytest

from jobs.errors import ConfigError
from seekq.flower_command import FlowerSettings, flower_argv
from storage.settings import StorageSettings

POSTGRES = "postgresql+psycopg://seekq@db/seekq"


def test_given_credentials_are_checked_and_passed_on(tmp_path: Path) -> None:
    storage = StorageSettings(data_dir=tmp_path, database_url=POSTGRES)
    argv = flower_argv(FlowerSettings(basic_auth="ops:correct-horse-battery"), storage)
    assert "--basic-auth=ops:correct-horse-battery" in argv
    assert "--address=127.0.0.1" in argv and "--persistent=True" in argv
    assert f"--db={tmp_path / 'flower.db'}" in argv
    for weak in ("ops:short", "nopassword", ":no-user-at-all-here"):
        with pytest.raises(ConfigError, match="SEEKQ_FLOWER_BASIC_AUTH"):
            flower_argv(FlowerSettings(basic_auth=weak), storage)


def test_without_credentials_postgres_setups_refuse_to_start(tmp_path: Path) -> None:
    storage = StorageSettings(data_dir=tmp_path, database_url=POSTGRES)
    with pytest.raises(ConfigError, match="Flower needs authentication"):
        flower_argv(FlowerSettings(), storage)


def test_the_embedded_setup_generates_credentials_once(tmp_path: Path) -> None:
    storage = StorageSettings(data_dir=tmp_path)
    first = flower_argv(FlowerSettings(), storage)
    again = flower_argv(FlowerSettings(), storage)
    auth = next(a for a in first if a.startswith("--basic-auth="))
    assert auth in again
    user, password = auth.removeprefix("--basic-auth=").split(":")
    assert user == "seekq" and len(password) >= 20
    assert stat.S_IMODE((tmp_path / "flower.auth").stat().st_mode) == 0o600
