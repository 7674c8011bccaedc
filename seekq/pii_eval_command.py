"""`seekq pii-eval`: precision, recall and leaks of the PII masker on a labelled corpus."""

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from jobs.pii_corpus import DEFAULT_DOCUMENTS, DEFAULT_SEED, generate_corpus
from jobs.pii_eval import PRECISION_TARGET, RECALL_TARGET, EvalReport, evaluate, report_dict

console = Console()


def _table(report: EvalReport) -> Table:
    title = f"PII masking: {report.documents} documents, {report.characters} characters"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("type", "gold", "found", "pred", "right", "precision", "recall", "F2", "ok"):
        table.add_column(column, justify="left" if column == "type" else "right", no_wrap=True)
    for s in report.scores:
        ok = "[green]yes[/]" if s.meets_targets else "[red]no[/]"
        table.add_row(
            s.entity, str(s.gold), str(s.found), str(s.predicted), str(s.correct),
            f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f2:.4f}", ok,
        )  # fmt: skip
    return table


def _print(report: EvalReport) -> None:
    console.print(_table(report))
    console.print(
        f"character leak rate: {report.leak_rate:.6f} "
        f"({report.leaked_characters} of {report.gold_characters} PII characters unmasked)"
    )
    console.print(
        f"false positives: {report.false_positives} "
        f"({report.false_positives_per_10k_chars:.3f} per 10,000 characters)"
    )
    for kind, n in report.missed_kinds.items():
        console.print(f"  missed: {kind} x{n}")
    for kind, n in report.false_positive_kinds.items():
        console.print(f"  false positive: {kind} x{n}")
    verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
    console.print(f"{verdict}: targets recall >= {RECALL_TARGET}, precision >= {PRECISION_TARGET}")


def pii_eval_command(
    seed: Annotated[int, typer.Option(help="Corpus seed.")] = DEFAULT_SEED,
    documents: Annotated[int, typer.Option(min=1, help="Documents to generate.")] = (
        DEFAULT_DOCUMENTS
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Measure PII masking on a seeded synthetic corpus (English and Chinese).

    Exit code 1 when any entity type misses recall >= 0.99 or precision >= 0.95.
    """
    report = evaluate(generate_corpus(seed=seed, documents=documents))
    if as_json:
        typer.echo(json.dumps({"seed": seed, **report_dict(report)}, indent=2))
    else:
        _print(report)
    if not report.passed:
        raise typer.Exit(1)
