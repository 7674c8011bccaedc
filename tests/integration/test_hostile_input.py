"""The hostile-input catalogue: every write endpoint and listing of the gateway, fed
malformed JSON, duplicate keys, wrong types, NaN and Infinity, huge and negative numbers,
empty, oversized and deeply nested bodies, 1 MB strings, NUL and lone surrogates, unknown
fields, path traversal and confusables in every name, and PII-looking text.

Each case answers its precise 4xx in the project's error shape, never a 5xx; the answer
never holds the submitted text; and nothing is written: no row in any table, no artifact
file. On SQLite and PostgreSQL (the `stack` fixture). docs/hostile_input.md summarises it.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from storage.tables import Base
from tests.conftest import TINY_MODEL, Stack, unique

MARKER = "MARKER-c0ffee"
CARD = "4111 1111 1111 1111"
HOSTILE = f"{MARKER} {CARD}"  # put in payloads: must never come back
TRAVERSAL = ["../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini"]
CONFUSABLE_EMBED_MODEL = "\u0430ll-MiniLM-L6-v2"  # Cyrillic a (U+0430): not the real model
CONFUSABLE_TINY_MODEL = "tiny-d\u0435epseek"  # Cyrillic e (U+0435)
LONG_NAME = "n" * 10_000
MB = 2**20

Answer = tuple[int, str]
BAD: Answer = (422, "invalid_request")  # the body or a parameter fails validation
NOT_JSON: Answer = (400, "invalid_json")  # the body is not JSON seekq accepts
NO_FILE: Answer = (404, "file_not_found")
NO_INDEX: Answer = (404, "index_not_found")
NO_MODEL: Answer = (404, "model_not_found")
NO_HOOK: Answer = (404, "webhook_endpoint_not_found")
NO_ROUTE: Answer = (404, "http_error")  # a name that decodes to slashes matches no route


@dataclass(frozen=True)
class Targets:
    """Real resources of the tenant, so that hostile bodies reach the real handlers."""

    index: str
    job: str
    file: str
    webhook: str


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # may name {index}, {job}, {file}, {webhook}
    answer: Answer
    json: Any = None  # sent as JSON (strict: no NaN); "{index}" in it is the real index
    raw: bytes | None = None  # sent as is, as application/json unless headers say otherwise
    params: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def endpoint(label: str, path: str, base: dict[str, Any]) -> Callable[..., Case]:
    """Cases for one JSON endpoint: `base` with some fields replaced."""

    def make(id: str, answer: Answer = BAD, /, **fields: Any) -> Case:
        return Case(f"{label}: {id}", "POST", path, answer, json={**base, **fields})

    return make


def query(path: str, params: dict[str, Any], answer: Answer = BAD) -> Case:
    shown = ", ".join(f"{k}={v[:20]}" for k, v in params.items())
    return Case(f"GET {path}: {shown}", "GET", path, answer, params=params)


PING = {"kind": "ping", "spec": {"payload": HOSTILE}}
WEBHOOK = {"name": "ops", "url": "https://93.184.216.34/hook", "event_types": ["batch.completed"]}
NO_SUCH_FILE = "file-" + "0" * 32
DOCS = {"documents": [{"id": "d", "text": HOSTILE}]}
FINE_TUNE = {"model": TINY_MODEL, "training_file": NO_SUCH_FILE}
BATCH = {"input_file_id": NO_SUCH_FILE, "endpoint": "/v1/embeddings", "completion_window": "24h"}

job = endpoint("jobs", "/v1/jobs", PING)
emb = endpoint("embeddings", "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": HOSTILE})
cmpl = endpoint("completions", "/v1/completions", {"model": TINY_MODEL, "prompt": HOSTILE})
chat = endpoint(
    "chat",
    "/v1/chat/completions",
    {"model": TINY_MODEL, "messages": [{"role": "user", "content": HOSTILE}]},
)
ix = endpoint("indexes", "/v1/indexes", {"name": "hostile-ix"})
docs = endpoint("documents", "/v1/indexes/{index}/documents", {})
undoc = endpoint("delete documents", "/v1/indexes/{index}/documents/delete", {})
search = endpoint("search", "/v1/indexes/{index}/search", {"query": HOSTILE})
ft = endpoint("fine-tunes", "/v1/fine_tuning/jobs", FINE_TUNE)
batch = endpoint("batches", "/v1/batches", BATCH)
hook = endpoint("webhooks", "/v1/webhook_endpoints", WEBHOOK)
hook_update = endpoint("update webhook", "/v1/webhook_endpoints/{webhook}", {})
rotate = endpoint("rotate secret", "/v1/webhook_endpoints/{webhook}/rotate_secret", {})
hook_test = endpoint("test webhook", "/v1/webhook_endpoints/{webhook}/test", {})


# Malformed and ambiguous JSON, on every JSON write endpoint: the start of a body, $H for
# the hostile text, left open for more members.
JSON_ENDPOINTS = {
    "jobs": ("/v1/jobs", '{"kind": "ping", "spec": {"payload": $H}'),
    "embeddings": ("/v1/embeddings", '{"model": "all-MiniLM-L6-v2", "input": $H'),
    "completions": ("/v1/completions", f'{{"model": "{TINY_MODEL}", "prompt": $H'),
    "chat": ("/v1/chat/completions", f'{{"model": "{TINY_MODEL}", "messages": [$H]'),
    "indexes": ("/v1/indexes", '{"name": "ix-x", "model": $H'),
    "documents": ("/v1/indexes/{index}/documents", '{"documents": [{"id": "d", "text": $H}]'),
    "delete documents": ("/v1/indexes/{index}/documents/delete", '{"ids": [$H]'),
    "search": ("/v1/indexes/{index}/search", '{"query": $H'),
    "batches": ("/v1/batches", '{"input_file_id": $H'),
    "fine-tunes": ("/v1/fine_tuning/jobs", '{"model": $H'),
    "webhooks": ("/v1/webhook_endpoints", '{"name": $H'),
    "update webhook": ("/v1/webhook_endpoints/{webhook}", '{"name": $H'),
    "rotate secret": ("/v1/webhook_endpoints/{webhook}/rotate_secret", '{"x": $H'),
    "test webhook": ("/v1/webhook_endpoints/{webhook}/test", '{"event_type": $H'),
}
# What follows the start of a body: (case, more members, answer).
JSON_TAILS = [
    ("malformed JSON", "", NOT_JSON),
    ("duplicate key", ', "x": 1, "x": 2}', NOT_JSON),
    ("NaN", ', "n": NaN}', NOT_JSON),
    ("-Infinity", ', "n": -Infinity}', NOT_JSON),
    ("1e999", ', "n": 1e999}', NOT_JSON),
    ("NUL", ', "n": "a\\u0000b"}', NOT_JSON),
    ("lone surrogate", ', "n": "\\ud800"}', NOT_JSON),
    ("5000-digit number", ', "n": ' + "9" * 5000 + "}", NOT_JSON),
]
WHOLE_BODIES: list[tuple[str, bytes, Answer]] = [
    ("100k brackets", b"[" * 100_000, NOT_JSON),
    ("100 nested objects", b'{"a":' * 100 + b"1" + b"}" * 100, NOT_JSON),
    ("array", f"[{json.dumps(HOSTILE)}]".encode(), BAD),
    ("string", json.dumps(HOSTILE).encode(), BAD),
]
# Its body is optional: none (or null) means no options. Every other endpoint refuses both.
EMPTY_BODIES: list[tuple[str, bytes, Answer]] = [("empty body", b"", BAD), ("null", b"null", BAD)]


def raw(template: str) -> bytes:
    return template.replace("$H", json.dumps(HOSTILE)).encode()


# Bodies valid in every way but one string: $X is a NUL or a lone surrogate, in a field
# that is stored (PostgreSQL's text and jsonb refuse both: a 500 before the strict JSON).
STORED_TEXT = {
    "jobs": ("/v1/jobs", '{"kind": "ping", "spec": {"payload": "a$Xb"}}'),
    "embeddings": ("/v1/embeddings", '{"model": "all-MiniLM-L6-v2", "input": "a$Xb"}'),
    "documents": ("/v1/indexes/{index}/documents", '{"documents": [{"id": "d", "text": "$X"}]}'),
    "delete documents": ("/v1/indexes/{index}/documents/delete", '{"ids": ["a$Xb"]}'),
    "webhooks": ("/v1/webhook_endpoints", json.dumps({**WEBHOOK, "name": "a$Xb"})),
    "update webhook": ("/v1/webhook_endpoints/{webhook}", '{"name": "a$Xb"}'),
    "batches": ("/v1/batches", json.dumps({**BATCH, "metadata": {"k": "a$Xb"}})),
    "fine-tunes": ("/v1/fine_tuning/jobs", json.dumps({**FINE_TUNE, "metadata": {"k": "$X"}})),
}


def json_cases() -> list[Case]:
    cases = []
    for name, (path, head) in JSON_ENDPOINTS.items():
        bodies = [(case, raw(head + tail), answer) for case, tail, answer in JSON_TAILS]
        bodies.append(("not UTF-8", raw(head).replace(b"{", b"{\xff", 1), NOT_JSON))
        bodies += WHOLE_BODIES + (EMPTY_BODIES if name != "rotate secret" else [])
        cases += [Case(f"{name}: {c}", "POST", path, a, raw=body) for c, body, a in bodies]
    for name, (path, body) in STORED_TEXT.items():
        for label, escape in (("NUL", "\\u0000"), ("lone surrogate", "\\udfff")):
            text = body.replace("$X", escape).encode()
            cases.append(
                Case(f"{name}: {label} in a stored field", "POST", path, NOT_JSON, raw=text)
            )
    return cases


def native_job_cases() -> list[Case]:
    def embed(**spec: Any) -> dict[str, Any]:
        return {"input": ["a"], **spec}

    def generate(**spec: Any) -> dict[str, Any]:
        return {"model": TINY_MODEL, "prompt": "a", **spec}

    long_payload = {"payload": HOSTILE + "x" * MB}
    cases = [
        job("true as priority", priority=True),
        job("string as priority", priority="5"),
        job("float as priority", priority=5.5),
        job("negative priority", priority=-1),
        job("10**30 priority", priority=10**30),
        job("unknown field", **{HOSTILE: 1}),
        job("unknown spec field", spec={"payload": "a", "x": HOSTILE}),
        job("PII-looking key", spec={"jane@example.com": HOSTILE}),
        job("spec is a string", spec=HOSTILE),
        job("unknown kind", kind=HOSTILE, spec={}),
        job("1 MB ping payload", spec=long_payload),
        job("1 MB embed text", kind="embed", spec={"input": [HOSTILE + "x" * MB]}),
        job("10 KB idempotency key", idempotency_key="k" * 10_000),
        job("idempotency key with space", idempotency_key=HOSTILE),
        job("confusable model", kind="embed", spec=embed(model=CONFUSABLE_EMBED_MODEL)),
        job("10 KB model name", kind="embed", spec=embed(model=LONG_NAME)),
        job("adapter traversal", kind="generate", spec=generate(model=f"{TINY_MODEL}:../x")),
        job("index traversal", kind="index", spec={"index": "../../etc", "action": "rebuild"}),
        job("search k=-1", kind="search", spec={"index": "{index}", "query": "a", "k": -1}),
        job("temperature as string", kind="generate", spec=generate(temperature="1")),
        job("max_new_tokens 10**30", kind="generate", spec=generate(max_new_tokens=10**30)),
    ]
    header = {"Idempotency-Key": "k" * 10_000}
    text = {"content-type": "text/plain"}
    huge = raw('{"kind": "ping", "spec": {"payload": $H, "x": "' + "y" * 5_000_000 + '"}}')
    cases += [
        Case("jobs: 10 KB Idempotency-Key", "POST", "/v1/jobs", BAD, json=PING, headers=header),
        Case(
            "jobs: text/plain body",
            "POST",
            "/v1/jobs",
            BAD,
            raw=raw(json.dumps(PING)),
            headers=text,
        ),
        Case("jobs: 5 MB body", "POST", "/v1/jobs", (413, "too_large"), raw=huge),
    ]
    for name in TRAVERSAL:
        cases.append(job(f"model {name!r}", kind="embed", spec=embed(model=name)))
        cases.append(job(f"index {name!r}", kind="search", spec={"index": name, "query": "a"}))
    return cases


def openai_cases() -> list[Case]:
    image = {"type": "image_url", "image_url": HOSTILE}
    cases = [
        emb("dimensions true", dimensions=True),
        emb("dimensions 0", dimensions=0),
        emb("dimensions -1", dimensions=-1),
        emb("dimensions 10**30", dimensions=10**30),  # refused before any job is queued
        emb("input of numbers", input=[1, 2]),
        emb("1 MB input", input=HOSTILE + "x" * MB),
        emb("unknown encoding", encoding_format=HOSTILE),
        emb("unknown field", extra=HOSTILE),
        emb("confusable model", model=CONFUSABLE_EMBED_MODEL),
        emb("10 KB model", model=LONG_NAME),
        emb("10 KB user", user="u" * 10_000),
        cmpl("max_tokens -1", max_tokens=-1),
        cmpl("max_tokens 0", max_tokens=0),
        cmpl("max_tokens 10**30", max_tokens=10**30),
        cmpl("max_tokens true", max_tokens=True),
        cmpl("max_tokens as string", max_tokens="16"),
        cmpl("temperature as string", temperature="0.5"),
        cmpl("two prompts", prompt=[HOSTILE, HOSTILE]),
        cmpl("n=2", n=2),
        cmpl("stream as string", stream="true"),
        cmpl("logit_bias", logit_bias={"1": 5.0}),
        cmpl("1 MB prompt", prompt=HOSTILE + "x" * MB),
        cmpl("confusable model", model=CONFUSABLE_TINY_MODEL),
        chat("no messages", messages=[]),
        chat("tool role", messages=[{"role": "tool", "content": HOSTILE}]),
        chat("content as number", messages=[{"role": "user", "content": 5}]),
        chat("image part", messages=[{"role": "user", "content": [image]}]),
        chat("unknown message field", messages=[{"role": "user", "content": "a", "x": HOSTILE}]),
        chat("max_completion_tokens -1", max_completion_tokens=-1),
        chat("stream_options without stream", stream_options={"include_usage": True}),
        chat("5 stop strings", stop=["a", "b", "c", "d", "e"]),
    ]
    for name in TRAVERSAL:
        cases += [emb(f"model {name!r}", model=name), chat(f"model {name!r}", model=name)]
        cases.append(cmpl(f"adapter {name!r}", model=f"{TINY_MODEL}:{name}"))
    return cases


def resource_cases() -> list[Case]:
    bad_url: Answer = (400, "invalid_webhook_url")
    cases = [
        ix("confusable name", name="h\u0430ndbook"),
        ix("10 KB name", name=LONG_NAME),
        ix("upper-case name", name="Handbook"),
        ix("chunk_tokens -1", chunk_tokens=-1),
        ix("chunk_tokens true", chunk_tokens=True),
        ix("unknown type", type=HOSTILE),
        ix("params of another type", type="flat", params={"m": 8}),
        ix("confusable model", model=CONFUSABLE_EMBED_MODEL),
        docs("none", documents=[]),
        docs("unknown field", documents=[{"id": "d", "text": "a", "x": HOSTILE}]),
        docs("text over 1 MB", documents=[{"id": "d", "text": HOSTILE + "x" * 1_000_000}]),
        docs("10 KB id", documents=[{"id": LONG_NAME, "text": "a"}]),
        docs(
            "metadata key traversal", documents=[{"id": "d", "text": "a", "metadata": {"../x": 1}}]
        ),
        docs("nested metadata", documents=[{"id": "d", "text": "a", "metadata": {"k": {"k": 1}}}]),
        undoc("none", ids=[]),
        undoc("id as number", ids=[5]),
        search("k=-1", k=-1),
        search("k=0", k=0),
        search("k=10**30", k=10**30),
        search("k true", k=True),  # was coerced to 1 and queued before this catalogue
        search("k as string", k="5"),
        search("empty query", query=""),
        search("query over 4 KB", query=HOSTILE + "q" * 5000),
        search("filter of objects", filter={"k": {"$ne": HOSTILE}}),
        ft("seed -1", seed=-1),
        ft("suffix traversal", suffix="../x"),
        ft("suffix confusable", suffix="h\u0435lper"),
        ft("integrations", integrations=[{"type": "wandb"}]),
        ft("unknown field", x=HOSTILE),
        ft("n_epochs true", hyperparameters={"n_epochs": True}),
        ft("unknown seekq field", seekq={"x": HOSTILE}),
        ft("unknown training file", NO_FILE),
        ft("confusable model", model=CONFUSABLE_TINY_MODEL),
        batch("unknown endpoint", endpoint="/v1/" + HOSTILE),
        batch("window 0h", completion_window="0h"),
        batch("window 25h", completion_window="25h"),
        batch("17 metadata keys", metadata={f"k{i}": "v" for i in range(17)}),
        batch("unknown input file", NO_FILE),
        hook("file URL", bad_url, url="file:///etc/passwd"),
        hook("loopback URL", bad_url, url="https://127.0.0.1/hook"),
        hook("URL with credentials", bad_url, url=f"https://u:{MARKER}@93.184.216.34/"),
        hook("10 KB name", name=LONG_NAME),
        hook("unknown event type", event_types=[HOSTILE]),
        hook("no event types", event_types=[]),
        hook_update("unknown field", x=HOSTILE),
        hook_update("URL traversal", bad_url, url="../../etc/passwd"),
        rotate("flag as string", keep_old_secret_active_for_24_hours="true"),
        hook_test("unknown event", event_type=HOSTILE),
    ]
    for name in TRAVERSAL:
        cases += [
            ix(f"name {name!r}", name=name),
            ix(f"model {name!r}", model=name),
            docs(f"file_id {name!r}", documents=[{"file_id": name}]),
            ft(f"model {name!r}", model=name),
            ft(f"training_file {name!r}", training_file=name),
            batch(f"input_file_id {name!r}", NO_FILE, input_file_id=name),
        ]
    return cases


BOUNDARY = "hostile-boundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(filename: bytes) -> bytes:
    """A multipart upload whose file name bytes are sent exactly as given (httpx would
    escape a NUL or a CR in a file name)."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'
    body = b'"\r\nContent-Type: text/plain\r\n\r\n' + HOSTILE.encode()
    return head.encode() + filename + body + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_cases() -> list[Case]:
    def upload(id: str, name: str, answer: Answer, purpose: str = "assistants") -> Case:
        form = {"file": (name, HOSTILE.encode())}
        data = {"purpose": purpose}
        return Case(f"files: {id}", "POST", "/v1/files", answer, files=form, data=data)

    def sent_as_is(id: str, name: bytes, answer: Answer) -> Case:
        body = multipart(name)
        return Case(f"files: {id}", "POST", "/v1/files", answer, raw=body, headers=MULTIPART)

    def content(id: str, data: bytes, answer: Answer) -> Case:
        form = {"file": ("notes.txt", data)}
        data = {"purpose": "assistants"}
        return Case(f"files: {id}", "POST", "/v1/files", answer, files=form, data=data)

    bad_name: Answer = (400, "invalid_filename")
    unsupported: Answer = (400, "unsupported_type")
    bad_lines: Answer = (400, "invalid_training_file")
    parser: Answer = (400, "http_error")  # Starlette's multipart parser, before any handler
    return [
        upload("name '../../etc/passwd'", "../../etc/passwd", unsupported),
        upload("name '..\\\\..\\\\windows\\\\evil'", "..\\..\\windows\\evil", unsupported),
        upload("name ending in '/'", "../../", bad_name),
        upload("name '..'", "..", bad_name),
        upload("unknown purpose", "notes.txt", BAD, purpose=HOSTILE),
        upload("10 KB purpose", "notes.txt", BAD, purpose="p" * 10_000),
        upload("fine-tune file of bad lines", "t.jsonl", bad_lines, purpose="fine-tune"),
        upload("batch file of bad lines", "b.jsonl", bad_lines, purpose="batch"),
        sent_as_is("NUL in name", b"a\x00b.txt", bad_name),
        sent_as_is("CR in name", b"a\rb.txt", parser),
        sent_as_is("10 KB name", LONG_NAME.encode() + b".txt", parser),
        Case("files: no file part", "POST", "/v1/files", BAD, data={"purpose": "assistants"}),
        Case("files: JSON, not multipart", "POST", "/v1/files", BAD, json={"file": HOSTILE}),
        content("empty file", b"", (400, "empty")),
        content("binary file", b"\x00\x01\x02" * 100, (400, "binary")),
    ]


