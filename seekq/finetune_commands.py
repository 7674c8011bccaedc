"""`seekq finetune`: upload a JSONL dataset, train a LoRA adapter, follow it to the end.

    seekq finetune data.jsonl --base tiny-deepseek --name acme-support

The dataset is checked in full by the server before anything is queued (each bad line
is named). While the job runs a progress bar shows the step, the training loss and the
time left; when it succeeds the adapter is served at once as `<base>:<name>`.

Exit codes: 0 succeeded; 1 failed or refused; 3 cancelled; 4 still running when
--wait-s ran out (the job goes on; follow it with `seekq jobs show`).
"""

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api_gateway.client import SeekqClient
from seekq.client_commands import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    UrlOpt,
    call_api,
    open_client,
)

adapters_app = typer.Typer(help="The tenant's fine-tuned LoRA adapters.", no_args_is_help=True)
console = Console()
POLL_S = 0.5
EXIT = {"succeeded": 0, "failed": 1, "cancelled": 3}
StepOpt = Annotated[int | None, typer.Option(min=1)]


def finetune_command(
    data: Annotated[Path, typer.Argument(help="Training examples (JSONL).", exists=True)],
    base: Annotated[str, typer.Option("--base", help="The base model.")] = "tiny-deepseek",
    name: Annotated[str | None, typer.Option("--name", help="The adapter's name.")] = None,
    validation: Annotated[
        Path | None, typer.Option("--validation-file", help="Held-out examples (JSONL).")
    ] = None,
    epochs: StepOpt = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Overrides epochs.")] = None,
    batch_size: StepOpt = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", min=0)] = None,
    lora_r: StepOpt = None,
    lora_alpha: StepOpt = None,
    validation_split: Annotated[float | None, typer.Option(min=0, max=0.5)] = None,
    checkpoint_every: StepOpt = None,
    seed: Annotated[int | None, typer.Option(min=0)] = None,
    wait_s: Annotated[float, typer.Option(help="Stop following after this (it goes on).")] = (
        24 * 3600.0
    ),
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a LoRA adapter on a JSONL dataset and follow it (docstring: exit codes)."""
    options = {
        "n_epochs": epochs,
        "max_steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "validation_split": validation_split,
        "checkpoint_every": checkpoint_every,
        "seed": seed,
    }
    hyperparameters = {k: v for k, v in options.items() if v is not None}
    with open_client(url, api_key) as client:
        training = _upload(client, data, quiet=as_json)
        validation_id = _upload(client, validation, quiet=as_json) if validation else None
        job = call_api(
            client.create_fine_tune,
            base,
            training,
            suffix=name,
            validation_file=validation_id,
            hyperparameters=hyperparameters,
        )
        if not as_json:
            console.print(f"fine-tuning job [bold]{job['id']}[/] queued")
        try:
            job = follow_fine_tune(client, job, wait_s, quiet=as_json)
        except KeyboardInterrupt:
            job_id = job["seekq"]["job_id"]
            console.print(f"stopped following; it goes on (stop it: seekq jobs cancel {job_id})")
            raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(job, indent=2))
    else:
        show_fine_tune(job)
    raise typer.Exit(EXIT.get(job["status"], 4))


def _upload(client: SeekqClient, path: Path, *, quiet: bool) -> str:
    with path.open("rb") as content:
        uploaded = call_api(client.upload_file, path.name, content, purpose="fine-tune")
    if not quiet:
        console.print(f"uploaded {path.name}: {uploaded['documents']} examples ({uploaded['id']})")
    return str(uploaded["id"])


def follow_fine_tune(
    client: SeekqClient, job: dict[str, Any], wait_s: float, *, quiet: bool
) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
    )
    with Progress(*columns, console=console, disable=quiet) as bar:
        task = bar.add_task("queued", total=None, loss="", eta="")
        while job["status"] not in EXIT and time.monotonic() < deadline:
            time.sleep(POLL_S)
            job = call_api(client.get_fine_tune, job["id"])
            _update(bar, task, job)
    return job


def _update(bar: Progress, task: Any, job: dict[str, Any]) -> None:
    progress = job["seekq"]["progress"] or {}
    loss = progress.get("loss")
    eval_loss = progress.get("eval_loss")
    text = f"loss {loss:.4f}" if loss is not None else ""
    if eval_loss is not None:
        text += f", val {eval_loss:.4f}"
    eta = progress.get("eta_s")
    bar.update(
        task,
        description=job["seekq"]["status"],
        total=progress.get("total_steps"),
        completed=progress.get("step", 0),
        loss=text,
        eta=f"~{eta:.0f}s left" if eta is not None and job["status"] == "running" else "",
    )


def show_fine_tune(job: dict[str, Any]) -> None:
    status = job["status"]
    if status == "succeeded":
        result = job["seekq"]["result"] or {}
        last = (job["seekq"]["progress"] or {}).get("loss")
        console.print(
            f"[green]succeeded[/]: model [bold]{job['fine_tuned_model']}[/] is ready "
            f"({result.get('steps')} steps, last step loss {_num(last)}, "
            f"mean train loss {_num(result.get('train_loss'))}, "
            f"validation loss {_num(result.get('eval_loss'))}, "
            f"{result.get('trainable_params')} trainable parameters, "
            f"adapter {result.get('adapter_bytes')} bytes)"
        )
        console.print(f'use it: seekq generate --model {job["fine_tuned_model"]} "..."')
    elif status in EXIT:
        error = job.get("error") or {}
        detail = f": {error.get('code')}: {error.get('message')}" if error else ""
        console.print(f"[red]{status}[/]{detail}")
    else:
        console.print(f"still {job['seekq']['status']} on the server: {job['id']}")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@adapters_app.command("list")
def adapters_list(
    url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "", as_json: JsonOpt = False
) -> None:
    """Fine-tuned adapters of this tenant (use them as `--model <base>:<name>`)."""
    with open_client(url, api_key) as client:
        models = call_api(client.list_models)["data"]
    adapters = [m for m in models if "base_model" in m]
    if as_json:
        typer.echo(json.dumps(adapters, indent=2))
        return
    table = Table("model", "steps", "train loss", "validation loss", "bytes", "job")
    for adapter in adapters:
        metrics = adapter["metrics"]
        table.add_row(
            adapter["id"],
            str(metrics.get("steps")),
            _num(metrics.get("train_loss")),
            _num(metrics.get("eval_loss")),
            str(adapter["size_bytes"]),
            adapter["fine_tuning_job"],
        )
    console.print(table)


@adapters_app.command("delete")
def adapters_delete(
    model: Annotated[str, typer.Argument(help="<base>:<name>")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = "",
) -> None:
    """Delete a fine-tuned adapter (generate jobs can no longer use it)."""
    with open_client(url, api_key) as client:
        call_api(client.delete_model, model)
    console.print(f"deleted {model}")
