"""Alembic environment: run against the URL the caller put in the config."""

from alembic import context
from sqlalchemy import Connection

from storage.db import make_engine
from storage.tables import Base

config = context.config


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "storage.migrate sets sqlalchemy.url"
    engine = make_engine(url)
    with engine.connect() as connection:
        run_with(connection)
    engine.dispose()


run_online()
