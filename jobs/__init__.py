"""The job domain: kinds, specs, statuses, errors, PII masking, the submit service."""

from jobs.catalog import CATALOG, JobKind, KindEntry, get_entry
from jobs.errors import PermanentError, RetryableError, SeekqError
from jobs.status import JobStatus

__all__ = [
    "CATALOG",
    "JobKind",
    "JobStatus",
    "KindEntry",
    "PermanentError",
    "RetryableError",
    "SeekqError",
    "get_entry",
]