# Routes naming a resource in their path: (method, path with {} for the name, body, answer
# for a name of no such resource). A name not even valid for an index job fails that
# job's spec (422) instead.
NAMED_ROUTES: dict[str, tuple[str, str, Any, Answer]] = {
    "cancel job": ("POST", "/v1/jobs/{}/cancel", None, (404, "not_found")),
    "job events": ("GET", "/v1/jobs/{}/events", None, (404, "not_found")),
    "cancel batch": ("POST", "/v1/batches/{}/cancel", None, (404, "not_found")),
    "cancel fine-tune": ("POST", "/v1/fine_tuning/jobs/{}/cancel", None, (404, "not_found")),
    "file content": ("GET", "/v1/files/{}/content", None, NO_FILE),
    "delete file": ("DELETE", "/v1/files/{}", None, NO_FILE),
    "get index": ("GET", "/v1/indexes/{}", None, NO_INDEX),
    "delete index": ("DELETE", "/v1/indexes/{}", None, NO_INDEX),
    "add documents": ("POST", "/v1/indexes/{}/documents", DOCS, BAD),
    "rebuild index": ("POST", "/v1/indexes/{}/rebuild", None, BAD),
    "get model": ("GET", "/v1/models/{}", None, NO_MODEL),
    "delete adapter": ("DELETE", f"/v1/models/{TINY_MODEL}:{{}}", None, NO_MODEL),
    "delete webhook": ("DELETE", "/v1/webhook_endpoints/{}", None, NO_HOOK),
    "update webhook path": ("POST", "/v1/webhook_endpoints/{}", {}, NO_HOOK),
}
# Names as sent in the URL (percent-encoded where a client must encode).
PATH_NAMES = {
    "encoded traversal": "..%2F..%2Fetc%2Fpasswd",  # decodes to slashes: no route matches
    "backslashes": "..%5C..%5Cwindows",
    "NUL": "a%00b",  # refused before any handler: PostgreSQL could not even look it up
    "10 KB": LONG_NAME,
    "confusable": "h%D0%B0ndbook",
}
LISTINGS = [
    "/v1/jobs",
    "/v1/files",
    "/v1/batches",
    "/v1/fine_tuning/jobs",
    "/v1/webhook_endpoints",
    "/v1/audit",
    "/v1/indexes/{index}/documents",
]
# A cursor that is not one (422), or an `after` id of no such object (404, as OpenAI's).
CURSORS: list[tuple[str, str, Answer]] = [
    ("/v1/jobs", "cursor", BAD),
    ("/v1/audit", "cursor", BAD),
    ("/v1/files", "after", BAD),
    ("/v1/batches", "after", (404, "not_found")),
    ("/v1/fine_tuning/jobs", "after", (404, "not_found")),
    ("/v1/webhook_endpoints", "after", NO_HOOK),
]


