"""`seekq ingest` (a folder of documents into an index) and `seekq search`, over HTTP."""

import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api_gateway.client import SeekqAPIError, SeekqClient
from seekq.client_commands import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    UrlOpt,
    call_api,
    open_client,
    printable,
)
from seekq.document_folder import LINE_SUFFIX, LocalFile, collect, prune_candidates

console = Console()

MAX_DOCUMENTS_PER_JOB = 10_000
UPLOAD_THREADS = 4
# Answers that concern one file; any other error stops the run (bad key, server down...).
_PER_FILE_STATUSES = frozenset({400, 413, 415, 422})
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_COUNTS = ("added", "updated", "unchanged", "deleted", "failed")

INGEST_HELP = "\n\n".join(
    [
        "Upload a file or a folder (recursively) into an index, with progress bars.",
        "Hidden files and folders and symbolic links are left out; files of other types than "
        ".txt .md .html .pdf .docx .jsonl are listed as skipped. A document's id is its path "
        "relative to the folder (posix, after --id-prefix); a .jsonl file holds one document "
        "per line (id <path>#<line>, or the line's own id). Files the server cannot read are "
        "listed with their error code; the rest are indexed. Unchanged documents are not "
        "embedded again.",
        "--prune deletes the index's documents under --id-prefix whose file is gone from the "
        "folder (documents with their own .jsonl ids are kept: their file cannot be told).",
        "Exit codes: 0 all indexed; 1 the index job failed or the server refused the request; "
        "3 some files or documents failed (listed) while the others were indexed.",
    ]
)


Problem = dict[str, str]  # {"file"?, "code", "message"}


@dataclass(frozen=True)
class IngestOptions:
    path: Path
    create: bool = True
    index_options: dict[str, Any] = field(default_factory=dict)  # of a new index
    prune: bool = False
    id_prefix: str = ""
    keep_files: bool = False
    quiet: bool = False
    wait_s: float = 3600.0


@dataclass
class Ingest:
    """What one run found, sent and got back (the --json output)."""

    index: str
    created: bool = False
    files: list[LocalFile] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    upload_failures: list[Problem] = field(default_factory=list)  # not indexed
    upload_warnings: list[Problem] = field(default_factory=list)  # indexed in part
    file_ids: dict[str, str] = field(default_factory=dict)  # file id -> document id
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        results = [job["result"] for job in self.jobs if job.get("result")]
        totals: dict[str, Any] = {f"documents_{name}": 0 for name in _COUNTS}
        for key in [*totals, "chunks", "chunks_removed", "embed_jobs"]:
            totals[key] = sum(int(r.get(key, 0)) for r in results)
        if results:
            last = results[-1]
            totals.update(
                version=last["version"],
                index_documents=last["index_documents"],
                index_chunks=last["index_chunks"],
            )
        totals["failures"] = [  # a file the job could not read is named by its path
            {**f, "document": self.file_ids.get(f["document"], f["document"])}
            for r in results
            for f in r.get("failures", [])
        ]
        return totals

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "created": self.created,
            "files": len(self.files),
            "skipped": self.skipped,
            "upload_failures": self.upload_failures,
            "upload_warnings": self.upload_warnings,
            "jobs": [{k: job.get(k) for k in ("id", "status", "error")} for job in self.jobs],
            "summary": self.summary(),
            "pruned": self.pruned,
        }

    def exit_code(self) -> int:
        if any(job["status"] != "succeeded" for job in self.jobs):
            return 1
        failed = self.upload_failures or self.upload_warnings or self.summary()["documents_failed"]
        return 3 if failed else 0


# --------------------------------------------------------------------------
# Steps


