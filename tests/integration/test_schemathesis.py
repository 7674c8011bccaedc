"""Schemathesis against the gateway's own OpenAPI document, over real HTTP, with a real
API key: a bounded, derandomised run of every operation, with valid and with invalid
inputs made from the schema. No answer is a 5xx, and every answer is as the document
says (status code, content type and body: errors included, in the `ErrorResponse` shape).

Left out: operations that wait for a worker this stack does not run (completions, chat,
search: after the gateway's wait their documented answer is a 503 `job_timeout`), the
event streams (they hold the connection until the job ends) and the metrics text.
What the first runs found, and what was fixed: docs/hostile_input.md.

schemathesis' own pytest plugin (`from_fixture`) does not run under pytest 9 yet (it sets
`Function._nodeid`); this drives its Hypothesis strategies directly, one operation at a
time, so each one gets its share of examples.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Stack

MAX_EXAMPLES = 25  # per operation and mode: about 2,000 requests, ~40 s a backend here
LEFT_OUT = (
    r"^/(metrics|v1/(completions|chat/completions|indexes/\{name\}/search"
    r"|jobs/\{job_id\}/events))$"
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
RUN = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same examples on every run
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_gateway_answers_as_documented(stack: Stack, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    headers = {"Authorization": f"Bearer {stack.key('fuzz')}"}
    schema.config.update(base_url=stack.url, headers=headers)
    failures: dict[str, str] = {}
    tested = 0
    for result in schema.exclude(path_regex=LEFT_OUT).get_all_operations():
        operation = result.ok()

        @RUN
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=30)

        try:
            call()
            tested += 1
        except Unsatisfiable:  # nothing invalid to send: no parameters, or free-form ones
            assert mode is GenerationMode.NEGATIVE, operation.label
        except FailureGroup as group:  # every operation runs; all their failures are shown
            failures[operation.label] = "\n".join(_describe(e) for e in group.exceptions)
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert tested >= (35 if mode is GenerationMode.POSITIVE else 20)


def _describe(failure: BaseException) -> str:
    """A failure's title and message (schemathesis' own text, with a curl line to rerun)."""
    return f"- {type(failure).__name__}: {failure}"[:1500]
