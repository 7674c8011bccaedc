"""LoRA adapters made by fine-tune jobs: registered in SQL, files in the artifact store.

An adapter is a plain PEFT directory (adapter_config.json + adapter_model.safetensors)
stored under `adapters/<tenant>/<adapter id>/`; `PeftModel.from_pretrained` loads a copy
of it outside seekq. It is served as the model `<base>:<name>` to its tenant only.

The adapter row is written with its fine-tune job (`reserve_adapter`, the kind's
on-submit effect: the name is reserved, status "training") and made ready in the same
transaction that marks the job succeeded (`register_adapter`, the on-success effect), so
an adapter is served exactly when its job succeeded, once, whatever the retries.
"""

import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import AdapterExistsError, ArtifactCorruptError, ModelNotFoundError
from jobs.finetune_specs import FineTuneResult, FineTuneSpec
from jobs.keys import Principal
from jobs.lifecycle import Claim
from jobs.registry import shown_name, split_model
from jobs.status import IN_FLIGHT
from storage.artifacts import ArtifactDigestError, ArtifactStore, get_verified
from storage.finetune_repos import AdapterRepo
from storage.repos import JobRepo
from storage.tables import AdapterRow, JobRow

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_id(job_id: str) -> str:
    """The adapter's id (also its name inside PEFT): fixed by the job that makes it."""
    return f"a_{uuid.UUID(job_id).hex}"


def adapter_prefix(tenant_id: str, adapter: str) -> str:
    return f"adapters/{tenant_id}/{adapter}"


class AdapterView(BaseModel):
    """An adapter as OpenAI lists a fine-tuned model, with seekq's details."""

    id: str  # <base>:<name>, the model name generate jobs use
    object: Literal["model"] = "model"
    created: int
    owned_by: str  # the tenant
    base_model: str
    adapter: str
    fine_tuning_job: str
    size_bytes: int
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]

    @classmethod
    def from_row(cls, row: AdapterRow, tenant_name: str) -> "AdapterView":
        return cls(
            id=f"{row.base_model}:{row.name}",
            created=int(row.created_at.timestamp()),
            owned_by=tenant_name,
            base_model=row.base_model,
            adapter=row.name,
            fine_tuning_job=f"ftjob-{uuid.UUID(row.job_id).hex}",
            size_bytes=row.size_bytes,
            metrics=row.metrics,
            hyperparameters=row.hyperparameters,
        )


def name_taken(session: Session, tenant_id: str, spec: FineTuneSpec) -> str | None:
    """Why `spec`'s adapter name cannot be used now, or None. A reservation left by a
    failed or cancelled fine-tune is removed here: its name is free again."""
    repo = AdapterRepo(session)
    row = repo.find(tenant_id, spec.model, spec.adapter, status=None)
    if row is None:
        return None
    if row.status == "ready":
        return (
            f"a fine-tuned model named '{spec.model_name}' exists; delete it first "
            "(DELETE /v1/models/{model}) or choose another suffix"
        )
    state = JobRepo(session).find_state(row.job_id)
    if state is not None and state[0] in IN_FLIGHT:
        return f"fine-tuning job {row.job_id} is already making '{spec.model_name}'"
    repo.remove(row)
    return None


def reserve_adapter(session: Session, *, job: JobRow) -> None:
    """The fine-tune's on-submit effect: reserve the adapter's name in the transaction
    that commits the job (unique per tenant and base), so two fine-tunes can never train
    towards one name; the second is refused at submit (409)."""
    spec = FineTuneSpec.from_stored(job.spec)
    taken = name_taken(session, job.tenant_id, spec)
    if taken is not None:
        raise AdapterExistsError(taken)
    adapter = adapter_id(job.id)
    row = AdapterRow(
        id=adapter,
        tenant_id=job.tenant_id,
        base_model=spec.model,
        name=spec.adapter,
        job_id=job.id,
        status="training",
        training_file=spec.training_file,
        hyperparameters=spec.hyperparameters.model_dump(mode="json"),
        metrics={},
        artifact_prefix=adapter_prefix(job.tenant_id, adapter),
        files={},
        created_at=datetime.now(UTC),
    )
    try:
        with session.begin_nested():  # a savepoint: only this insert fails on a race
            AdapterRepo(session).add(row)
    except IntegrityError:
        raise AdapterExistsError(f"'{spec.model_name}' was taken meanwhile") from None