def path_and_query_cases() -> list[Case]:
    cases = []
    for label, value in PATH_NAMES.items():
        for route, (method, template, body, missing) in NAMED_ROUTES.items():
            answer = {"NUL": BAD, "encoded traversal": NO_ROUTE}.get(label, missing)
            path = template.format(value)
            cases.append(Case(f"{route}: {label}", method, path, answer, json=body))
    for path in LISTINGS:
        for limit in ("-1", "0", str(10**30), "true", "1.5", "NaN"):
            cases.append(query(path, {"limit": limit}))
        cases.append(query(path, {"limit": "5\x00"}))
    for path, name, garbage in CURSORS:
        cases.append(query(path, {name: HOSTILE}, garbage))
        cases.append(query(path, {name: LONG_NAME}))
    for path, name, _ in [*CURSORS, ("/v1/indexes/{index}/documents", "cursor", BAD)]:
        cases.append(query(path, {name: "a\x00b"}))
    for wait in ("-1", "NaN", "inf", "1e999", "61"):
        cases.append(query("/v1/jobs/{job}", {"wait": wait}))
    cases.append(query("/v1/jobs", {"status": HOSTILE}))
    cases.append(query("/v1/jobs", {"kind": "a\x00b"}))
    return cases


CASES = json_cases() + native_job_cases() + openai_cases() + resource_cases()
CASES += upload_cases() + path_and_query_cases()


