"""Batch jobs on the worker: every line of an OpenAI batch input file runs as its own
`generate` or `embed` sub-job, through the normal queues; the batch follows them in SQL
and, once they are done (or the batch is cancelled or expires), writes the output and
error files in the input's order.

Phases (`progress.phase`, OpenAI's statuses): validating — each line's body is checked
as the synchronous endpoint would check it (a bad line fails alone, into the error file),
then the sub-jobs are committed in chunks and published; in_progress — request counts
from SQL every second; finalizing — the files are assembled from the sub-jobs' results.
A cancel or the end of the completion window cancels the lines still queued, lets those
running finish, and delivers what finished (a partial output file). A retried attempt
finds the sub-jobs it made by their idempotency keys and carries on.
"""

import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from jobs.batch_specs import BatchResult, BatchSpec
from jobs.catalog import CATALOG, JobKind, KindEntry
from jobs.context import JobsContext
from jobs.errors import (
    ConfigError,
    ContextLengthError,
    JobCancelledError,
    ModelNotFoundError,
    SeekqError,
    SpecError,
)
from jobs.keys import Principal
from jobs.openai_formats import batch_error, batch_job_spec, batch_response_body
from jobs.records import JobView
from jobs.status import JobStatus
from storage.index_repos import SubJobRepo
from storage.tables import JobRow
from workers.pool import ModelPool
from workers.runners import RunningJob

log = logging.getLogger(__name__)

POLL_S = 1.0
CHUNK = 500
LINE_PRIORITY = 2  # below interactive requests
DRAIN_S = 600.0  # a cancelled or expired batch waits this long for its running lines
TERMINAL = {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}
LIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELLING.value)
CODES: dict[type[SeekqError], str] = {
    ContextLengthError: "context_length_exceeded",
    ModelNotFoundError: "model_not_found",
    SpecError: "invalid_request",
}


def run_batch(spec: BaseModel, pool: ModelPool, job: RunningJob) -> BaseModel:
    assert isinstance(spec, BatchSpec)
    if pool.context is None:
        raise ConfigError("batch jobs need the worker's job context")
    return BatchRun(pool.context, job, spec).run()