def _progress(disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


def ensure_index(client: SeekqClient, run: Ingest, create: bool, options: dict[str, Any]) -> None:
    existing = client.find_index(run.index)
    if existing is None:
        if not create:
            raise SeekqAPIError(404, "index_not_found", f"no index '{run.index}' (--no-create)")
        try:
            client.create_index(run.index, **options)
            run.created = True
        except SeekqAPIError as exc:
            if exc.code != "index_exists":  # created meanwhile by someone else: use it
                raise
        return
    differing = {k: v for k, v in options.items() if v is not None and existing.get(k) != v}
    if differing:
        console.print(f"[yellow]index '{run.index}' exists; options ignored[/]: {differing}")


def upload(client: SeekqClient, run: Ingest, quiet: bool) -> list[dict[str, Any]]:
    """Upload every file; a file the server refuses is listed and the rest go on."""
    documents: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(UPLOAD_THREADS)
    try:
        with _progress(quiet) as bars:
            task = bars.add_task("uploading", total=len(run.files))
            futures = {pool.submit(_upload_one, client, f): f for f in run.files}
            for future in as_completed(futures):
                local, (uploaded, problem) = futures[future], future.result()
                if uploaded is None:
                    run.upload_failures.append({"file": local.doc_id, **problem})
                else:
                    run.file_ids[uploaded["id"]] = local.doc_id
                    documents.append({"file_id": uploaded["id"], "id": local.doc_id})
                    if uploaded.get("status_details"):  # e.g. bad .jsonl lines, left out
                        message = uploaded["status_details"]
                        run.upload_warnings.append(
                            {"file": local.doc_id, "code": "partly_read", "message": message}
                        )
                bars.advance(task)
    finally:  # a refusal that ends the run leaves no upload behind it
        pool.shutdown(cancel_futures=True)
    run.upload_failures.sort(key=lambda f: f["file"])
    run.upload_warnings.sort(key=lambda f: f["file"])
    return sorted(documents, key=lambda d: str(d["id"]))


def _upload_one(client: SeekqClient, local: LocalFile) -> tuple[dict[str, Any] | None, Problem]:
    """The file as uploaded, or None and why not."""
    try:
        with local.path.open("rb") as handle:
            return client.upload_file(local.path.name, handle), {}
    except OSError as exc:  # opening or reading the local file
        return None, {"code": "unreadable", "message": f"{local.doc_id}: {exc.strerror}"}
    except SeekqAPIError as exc:
        if exc.status not in _PER_FILE_STATUSES:
            raise
        return None, {"code": exc.code, "message": exc.message}
    except (httpx.WriteError, httpx.RemoteProtocolError) as exc:
        # The server can answer 413 and close before a big body is sent.
        return None, {"code": "upload_failed", "message": f"{local.doc_id}: {type(exc).__name__}"}


def submit_index(
    client: SeekqClient, run: Ingest, documents: list[dict[str, Any]], how: IngestOptions
) -> None:
    """Submit the documents (≤ 10,000 per job) and follow the jobs to their end."""
    run.jobs = [
        client.index_documents(run.index, documents[i : i + MAX_DOCUMENTS_PER_JOB])
        for i in range(0, len(documents), MAX_DOCUMENTS_PER_JOB)
    ]
    run.jobs = follow(client, run.jobs, "indexing", len(documents), how)


def forget_uploads(client: SeekqClient, run: Ingest) -> None:
    for file_id in run.file_ids:
        try:
            client.delete_file(file_id)
        except SeekqAPIError as exc:
            if exc.status != 404:
                raise


def follow(
    client: SeekqClient, jobs: list[dict[str, Any]], label: str, total: int, how: IngestOptions
) -> list[dict[str, Any]]:
    """The jobs once all are terminal (long-polls of 1 s, a bar of documents done), or as
    they stand after `how.wait_s`."""
    deadline = time.monotonic() + how.wait_s
    with _progress(how.quiet) as bars:
        task = bars.add_task(label, total=total)
        while True:
            jobs = [
                job if job["status"] in _TERMINAL else client.get(job["id"], wait_s=1)
                for job in jobs
            ]
            progress = [job.get("progress") or {} for job in jobs]
            done = sum(p.get("documents_done", 0) for p in progress)
            total = max(total, sum(p.get("documents_total", 0) for p in progress))
            bars.update(task, completed=done, total=total)
            if all(job["status"] in _TERMINAL for job in jobs) or time.monotonic() > deadline:
                return jobs


def prune(client: SeekqClient, run: Ingest, how: IngestOptions) -> None:
    indexed: list[str] = []
    cursor: str | None = None
    while True:
        page = client.list_index_documents(run.index, limit=200, cursor=cursor)
        indexed += [d["doc_id"] for d in page["data"]]
        if not (cursor := page.get("next_cursor")):
            break
    run.pruned = prune_candidates(indexed, how.path, how.id_prefix)
    for i in range(0, len(run.pruned), MAX_DOCUMENTS_PER_JOB):
        job = client.delete_documents(run.index, run.pruned[i : i + MAX_DOCUMENTS_PER_JOB])
        run.jobs += follow(client, [job], "pruning", len(run.pruned), how)


# --------------------------------------------------------------------------
# Output


def show_ingest(run: Ingest) -> None:
    if run.skipped:
        console.print(f"[dim]skipped {len(run.skipped)} file(s):[/]")
        for skip in run.skipped:
            console.print(f"[dim]  {shown(skip['file'])}: {shown(skip['reason'])}[/]")
    summary = run.summary()
    problems = run.upload_failures + run.upload_warnings
    failures = [(f["file"], f["code"], f["message"]) for f in problems] + [
        (f["document"], f["code"], f["message"]) for f in summary["failures"]
    ]
    if failures:
        table = Table("file", "code", "message", title="problems", title_justify="left")
        for name, code, message in failures:
            table.add_row(shown(name), shown(code), shown(message))
        console.print(table)
    for job in run.jobs:
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            message = shown(str(error.get("message", f"see: seekq jobs show {job['id']}")))
            console.print(f"[red]job {job['id']} {job['status']}[/]: {message}")
    counts = " · ".join(f"{summary[f'documents_{n}']} {n}" for n in _COUNTS)
    version = f" · version {summary['version']}" if "version" in summary else ""
    console.print(
        f"[bold]{run.index}[/]{' (created)' if run.created else ''}: {counts} · "
        f"{summary['chunks']} chunks embedded{version}"
        + (f" · {len(run.pruned)} pruned" if run.pruned else "")
    )
    if "index_documents" in summary:
        console.print(
            f"[dim]the index holds {summary['index_documents']} documents, "
            f"{summary['index_chunks']} chunks[/]"
        )


# --------------------------------------------------------------------------
# Commands


def ingest_command(
    path: Annotated[Path, typer.Argument(help="A file or a folder.")],
    index_name: Annotated[str, typer.Option("--index", "-i", help="The index.")],
    type_: Annotated[
        str | None, typer.Option("--type", help="flat | hnsw | ivf (a new index; hnsw).")
    ] = None,
    metric: Annotated[str | None, typer.Option(help="ip | l2 (a new index; ip).")] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model (a new index).")] = None,
    create: Annotated[
        bool, typer.Option("--create/--no-create", help="Create the index if missing.")
    ] = True,
    prune_gone: Annotated[
        bool, typer.Option("--prune", help="Delete documents whose file is gone.")
    ] = False,
    id_prefix: Annotated[str, typer.Option(help="Put before every document id.")] = "",
    keep_files: Annotated[
        bool, typer.Option(help="Keep the uploaded files once indexed (GET /v1/files).")
    ] = False,
    wait_s: Annotated[
        float, typer.Option(help="Stop following the index job after this (it goes on).")
    ] = 3600.0,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Upload a file or a folder into an index (the full help: INGEST_HELP)."""
    run = Ingest(index_name)
    run.files, run.skipped = collect(path, id_prefix)
    if prune_gone and not path.is_dir():
        raise typer.BadParameter("--prune needs a folder")
    how = IngestOptions(
        path,
        create,
        {"type": type_, "metric": metric, "model": model},
        prune_gone,
        id_prefix,
        keep_files,
        quiet=as_json,
        wait_s=wait_s,
    )
    with open_client(url, api_key) as client:
        try:
            call_api(run_ingest, client, run, how)
        except KeyboardInterrupt:
            running = [job["id"] for job in run.jobs if job["status"] not in _TERMINAL]
            console.print(f"stopped; on the server still: {', '.join(running) or 'nothing'}")
            raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(run.as_json(), indent=2))
    else:
        show_ingest(run)
    raise typer.Exit(run.exit_code())


def run_ingest(client: SeekqClient, run: Ingest, how: IngestOptions) -> None:
    ensure_index(client, run, how.create, how.index_options)
    documents = upload(client, run, how.quiet)
    try:
        if documents:
            submit_index(client, run, documents, how)
    finally:
        if not how.keep_files and all(job["status"] in _TERMINAL for job in run.jobs):
            forget_uploads(client, run)  # the index keeps its documents; the files are spent
    if how.prune and all(job["status"] == "succeeded" for job in run.jobs):
        prune(client, run, how)


def search_command(
    index: Annotated[str, typer.Argument(help="The index.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many passages (1-100).")] = 5,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="key=value (repeatable); file=NAME, doc_id=ID or metadata."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """The passages of an index closest to a query, with their files and scores."""
    where = dict(_filter_pair(item) for item in filters or [])
    with open_client(url, api_key) as client:
        started = time.perf_counter()
        found = call_api(client.search, index, query, k=k, filter=where)
        round_trip_ms = (time.perf_counter() - started) * 1000
    if as_json:
        typer.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    console.print(hits_table(found["hits"]))
    timing = found["timing"]
    console.print(
        f"[dim]{found['index']} v{found['version']} · {found['model']} · "
        f"embed {timing['embed_ms']:.1f} ms · search {timing['search_ms']:.1f} ms · "
        f"fetch {timing['fetch_ms']:.1f} ms · round trip {round_trip_ms:.0f} ms[/]"
    )


def hits_table(hits: list[dict[str, Any]]) -> Table:
    table = Table("#", "score", "file", "where", "passage", show_lines=True)
    for rank, hit in enumerate(hits, 1):
        name = hit["doc_id"]
        if not LINE_SUFFIX.sub("", name).endswith(hit["file"]):
            name = f"{name} ({hit['file']})"
        where = [f"p. {hit['page']}" if hit.get("page") else "", hit.get("heading") or ""]
        table.add_row(
            str(rank),
            f"{hit['score']:.3f}",
            shown(name),
            shown(" · ".join(w for w in where if w)) or "-",
            shown(snippet(hit["text"])),
        )
    return table


def shown(text: str) -> str:
    """Text from a file or the server for a rich console: control characters escaped, no
    markup taken from it."""
    return escape(printable(text))


def snippet(text: str, max_chars: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 3] + "..."


def _filter_pair(item: str) -> tuple[str, Any]:
    """key=value; a value that reads as a JSON number, boolean or string is taken as such."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"--filter takes key=value, got {item!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return key, value if isinstance(value, str | int | float | bool) else raw