def register_adapter(session: Session, *, claim: Claim, result: dict[str, Any]) -> None:
    """The fine-tune's on-success effect: its reserved adapter becomes ready, inside the
    job's success write. A replay of the same job finds it ready and does nothing."""
    row = AdapterRepo(session).find_by_job(claim.job_id)
    if row is None:  # the reservation was removed (the adapter deleted mid-training)
        raise AdapterExistsError("the adapter's reservation is gone; submit the job again")
    if row.status == "ready":
        return
    made = FineTuneResult.model_validate(result)
    row.status = "ready"
    row.dataset_sha256 = made.dataset_sha256
    row.metrics = {
        "train_loss": made.train_loss,
        "eval_loss": made.eval_loss,
        "steps": made.steps,
        "trained_tokens": made.trained_tokens,
        "trainable_params": made.trainable_params,
        "total_params": made.total_params,
    }
    row.files = made.adapter_files
    row.size_bytes = made.adapter_bytes
    row.created_at = datetime.now(UTC)
    session.flush()


class AdapterService:
    def __init__(self, sessions: sessionmaker[Session], artifacts: ArtifactStore) -> None:
        self.sessions = sessions
        self.artifacts = artifacts

    def find(self, tenant_id: str, model: str) -> AdapterRow | None:
        base, name = split_model(model)
        if name is None:
            return None
        with self.sessions() as session:
            return AdapterRepo(session).find(tenant_id, base, name)

    def get(self, tenant_id: str, model: str) -> AdapterRow:
        row = self.find(tenant_id, model)
        if row is None:
            raise ModelNotFoundError(f"no fine-tuned model named {shown_name(model)}")
        return row

    def all(self, who: Principal) -> list[AdapterView]:
        with self.sessions() as session:
            rows = AdapterRepo(session).all(who.tenant_id)
        return [AdapterView.from_row(r, who.tenant_name) for r in rows]

    def delete(self, who: Principal, model: str) -> None:
        """Forget the adapter; workers drop it from memory when it is next evicted."""
        with self.sessions.begin() as session:
            repo = AdapterRepo(session)
            base, name = split_model(model)
            row = repo.find(who.tenant_id, base, name) if name else None
            if row is None:  # a name still training is not a model yet: cancel its job
                raise ModelNotFoundError(f"no fine-tuned model named {shown_name(model)}")
            prefix = row.artifact_prefix
            repo.remove(row)
        for key in self.artifacts.list(prefix + "/"):
            self.artifacts.delete(key)

    def store(self, tenant_id: str, adapter: str, directory: Path) -> dict[str, dict[str, Any]]:
        """Copy a saved PEFT directory's files to the artifact store: {name: {size, sha256}}."""
        present = {p.name for p in directory.iterdir() if p.is_file()}
        missing = [f for f in ADAPTER_FILES if f not in present]
        if missing:
            raise FileNotFoundError(f"adapter directory lacks {', '.join(missing)}")
        files = {}
        for name in ADAPTER_FILES:
            key = f"{adapter_prefix(tenant_id, adapter)}/{name}"
            info = self.artifacts.put(key, (directory / name).read_bytes())
            files[name] = {"size": info.size, "sha256": info.sha256}
        return files

    def local_copy(self, row: AdapterRow, cache_dir: Path) -> Path:
        """The adapter as a local PEFT directory under `cache_dir`, fetched once and
        checked against the sha256 recorded when it was registered."""
        target = cache_dir / row.id
        if target.is_dir():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache_dir))
        try:
            for name, info in row.files.items():
                key = f"{row.artifact_prefix}/{name}"
                try:
                    data = get_verified(self.artifacts, key, info["sha256"], info.get("size"))
                except ArtifactDigestError:
                    raise ArtifactCorruptError(key, "adapter file") from None
                (staging / name).write_bytes(data)
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
