"""Hostile input through the `seekq` CLI, run as a user runs it (real processes against
the real stack): each gets one clear line and a non-zero exit code, never a traceback,
never the submitted text back."""

import httpx
import pytest

from api_gateway.client import SeekqClient
from tests.conftest import Stack, stack_env
from tests.integration.test_cli import seekq

MARKER = "MARKER-c0ffee 4111 1111 1111 1111"

REFUSED = (1, "422 invalid_request")  # the gateway's answer, printed on one line
DUPLICATE = f'{{"payload": "{MARKER}", "payload": "b"}}'
TRAVERSAL_MODEL = '{"input": ["a"], "model": "../../etc/passwd"}'

# (case, arguments, (exit code, a piece of the message))
CASES = [
    ("malformed JSON", ["submit", "ping", '{"payload": "' + MARKER], (2, "not readable JSON")),
    ("duplicate key", ["submit", "ping", DUPLICATE], (2, "duplicate key")),
    ("NaN in a spec", ["submit", "ping", '{"payload": NaN}'], (2, "NaN and Infinity")),
    ("NUL in a spec", ["submit", "ping", '{"payload": "a\\u0000b"}'], (2, "NUL character")),
    ("spec is a list", ["submit", "ping", f'["{MARKER}"]'], (2, "must be a JSON object")),
    ("spec file missing", ["submit", "ping", "@/no/such/spec.json"], (2, "FileNotFoundError")),
    ("unknown spec field", ["submit", "ping", f'{{"{MARKER}": 1}}'], REFUSED),
    ("traversal as model", ["submit", "embed", TRAVERSAL_MODEL], REFUSED),
    ("priority 10**30", ["submit", "ping", "{}", "--priority", str(10**30)], REFUSED),
    ("ingest: no such path", ["ingest", "/no/such", "-i", "docs"], (2, "is not a file or folder")),
    ("ingest: prune a file", ["ingest", "{file}", "-i", "docs", "--prune"], (2, "needs a folder")),
    ("ingest: traversal as index", ["ingest", "{file}", "-i", "../../etc"], REFUSED),
    ("search: k=-1", ["search", "docs", MARKER, "-k", "-1"], REFUSED),
    ("search: k=0", ["search", "docs", MARKER, "-k", "0"], REFUSED),
    # The client sends a name as one path segment (%2F): no route, never another resource.
    ("search: traversal as index", ["search", "../../etc/passwd", MARKER], (1, "404")),
    ("jobs show: traversal", ["jobs", "show", "../../etc/passwd"], (1, "404")),
    ("jobs list: limit -1", ["jobs", "list", "--limit", "-1"], REFUSED),
    ("keys create: traversal", ["keys", "create", "--tenant", "../x"], (2, "tenant names are")),
    ("keys create: newline", ["keys", "create", "--tenant", "acme\n"], (2, "tenant names are")),
    ("keys create: confusable", ["keys", "create", "--tenant", "\u0430cme"], (2, "tenant names")),
]


@pytest.mark.parametrize(("case", "args", "answer"), CASES, ids=[c[0] for c in CASES])
def test_cli_refuses_hostile_input(
    stack: Stack,
    tmp_path_factory: pytest.TempPathFactory,
    case: str,
    args: list[str],
    answer: tuple[int, str],
) -> None:
    code, says = answer
    env = stack_env(stack.database_url, stack.redis_db, stack.tmp, SEEKQ_URL=stack.url)
    env["SEEKQ_API_KEY"] = stack.key("acme")
    file = tmp_path_factory.mktemp("cli") / "notes.txt"
    file.write_text("hello")
    result = seekq(env, *[a.replace("{file}", str(file)) for a in args])
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert says in " ".join(output.split()), output  # rich and click wrap long lines
    assert "Traceback" not in output
    assert "MARKER" not in output and "4111" not in output
    assert "etc/passwd" not in output


def test_client_sends_a_name_as_one_path_segment() -> None:
    """A name holding `../` cannot make the client call another route (httpx removes dot
    segments: "/v1/indexes/x/../../files/f" would be DELETE /v1/files/f)."""
    sent: list[bytes] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.raw_path)
        return httpx.Response(200, json={"name": "x", "object": "index", "deleted": True})

    with SeekqClient("http://gateway", "sq_key", transport=httpx.MockTransport(record)) as client:
        client.delete_index("x/../../files/file-0")
        client.cancel("../files/file-0")
    assert sent == [
        b"/v1/indexes/x%2F..%2F..%2Ffiles%2Ffile-0",
        b"/v1/jobs/..%2Ffiles%2Ffile-0/cancel",
    ]