class BatchRun:
    def __init__(self, context: JobsContext, job: RunningJob, spec: BatchSpec) -> None:
        self.context = context
        self.job = job
        self.spec = spec
        self.who = Principal(tenant_id=job.tenant_id, tenant_name="", key_id=f"batch:{job.job_id}")
        self.progress: dict[str, Any] = {"phase": "validating", "total": 0}

    def run(self) -> BatchResult:
        created = self.context.service.get(self.who, self.job.job_id).created_at
        deadline = created + timedelta(seconds=self.spec.completion_window_s)
        lines = self.context.files.batch_lines(self.job.tenant_id, self.spec.input_file_id)
        self.progress.update(total=len(lines), completed=0, failed=0)
        self._report()
        invalid, job_ids = self._submit(lines)
        self.progress.update(phase="in_progress", in_progress_at=int(time.time()))
        outcome = self._follow(deadline, len(invalid))
        self.progress.update(phase="finalizing", finalizing_at=int(time.time()))
        self._report()
        result = self._finalize(lines, invalid, job_ids, outcome)
        if outcome == "cancelled":
            raise JobCancelledError("batch cancelled", result.model_dump(mode="json"))
        return result

    # ------------------------------------------------------------ validating

    def _submit(
        self, lines: list[dict[str, Any]]
    ) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
        """Each valid line as a sub-job (committed in chunks, then published): the errors
        of the invalid lines, and the sub-job id of every other line, by line number."""
        invalid: dict[int, dict[str, str]] = {}
        job_ids: dict[int, str] = {}
        for start in range(0, len(lines), CHUNK):
            chunk = lines[start : start + CHUNK]
            prepared = [(line, self._prepare(line, invalid)) for line in chunk]
            made = self._commit([(line, p) for line, p in prepared if p is not None])
            job_ids.update(made)
            if self.job.should_stop():
                break
        return invalid, job_ids

    def _prepare(
        self, line: dict[str, Any], invalid: dict[int, dict[str, str]]
    ) -> tuple[JobKind, dict[str, Any]] | None:
        try:
            kind, spec = batch_job_spec(line["url"], line["body"])
            entry, masked, _ = self.context.service.prepare(self.who, kind.value, spec)
        except SeekqError as exc:
            invalid[line["line"]] = {"code": _code(exc), "message": str(exc)[:1000]}
            return None
        return entry.kind, masked

    def _commit(
        self, prepared: list[tuple[dict[str, Any], tuple[JobKind, dict[str, Any]]]]
    ) -> dict[int, str]:
        now = datetime.now(UTC)
        made: dict[int, str] = {}
        to_publish: list[tuple[JobKind, str]] = []
        with self.context.sessions.begin() as session:
            repo = SubJobRepo(session, self.job.job_id)
            existing = repo.existing()
            for line, (kind, spec) in prepared:
                key = f"{self.job.job_id}/line/{line['line']}"
                found = existing.get(key)
                if found is None:
                    row = self._row(key, kind, spec, now)
                    repo.insert(row)
                    found = (row.id, row.status)
                made[line["line"]] = found[0]
                if found[1] == JobStatus.QUEUED.value:
                    to_publish.append((kind, found[0]))
        for kind, job_id in to_publish:
            self.context.service.publisher.publish(_entry(kind), job_id)
        return made

    def _row(self, key: str, kind: JobKind, spec: dict[str, Any], now: datetime) -> JobRow:
        return JobRow(
            id=str(uuid.uuid4()),
            tenant_id=self.job.tenant_id,
            kind=kind.value,
            status=JobStatus.QUEUED.value,
            priority=LINE_PRIORITY,
            actor=self.who.key_id[:64],
            spec=spec,  # masked: the input file was masked when it was uploaded
            attempt=0,
            idempotency_key=key,
            parent_id=self.job.job_id,
            created_at=now,
        )

    # ------------------------------------------------------------ in progress

    def _follow(self, deadline: datetime, invalid: int) -> str:
        """Until every line is done ("completed"), or the batch is cancelled or past its
        window (then the queued lines are cancelled and the running ones finish)."""
        while True:
            counts = self._counts(invalid)
            if counts["live"] == 0:
                return "completed"
            if self.job.should_stop():
                if not self._cancel_requested():
                    raise JobCancelledError("this attempt lost the batch", None)
                return self._drain("cancelled", invalid)
            if datetime.now(UTC) >= deadline:
                return self._drain("expired", invalid)
            time.sleep(POLL_S)

    def _drain(self, outcome: str, invalid: int) -> str:
        values = {"status": JobStatus.CANCELLED.value, "finished_at": datetime.now(UTC)}
        with self.context.sessions.begin() as session:
            repo = SubJobRepo(session, self.job.job_id)
            cancelled = repo.cancel_queued([JobStatus.QUEUED.value], values)
        log.info(
            "batch %s: %d queued line(s) cancelled job_id=%s", outcome, cancelled, self.job.job_id
        )
        give_up = time.monotonic() + DRAIN_S
        while self._counts(invalid)["live"] and time.monotonic() < give_up:
            time.sleep(POLL_S)
        return outcome

    def _counts(self, invalid: int) -> dict[str, int]:
        with self.context.sessions() as session:
            by_status = SubJobRepo(session, self.job.job_id).status_counts()
        completed = by_status.get(JobStatus.SUCCEEDED.value, 0)
        failed = by_status.get(JobStatus.FAILED.value, 0) + invalid
        self.progress.update(completed=completed, failed=failed)
        self._report()
        return {"live": sum(by_status.get(s, 0) for s in LIVE)}

    def _cancel_requested(self) -> bool:
        status = self.context.service.get(self.who, self.job.job_id).status
        return status == JobStatus.CANCELLING.value

    def _report(self) -> None:
        self.context.lifecycle().report(self.job.job_id, self.job.attempt, dict(self.progress))

    # ------------------------------------------------------------ finalizing

    def _finalize(
        self,
        lines: list[dict[str, Any]],
        invalid: dict[int, dict[str, str]],
        job_ids: dict[int, str],
        outcome: str,
    ) -> BatchResult:
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for start in range(0, len(lines), CHUNK):
            chunk = lines[start : start + CHUNK]
            rows = self._rows([job_ids[line["line"]] for line in chunk if line["line"] in job_ids])
            for line in chunk:
                row = rows.get(job_ids.get(line["line"], ""))
                good, bad = self._line_result(line, row, invalid.get(line["line"]), outcome)
                if good is not None:
                    output.append(good)
                if bad is not None:
                    errors.append(bad)
        return BatchResult(
            outcome=outcome,  # type: ignore[arg-type]
            output_file_id=self._store("output", output),
            error_file_id=self._store("error", errors),
            total=len(lines),
            completed=len(output),
            failed=len(errors),
            in_progress_at=self.progress.get("in_progress_at"),
            finalizing_at=self.progress.get("finalizing_at"),
        )

    def _line_result(
        self,
        line: dict[str, Any],
        row: JobRow | None,
        invalid: dict[str, str] | None,
        outcome: str,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(output line, error line): exactly one of them is set."""
        custom_id = line["custom_id"]
        if invalid is not None:
            body = {"error": {**invalid, "type": "invalid_request_error", "param": None}}
            status = 404 if invalid["code"] == "model_not_found" else 400
            return None, _line(custom_id, None, {"status_code": status, "body": body}, None)
        if row is None or row.status not in TERMINAL or row.status == JobStatus.CANCELLED.value:
            code = "batch_expired" if outcome == "expired" else "batch_cancelled"
            message = f"the batch was {outcome} before this request ran"
            request_id = row.id if row is not None else None
            return None, _line(custom_id, request_id, None, {"code": code, "message": message})
        job = JobView.from_row(row)
        if row.status == JobStatus.SUCCEEDED.value:
            try:
                status, body = batch_response_body(line["url"], line["body"], job)
            except SeekqError as exc:  # e.g. `dimensions` the model does not produce
                error = {"code": _code(exc), "message": str(exc)[:1000]}
                body = {"error": {**error, "type": "invalid_request_error", "param": None}}
                return None, _line(custom_id, row.id, {"status_code": 400, "body": body}, None)
            return _line(custom_id, row.id, {"status_code": status, "body": body}, None), None
        body = {"error": {**batch_error(job), "type": "server_error", "param": None}}
        return None, _line(custom_id, row.id, {"status_code": 500, "body": body}, None)

    def _rows(self, job_ids: list[str]) -> dict[str, JobRow]:
        with self.context.sessions() as session:
            return {row.id: row for row in SubJobRepo(session, self.job.job_id).rows(job_ids)}

    def _store(self, what: str, records: list[dict[str, Any]]) -> str | None:
        if not records:
            return None
        content = "".join(_json(r) + "\n" for r in records).encode()
        name = f"batch_{uuid.UUID(self.job.job_id).hex}_{what}.jsonl"
        return self.context.files.store_output(self.who, name, content, len(records)).id


def _line(
    custom_id: str,
    request_id: str | None,
    response: dict[str, Any] | None,
    error: dict[str, str] | None,
) -> dict[str, Any]:
    if response is not None:
        response = {**response, "request_id": request_id}
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _code(exc: SeekqError) -> str:
    for error_type, code in CODES.items():
        if isinstance(exc, error_type):
            return code
    return type(exc).__name__


def _entry(kind: JobKind) -> KindEntry:
    return CATALOG[kind]