@pytest.fixture(scope="module")
def tenant() -> str:
    return unique("hostile")


@pytest.fixture(scope="module")
def targets(stack: Stack, tenant: str) -> Targets:
    with stack.http(tenant) as http:
        index = unique("ix")
        assert http.post("/v1/indexes", json={"name": index}).status_code == 201
        job = http.post("/v1/jobs", json={"kind": "ping", "spec": {"payload": "x"}}).json()["id"]
        file = http.post(
            "/v1/files", files={"file": ("a.txt", b"hello")}, data={"purpose": "assistants"}
        ).json()["id"]
        webhook = http.post("/v1/webhook_endpoints", json=WEBHOOK).json()["id"]
        assert http.get(f"/v1/jobs/{job}", params={"wait": 30}).json()["status"] == "succeeded"
    return Targets(index, job, file, webhook)


def written(stack: Stack) -> dict[str, int]:
    """Rows in every table, and artifact files on disk."""
    with stack.context.sessions() as session:
        counts = {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }
    artifacts = stack.tmp / "artifacts"
    counts["artifact files"] = sum(1 for p in artifacts.rglob("*") if p.is_file())
    return counts


def send(http: httpx.Client, case: Case, targets: Targets) -> httpx.Response:
    path = case.path.format(**vars(targets)) if "{" in case.path else case.path
    headers = dict(case.headers)
    content = case.raw
    if case.json is not None:
        text = json.dumps(case.json, allow_nan=False).replace("{index}", targets.index)
        content = text.encode()
    if content is not None:
        headers.setdefault("content-type", "application/json")
    return http.request(
        case.method,
        path,
        content=content,
        params=case.params,
        files=case.files,
        data=case.data,
        headers=headers,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_precisely(
    stack: Stack, tenant: str, targets: Targets, case: Case
) -> None:
    before = written(stack)
    with stack.http(tenant) as http:
        response = send(http, case, targets)
    status, code = case.answer
    assert response.status_code == status, response.text[:2000]
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and 0 < len(error["message"]) < 2000
    for text in (MARKER, "4111", "1111 1111", "etc/passwd", "win.ini", "windows"):
        assert text not in response.text, (text, response.text[:2000])
    assert LONG_NAME[:100] not in response.text
    assert written(stack) == before


def test_prompt_that_looks_like_a_file_name_is_only_text(stack: Stack, tenant: str) -> None:
    """A payload naming a file is text: the job sees the name, never the file."""
    with stack.client(tenant) as client:
        job = client.submit("ping", {"payload": "../../etc/passwd"})
        done = client.wait(job["id"], timeout_s=30)
    assert done["result"] == {"payload": "../../etc/passwd"}


def test_upload_keeps_only_the_last_name_component(stack: Stack, tenant: str) -> None:
    """An upload named with a path is stored under its last component (a label), and
    its content lands under the tenant's own files/ prefix, nowhere else."""
    artifacts = stack.tmp / "artifacts"
    before = {p for p in artifacts.rglob("*") if p.is_file()}
    with stack.http(tenant) as http:
        for name in ("../../notes.txt", "..\\..\\notes.txt", "/etc/notes.txt"):
            response = http.post(
                "/v1/files", files={"file": (name, b"hello")}, data={"purpose": "assistants"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["filename"] == "notes.txt"
    added = {p for p in artifacts.rglob("*") if p.is_file()} - before
    assert len(added) == 3
    assert all(p.relative_to(artifacts).parts[0] == "files" for p in added)
