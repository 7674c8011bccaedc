"""CLI commands that talk to a running gateway over HTTP (SEEKQ_URL, SEEKQ_API_KEY)."""

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from api_gateway.client import SeekqAPIError, SeekqClient
from jobs import strict_json
from jobs.catalog import CATALOG

jobs_app = typer.Typer(help="List, show and cancel jobs.", no_args_is_help=True)
console = Console()

UrlOpt = Annotated[str, typer.Option("--url", envvar="SEEKQ_URL", help="Gateway URL.")]
KeyOpt = Annotated[str, typer.Option("--api-key", envvar="SEEKQ_API_KEY", help="API key.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def submit_command(
    kind: Annotated[str, typer.Argument(help="embed | ping | ...")],
    spec: Annotated[str, typer.Argument(help="The spec as JSON, or @file.json")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
    priority: int = 5,
    idempotency_key: str | None = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job."""
    with open_client(url, api_key) as client:
        job = call_api(
            client.submit,
            kind,
            _load_spec(spec),
            priority=priority,
            idempotency_key=idempotency_key,
        )
        if wait > 0:
            job = call_api(client.wait, job["id"], wait)
    _show_job(job, as_json)


@jobs_app.command("list")
def jobs_list(
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
    kind: str | None = None,
    status: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    as_json: JsonOpt = False,
) -> None:
    """The tenant's jobs, newest first."""
    with open_client(url, api_key) as client:
        page = call_api(client.list_jobs, kind=kind, status=status, limit=limit, cursor=cursor)
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    table = Table("id", "kind", "status", "attempts", "created")
    for job in page["data"]:
        table.add_row(
            job["id"], job["kind"], job["status"], str(job["attempts"]), job["created_at"]
        )
    console.print(table)
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}")


@jobs_app.command("show")
def jobs_show(
    job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "", as_json: JsonOpt = False
) -> None:
    """One job with its result."""
    with open_client(url, api_key) as client:
        _show_job(call_api(client.get, job_id), as_json)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "", as_json: JsonOpt = False
) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    with open_client(url, api_key) as client:
        _show_job(call_api(client.cancel, job_id), as_json)


def generate_command(
    prompt: Annotated[str, typer.Argument(help="The prompt (or, with --chat, the user message).")],
    model: Annotated[str, typer.Option(envvar="SEEKQ_GENERATE_MODEL")] = "tiny-deepseek",
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: Annotated[list[str] | None, typer.Option(help="A stop string (repeatable).")] = None,
    ban: Annotated[list[str] | None, typer.Option(help="A banned word (repeatable).")] = None,
    chat: Annotated[bool, typer.Option(help="Send the prompt as a chat user message.")] = False,
    stream: Annotated[bool, typer.Option(help="Print tokens as they are made.")] = True,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Generate text with a causal LM: a generate job, streamed as it runs."""
    spec: dict[str, Any] = {
        "model": model,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": stop or [],
        "banned_words": ban or [],
        "stream": stream and not as_json,
    }
    if chat:
        spec["messages"] = [{"role": "user", "content": prompt}]
    else:
        spec["prompt"] = prompt
    with open_client(url, api_key) as client:
        job = call_api(client.submit, "generate", spec)
        if spec["stream"]:
            call_api(_print_stream, client, job["id"])
        job = call_api(client.wait, job["id"], 120.0)
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    _show_generation(job, streamed=bool(spec["stream"]))


def _print_stream(client: SeekqClient, job_id: str) -> None:
    for piece in client.stream_events(job_id):
        typer.echo(printable(piece), nl=False)


def _show_generation(job: dict[str, Any], streamed: bool) -> None:
    result = job.get("result") or {}
    if not streamed and result:
        typer.echo(printable(result["text"]), nl=False)
    typer.echo("")
    if job.get("error"):
        console.print(f"[red]error[/] {job['error']['type']}: {job['error']['message']}")
        raise typer.Exit(1)
    if result:
        timing = result["timing"]
        console.print(
            f"[dim]{job['status']} · finish={result['finish_reason']} · "
            f"{result['prompt_tokens']} prompt + {result['completion_tokens']} completion tokens · "
            f"first token {timing['first_token_ms']:.0f} ms · total {timing['total_ms']:.0f} ms[/]"
        )


def printable(text: str) -> str:
    """Model output for a terminal: control characters (escape sequences) shown escaped."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode() for c in text
    )


def audit_command(
    url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "", limit: int = 20, as_json: JsonOpt = False
) -> None:
    """The tenant's audit trail (masked inputs, entity counts)."""
    with open_client(url, api_key) as client:
        page = call_api(client.audit, limit=limit)
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    console.print(audit_table(page["data"]))


def audit_table(events: list[dict[str, Any]]) -> Table:
    table = Table("time", "action", "job", "entities", "masked input", show_lines=True)
    for event in events:
        counts = ", ".join(f"{k}={v}" for k, v in event["entity_counts"].items()) or "-"
        job = (event["job_id"] or "-")[:8]
        table.add_row(
            event["created_at"][11:19], event["action"], job, counts, _texts(event["masked_input"])
        )
    return table


def _texts(masked: dict[str, Any]) -> str:
    """The user text of a masked spec (its PII fields), shortened for a terminal."""
    parts: list[str] = []
    text_fields = {field for entry in CATALOG.values() for field in entry.pii_fields}
    for key, value in masked.items():
        if key not in text_fields:
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
            parts.extend(v["content"] for v in value if isinstance(v, dict) and "content" in v)
    text = " | ".join(parts) or "-"
    return text if len(text) <= 300 else text[:297] + "..."


def _show_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    console.print(
        f"[bold]{job['id']}[/] {job['kind']} [cyan]{job['status']}[/] attempts={job['attempts']}"
    )
    if job.get("error"):
        console.print(f"[red]error[/] {job['error']['type']}: {job['error']['message']}")
    if job.get("result"):
        console.print(_summarise(job["result"]))


def _summarise(result: dict[str, Any]) -> str:
    shown = {k: v for k, v in result.items() if k != "vectors_base64"}
    if "vectors_base64" in result:
        shown["vectors"] = f"{len(result['vectors_base64'])} x {result.get('dimensions')}"
    return json.dumps(shown, ensure_ascii=False)


def _load_spec(spec: str) -> dict[str, Any]:
    """The spec read as the gateway reads JSON (jobs.strict_json): a duplicate key or a
    NaN is refused here, with the decoder's reason, never a piece of the text."""
    try:
        text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
        data = strict_json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"spec is not readable JSON ({exc.msg})") from None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"spec is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise typer.BadParameter("spec must be a JSON object")
    return data


def open_client(url: str, api_key: str) -> SeekqClient:
    if not api_key:
        raise typer.BadParameter("no API key: pass --api-key or set SEEKQ_API_KEY")
    return SeekqClient(url, api_key)


def call_api(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SeekqAPIError as exc:
        console.print(f"[red]{exc.status} {exc.code}[/]: {exc.message}")
        raise typer.Exit(1) from None
    except (httpx.TransportError, OSError) as exc:
        console.print(f"[red]cannot reach the gateway[/]: {type(exc).__name__}")
        raise typer.Exit(1) from None
