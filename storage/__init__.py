"""Persistence: SQL tables, repositories (take a Session, never commit), migrations."""

from storage.db import make_engine, make_session_factory
from storage.settings import StorageSettings, get_storage_settings

__all__ = ["StorageSettings", "get_storage_settings", "make_engine", "make_session_factory"]
