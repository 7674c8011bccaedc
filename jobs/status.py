"""Job statuses and the only place where a status may change."""

from enum import StrEnum

from jobs.errors import InvalidTransitionError


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)

# Queued or running: what a quota counts, what holds a name or a batch window.
IN_FLIGHT: tuple[str, ...] = (
    JobStatus.QUEUED.value,
    JobStatus.RUNNING.value,
    JobStatus.CANCELLING.value,
)
# A worker holds the job (its lease counts).
HELD: tuple[str, ...] = (JobStatus.RUNNING.value, JobStatus.CANCELLING.value)

# RUNNING -> RUNNING is a takeover: a new attempt after the previous holder's lease expired.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLING,
            JobStatus.QUEUED,
        }
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.SUCCEEDED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def check_transition(current: JobStatus, new: JobStatus) -> None:
    """Raise InvalidTransitionError unless `current -> new` is allowed."""
    if new not in ALLOWED[current]:
        raise InvalidTransitionError(f"a {current.value} job cannot become {new.value}")


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL
