"""HTTP status codes for seekq errors, chosen here at the edge and nowhere else.

Every error body has the OpenAI shape {"error": {"message", "type", "param", "code"}} so
the official `openai` package raises its usual exceptions. Messages never echo input.
"""

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_gateway.rate_limit import RateLimitExceededError
from jobs.documents import DocumentError
from jobs.errors import (
    AdapterExistsError,
    ArtifactCorruptError,
    AuthError,
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    ContextLengthError,
    DatasetError,
    IndexBusyError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidTransitionError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    ModelNotFoundError,
    QuotaExceededError,
    RetryableError,
    SeekqError,
    SpecError,
    UploadNotFoundError,
    WebhookNotFoundError,
    WebhookTestFailedError,
    WebhookUrlError,
)
from jobs.service import IdempotencyConflictError
from jobs.specs import describe_errors
from storage.artifacts import ArtifactStoreFullError

log = logging.getLogger(__name__)

# Most specific first: the first matching class decides.
STATUS_BY_ERROR: tuple[tuple[type[SeekqError], int, str], ...] = (
    (JobFailedError, 502, "job_failed"),
    (JobTimeoutError, 503, "job_timeout"),
    (JobCancelledError, 409, "job_cancelled"),  # the job behind a synchronous call
    (IdempotencyConflictError, 409, "idempotency_conflict"),
    (ContextLengthError, 400, "context_length_exceeded"),  # OpenAI's status and code
    (DocumentError, 400, "invalid_document"),  # status_for uses the error's own code
    (DatasetError, 400, "invalid_training_file"),  # each bad line named in the message
    (WebhookUrlError, 400, "invalid_webhook_url"),
    (SpecError, 422, "invalid_request"),
    (JobNotFoundError, 404, "not_found"),
    (ModelNotFoundError, 404, "model_not_found"),
    (IndexNotFoundError, 404, "index_not_found"),
    (UploadNotFoundError, 404, "file_not_found"),
    (WebhookNotFoundError, 404, "webhook_endpoint_not_found"),
    (WebhookTestFailedError, 502, "webhook_test_failed"),
    (IndexExistsError, 409, "index_exists"),
    (IndexBusyError, 409, "index_busy"),
    (AdapterExistsError, 409, "adapter_exists"),
    (ConflictError, 409, "conflict"),
    (InvalidTransitionError, 409, "invalid_state"),
    (AuthError, 401, "invalid_api_key"),
    (RateLimitExceededError, 429, "rate_limit_exceeded"),  # OpenAI's code
    (QuotaExceededError, 429, "quota_exceeded"),
    (BrokerUnavailableError, 503, "broker_unavailable"),
    (ConfigError, 503, "misconfigured"),
    (ArtifactCorruptError, 500, "artifact_corrupt"),  # changed on disk: for the operator
    (RetryableError, 503, "unavailable"),
)


def error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if code not in {"invalid_api_key"} else "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def status_for(exc: SeekqError) -> tuple[int, str]:
    if isinstance(exc, DocumentError):
        return 400, exc.code  # which way the file failed: corrupt_document, empty_document...
    for error_type, status, code in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status, code
    return 500, "internal_error"


async def on_seekq_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SeekqError)
    status, code = status_for(exc)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimitExceededError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif status in (429, 503):
        headers["Retry-After"] = "5"
    return JSONResponse(error_body(str(exc), code), status_code=status, headers=headers)


async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            # The decoder's own words ("Expecting value", "duplicate key in an object"):
            # fixed texts from json / jobs.strict_json, never a piece of the body.
            problem = (error.get("ctx") or {}).get("error") or "malformed"
            message = f"request body is not valid JSON: {problem}"
            return JSONResponse(error_body(message, "invalid_json"), 400)
    message = "; ".join(_describe(error) for error in errors[:20])
    return JSONResponse(error_body(message, "invalid_request"), status_code=422)


def _describe(error: Any) -> str:
    """Query, path and header locations are names the route declares; a body location
    may hold the client's own keys (an e-mail address as a key), shown as <key>."""
    loc = error.get("loc", ())
    if loc and loc[0] != "body":
        return f"{'.'.join(str(p) for p in loc)}: {error.get('msg', 'invalid')}"
    return describe_errors([error], whole="body", skip=("body",))


async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        error_body(str(exc.detail), "http_error"), status_code=exc.status_code, headers=exc.headers
    )


async def on_database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The SQL store is down, restarting or unreachable: a retryable 503, not a 500 (the
    driver's message names hosts and ports, so it goes to the log, not the client)."""
    log.warning("database unavailable: %s", type(exc).__name__)
    message = "the database is unavailable; retry shortly"
    return JSONResponse(
        error_body(message, "database_unavailable"), status_code=503, headers={"Retry-After": "5"}
    )


async def on_storage_full(_: Request, exc: Exception) -> JSONResponse:
    log.error("artifact store full: %s", type(exc).__name__)
    message = "the server has no storage space left for this; retry later"
    return JSONResponse(
        error_body(message, "storage_full"), status_code=507, headers={"Retry-After": "60"}
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ArtifactStoreFullError, on_storage_full)
    app.add_exception_handler(OperationalError, on_database_unavailable)
    app.add_exception_handler(InterfaceError, on_database_unavailable)
    app.add_exception_handler(SeekqError, on_seekq_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
