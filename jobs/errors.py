"""The one error tree of seekq.

    SeekqError
    ├── PermanentError            retrying cannot help; the job (or request) fails
    │   ├── SpecError             a spec or request is malformed or out of bounds
    │   │   ├── KindNotAvailableError   a known kind with no runner in this release
    │   │   ├── ContextLengthError      prompt + max_new_tokens exceed the model's context
    │   │   ├── DatasetError            a fine-tune dataset has invalid lines (line numbers)
    │   │   └── WebhookUrlError         a webhook URL is malformed or not allowed (SSRF)
    │   ├── JobNotFoundError      no such job for this tenant
    │   ├── IndexNotFoundError    no such index for this tenant
    │   ├── UploadNotFoundError   no such uploaded file for this tenant
    │   ├── WebhookNotFoundError  no such webhook endpoint for this tenant
    │   ├── WebhookTestFailedError  a test delivery got no answer from the endpoint
    │   ├── ConflictError         the request clashes with the resource's state
    │   │   ├── IndexExistsError  an index of that name exists already
    │   │   ├── IndexBusyError    an index job is writing the index
    │   │   └── AdapterExistsError  an adapter (or a fine-tune making it) has that name
    │   ├── InvalidTransitionError  a status change the state machine forbids
    │   ├── ModelNotFoundError    the model is not in the registry / not loaded here
    │   │                         (workers.adapters.AdapterLoadError, a PermanentError too:
    │   │                          a fine-tuned adapter's files cannot be served)
    │   ├── AuthError             missing, malformed, unknown or revoked API key
    │   ├── JobFailedError        the job a synchronous call waited for failed
    │   ├── TimeLimitExceededError  a job ran past its kind's time limit
    │   ├── ArtifactCorruptError  a stored artifact (index version, adapter file) does not
    │   │                         match the sha256 recorded when seekq wrote it
    │   └── ConfigError           settings that cannot work (placeholder secret, bad URL)
    ├── RetryableError            a transient failure; the same call may succeed later
    │   ├── QuotaExceededError      the tenant has its quota of jobs in flight
    │   ├── BrokerUnavailableError  Redis could not take the message
    │   ├── StreamRestartedError    a streamed job started over on another worker
    │   └── JobTimeoutError       the job a synchronous call waited for is not done yet
    └── JobCancelledError         a runner stopped because its job's cancel was requested

HTTP status codes are chosen at the edge (api_gateway), never here.
"""

from typing import Any


class SeekqError(Exception):
    """Base class of every error seekq raises on purpose."""


class PermanentError(SeekqError):
    """Retrying the same input cannot succeed."""


class RetryableError(SeekqError):
    """A transient failure: the same call may succeed later."""


class SpecError(PermanentError):
    """A job spec or request is malformed or out of bounds."""


class KindNotAvailableError(SpecError):
    """The job kind is known but has no runner in this release."""


class ContextLengthError(SpecError):
    """The prompt plus the requested new tokens do not fit the model's context window."""


class JobNotFoundError(PermanentError):
    """No job with this id exists for this tenant."""


class IndexNotFoundError(PermanentError):
    """No index with this name exists for this tenant."""


class UploadNotFoundError(PermanentError):
    """No uploaded file with this id exists for this tenant."""


class WebhookNotFoundError(PermanentError):
    """No webhook endpoint with this id exists for this tenant."""


class WebhookUrlError(SpecError):
    """A webhook URL that is malformed or points where webhooks may not go."""


class WebhookTestFailedError(PermanentError):
    """A test delivery got no HTTP answer from the endpoint (refused, timed out)."""


class DatasetError(SpecError):
    """A fine-tune dataset is not usable: `lines` holds (line number, problem) pairs; the
    message lists the first few. Problems name fields, never the line's content."""

    MAX_SHOWN = 20

    def __init__(self, what: str, lines: list[tuple[int, str]] | None = None) -> None:
        self.lines = lines or []
        shown = "; ".join(f"line {n}: {problem}" for n, problem in self.lines[: self.MAX_SHOWN])
        more = len(self.lines) - self.MAX_SHOWN
        tail = f" (and {more} more)" if more > 0 else ""
        super().__init__(f"{what}: {shown}{tail}" if shown else what)


class ConflictError(PermanentError):
    """The request clashes with the current state of the resource."""


class IndexExistsError(ConflictError):
    """An index with this name exists already."""


class IndexBusyError(ConflictError):
    """An index job holds the index's writer lease."""


class AdapterExistsError(ConflictError):
    """An adapter of that name exists for the base model, or a fine-tune is making one."""


class InvalidTransitionError(PermanentError):
    """The requested status change is not allowed from the current status."""


class ModelNotFoundError(PermanentError):
    """The named model is not registered (or not loaded by this worker)."""


class AuthError(PermanentError):
    """The API key is missing, malformed, unknown or revoked."""


class ConfigError(PermanentError):
    """Settings that cannot work: a placeholder secret, an unusable URL."""


class QuotaExceededError(RetryableError):
    """The tenant has its quota of jobs (or input tokens) queued or running: try later."""


class BrokerUnavailableError(RetryableError):
    """The broker did not accept the message; the job row is kept and can be re-dispatched."""


class StreamRestartedError(RetryableError):
    """A streamed job was taken over by another worker and its text starts over; what a
    reader already sent cannot be taken back, so the stream ends with this error."""


class TimeLimitExceededError(PermanentError):
    """A job ran past its kind's time limit (recorded as the job's error; never raised
    by a runner)."""


class JobCancelledError(SeekqError):
    """A runner stopped early because the job's cancel was requested (or its lease lost).
    `partial` is the result so far (e.g. the text generated before the cancel), if any."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class JobFailedError(PermanentError):
    """The job behind a synchronous call (e.g. /v1/embeddings) failed."""


class ArtifactCorruptError(PermanentError):
    """A stored artifact does not match the sha256 recorded when seekq wrote it: nothing is
    loaded from it. `key` names it (for the operator's log); the bytes are never shown."""

    def __init__(self, key: str, what: str = "artifact") -> None:
        self.key = key
        super().__init__(f"{what} {key} does not match the sha256 recorded when it was written")


class JobTimeoutError(RetryableError):
    """The job behind a synchronous call did not finish in time; it goes on running."""
