"""Batch jobs on the worker: every line of an OpenAI batch input file runs as its own
`generate` or `embed` sub-job, through the normal queues; the batch follows them in SQL
and, once they are done (or the batch is cancelled or expires), writes the output and
error files in the input's order.

Phases (`progress.phase`, OpenAI's statuses): in_progress — lines are let out a window
at a time (`SEEKQ_BATCH_WINDOW` queued or running per batch, `SEEKQ_BATCH_TENANT_WINDOW`
per tenant over all its batches): each line's body is checked as the synchronous endpoint
would check it (a bad line fails alone, into the error file), then committed as a
sub-job and published; request counts come from SQL every 0.2 s; finalizing — the files
are assembled from the sub-jobs' results. Windows are what keep a 50,000-line batch from
filling the queues ahead of interactive requests and of other tenants' batches: Redis
lists are FIFO, and seekq does not rely on Celery's emulated Redis priorities.
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
from jobs.catalog import CATALOG, JobKind
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
from jobs.openai_formats import (
    BATCH_ENDPOINTS,
    batch_error,
    batch_job_spec,
    batch_response_body,
)
from jobs.records import JobView
from jobs.status import HELD, IN_FLIGHT, JobStatus
from storage.index_repos import SubJobRepo
from storage.tables import JobRow
from workers.pool import ModelPool
from workers.runners import RunningJob

log = logging.getLogger(__name__)

POLL_S = 0.2
CHUNK = 500
LINE_PRIORITY = 2  # below interactive requests
DRAIN_S = 600.0  # a cancelled or expired batch waits this long for its running lines
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
        settings = context.settings
        self.window = settings.batch_window
        self.tenant_window = settings.batch_tenant_window
        self.lines: list[dict[str, Any]] = []
        self.existing: dict[str, tuple[str, str]] = {}
        self.invalid: dict[int, dict[str, str]] = {}  # line -> its error
        self.job_ids: dict[int, str] = {}  # line -> its sub-job
        self.next = 0  # the next line to let out

    def run(self) -> BatchResult:
        created = self.context.service.get(self.who, self.job.job_id).created_at
        deadline = created + timedelta(seconds=self.spec.completion_window_s)
        self.lines = self.context.files.batch_lines(self.job.tenant_id, self.spec.input_file_id)
        with self.context.sessions() as session:
            self.existing = SubJobRepo(session, self.job.job_id).existing()
        self.progress.update(
            phase="in_progress", total=len(self.lines), in_progress_at=int(time.time())
        )
        outcome = self._follow(deadline)
        self.progress.update(phase="finalizing", finalizing_at=int(time.time()))
        self._report()
        result = self._finalize(self.lines, self.invalid, self.job_ids, outcome)
        if outcome == "cancelled":
            raise JobCancelledError("batch cancelled", result.model_dump(mode="json"))
        return result

    # ------------------------------------------------------------ dispatching

    def _dispatch(self, room: int) -> None:
        """Make the next lines sub-jobs until `room` new ones are queued: lines are let
        out a window at a time, so a huge batch never fills the queues ahead of
        interactive requests or of another tenant's batch. Invalid lines are set aside
        (they take no room); lines an earlier attempt made are found by their keys."""
        prepared: list[tuple[dict[str, Any], tuple[JobKind, dict[str, Any]]]] = []
        while self.next < len(self.lines) and len(prepared) < room:
            line = self.lines[self.next]
            self.next += 1
            found = self.existing.get(self._key(line))
            if found is not None:  # made by an earlier attempt; published again if queued
                self.job_ids[line["line"]] = found[0]
                if found[1] == JobStatus.QUEUED.value:
                    self._publish(found[0])
                continue
            made = self._prepare(line, self.invalid)
            if made is not None:
                prepared.append((line, made))
        if prepared:
            self.job_ids.update(self._commit(prepared))

    def _key(self, line: dict[str, Any]) -> str:
        return f"{self.job.job_id}/line/{line['line']}"

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
        """Insert the lines' sub-jobs in one transaction, then publish them. (The lines an
        earlier attempt made were found in `existing` and are never inserted twice; two
        attempts never run at once, and the idempotency keys are unique besides.)"""
        now = datetime.now(UTC)
        rows = [
            (line, self._row(self._key(line), kind, spec, now)) for line, (kind, spec) in prepared
        ]
        with self.context.sessions.begin() as session:
            repo = SubJobRepo(session, self.job.job_id)
            for _, row in rows:
                repo.insert(row)
        for kind in {row.kind for _, row in rows}:
            ids = [row.id for _, row in rows if row.kind == kind]
            self.context.service.dispatcher.dispatch(CATALOG[JobKind(kind)], ids)
        return {line["line"]: row.id for line, row in rows}

    def _publish(self, job_id: str) -> None:
        kind = JobKind(BATCH_ENDPOINTS[self.spec.endpoint])
        self.context.service.dispatcher.dispatch(CATALOG[kind], [job_id])

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

    def _follow(self, deadline: datetime) -> str:
        """Let lines out a window at a time until every line is done ("completed"), or the
        batch is cancelled or past its window (then the queued lines are cancelled, the
        running ones finish, and the lines never let out count as not run)."""
        while True:
            live = self._counts()
            if self.next >= len(self.lines) and live == 0:
                return "completed"
            if self.job.should_stop():
                if not self._cancel_requested():
                    raise JobCancelledError("this attempt lost the batch", None)
                return self._drain("cancelled")
            if datetime.now(UTC) >= deadline:
                return self._drain("expired")
            room = min(self.window - live, self._tenant_room())
            if room > 0 and self.next < len(self.lines):
                self._dispatch(room)
                continue
            time.sleep(POLL_S)

    def _tenant_room(self) -> int:
        """Lines this tenant may still let out: its batches together hold at most
        `batch_tenant_window` lines in the queues, so one tenant's many batches cannot
        crowd out another tenant's."""
        with self.context.sessions() as session:
            live = SubJobRepo(session, self.job.job_id).tenant_batch_lines(
                self.job.tenant_id, IN_FLIGHT, HELD
            )
        return self.tenant_window - live

    def _drain(self, outcome: str) -> str:
        values = {"status": JobStatus.CANCELLED.value, "finished_at": datetime.now(UTC)}
        with self.context.sessions.begin() as session:
            repo = SubJobRepo(session, self.job.job_id)
            cancelled = repo.cancel_queued([JobStatus.QUEUED.value], values)
        log.info(
            "batch %s: %d queued line(s) cancelled job_id=%s", outcome, cancelled, self.job.job_id
        )
        give_up = time.monotonic() + DRAIN_S
        while self._counts() and time.monotonic() < give_up:
            time.sleep(POLL_S)
        return outcome

    def _counts(self) -> int:
        """The batch's live lines; request counts written to `progress` on the way."""
        with self.context.sessions() as session:
            by_status = SubJobRepo(session, self.job.job_id).status_counts()
        completed = by_status.get(JobStatus.SUCCEEDED.value, 0)
        failed = by_status.get(JobStatus.FAILED.value, 0) + len(self.invalid)
        if (completed, failed) != (self.progress.get("completed"), self.progress.get("failed")):
            self.progress.update(completed=completed, failed=failed)
            self._report()
        return sum(by_status.get(s, 0) for s in IN_FLIGHT)

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
        ran = row is not None and row.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
        if row is None or not ran:
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
