"""Per-kind time limits: the operator's override and its validation."""

import pytest
from pydantic import ValidationError

from jobs.catalog import CATALOG, JobKind
from jobs.settings import JobsSettings


def test_an_override_replaces_only_its_kinds_limit() -> None:
    limits = JobsSettings(time_limits_s={"ping": 3}).time_limits_s
    ping = CATALOG[JobKind.PING].limited(limits)
    assert (ping.time_limit_s, ping.soft_time_limit_s) == (3.0, 2.7)
    assert CATALOG[JobKind.EMBED].limited(limits) is CATALOG[JobKind.EMBED]
    assert CATALOG[JobKind.PING].time_limit_s == 30.0  # the catalog itself is untouched


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"pong": 3}, "unknown job kinds ['pong']"),
        ({"ping": 0}, "from 1 to 604800 seconds"),
        ({"ping": float("inf")}, "from 1 to 604800 seconds"),
        ({"ping": float("nan")}, "from 1 to 604800 seconds"),
    ],
)
def test_bad_limits_fail_at_start_up(limits: dict[str, float], says: str) -> None:
    with pytest.raises(ValidationError, match=said(says)):
        JobsSettings(time_limits_s=limits)


def said(text: str) -> str:
    import re

    return re.escape(text)
