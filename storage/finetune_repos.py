"""Repositories of the fine-tune tables: adapters and fine-tune events."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.tables import AdapterRow, FineTuneEventRow


class AdapterRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: AdapterRow) -> None:
        self.session.add(row)

    def find(
        self, tenant_id: str, base_model: str, name: str, status: str | None = "ready"
    ) -> AdapterRow | None:
        """The adapter of that name (`status` None: ready or still training)."""
        query = select(AdapterRow).where(
            AdapterRow.tenant_id == tenant_id,
            AdapterRow.base_model == base_model,
            AdapterRow.name == name,
        )
        if status is not None:
            query = query.where(AdapterRow.status == status)
        return self.session.scalar(query)

    def find_by_job(self, job_id: str) -> AdapterRow | None:
        return self.session.scalar(select(AdapterRow).where(AdapterRow.job_id == job_id))

    def all(self, tenant_id: str) -> Sequence[AdapterRow]:
        """The tenant's ready adapters."""
        query = select(AdapterRow).where(
            AdapterRow.tenant_id == tenant_id, AdapterRow.status == "ready"
        )
        return self.session.scalars(query.order_by(AdapterRow.base_model, AdapterRow.name)).all()

    def remove(self, row: AdapterRow) -> None:
        self.session.delete(row)
        self.session.flush()


class FineTuneEventRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: FineTuneEventRow) -> None:
        self.session.add(row)

    def page(self, job_id: str, limit: int, before_id: int | None) -> Sequence[FineTuneEventRow]:
        """Newest first (OpenAI's order); `before_id` continues after a page's last event."""
        query = select(FineTuneEventRow).where(FineTuneEventRow.job_id == job_id)
        if before_id is not None:
            query = query.where(FineTuneEventRow.id < before_id)
        return self.session.scalars(query.order_by(FineTuneEventRow.id.desc()).limit(limit)).all()
