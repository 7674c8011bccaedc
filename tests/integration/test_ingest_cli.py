"""`seekq ingest` and `seekq search` as a user runs them: real processes against the real
stack (gateway, index / search / embed workers, Redis, SQL), on a folder of real documents."""

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import docx
import pytest

from tests.conftest import IndexWorkers, Stack, stack_env, unique
from tests.unit.test_documents import make_pdf

REFUNDS = "Refunds for annual plans are paid back to the original card within fourteen days."
SHIPPING = "Parcels to the islands travel by ferry and arrive on Thursdays."
PDF_LINE = "The lighthouse keeper logs the weather at dawn."
DOCX_LINE = "Quarterly revenue grew in the northern region."


def seekq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seekq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def ingest(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = seekq(env, "ingest", *args, "--json", "--wait-s", "120")
    assert done.returncode in {0, 3}, done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def search(env: dict[str, str], index: str, query: str, *args: str) -> list[dict[str, Any]]:
    done = seekq(env, "search", index, query, "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    hits: list[dict[str, Any]] = json.loads(done.stdout)["hits"]
    return hits


def make_docx(*paragraphs: str) -> bytes:
    word = docx.Document()
    word.add_heading("Sales", level=1)
    for paragraph in paragraphs:
        word.add_paragraph(paragraph)
    out = io.BytesIO()
    word.save(out)
    return out.getvalue()


def write_folder(root: Path) -> Path:
    """Good documents of every kind, three bad files, one skipped, one hidden."""
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "refunds.md").write_text(
        f"# Refunds\n\n{REFUNDS}\nWrite to billing@example.com with questions.\n"
    )
    (root / "shipping.txt").write_text(f"{SHIPPING}\n")
    (root / "welcome.html").write_text(
        "<html><body><h1>Welcome</h1><p>Our office opens at nine.</p></body></html>"
    )
    (root / "faq.jsonl").write_text(
        json.dumps({"text": "Passwords reset from the login page."})
        + "\n"
        + json.dumps({"id": "faq-hours", "text": "Support answers on weekdays."})
        + "\n"
    )
    (root / "logbook.pdf").write_bytes(make_pdf([[PDF_LINE]]))
    (root / "sales.docx").write_bytes(make_docx(DOCX_LINE))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage that is no PDF at all")
    (root / "empty.txt").write_bytes(b"")
    (root / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / ".drafts").mkdir()
    (root / ".drafts" / "secret.md").write_text("never sent")
    return root


@pytest.fixture(scope="module")
def env(stack: Stack, index_workers: IndexWorkers) -> dict[str, str]:
    env = stack_env(stack.database_url, stack.redis_db, stack.tmp, SEEKQ_URL=stack.url)
    env["SEEKQ_API_KEY"] = stack.key(unique("ingest"))
    return env


def test_ingest_search_reingest_and_prune(env: dict[str, str], tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "docs")
    index = unique("handbook")

    code, first = ingest(env, str(folder), "--index", index, "--type", "flat")
    assert code == 3  # some files failed, the rest are indexed
    assert first["created"] is True
    failed = {f["file"]: f["code"] for f in first["upload_failures"]}
    assert failed == {"broken.pdf": "corrupt", "empty.txt": "empty", "blob.txt": "binary"}
    assert [s["file"] for s in first["skipped"]] == ["photo.png"]
    summary = first["summary"]
    # refunds.md, shipping.txt, welcome.html, logbook.pdf, sales.docx, two .jsonl lines
    assert summary["documents_added"] == 7 and summary["documents_failed"] == 0
    assert summary["index_documents"] == 7 and summary["chunks"] >= 7

    hits = search(env, index, SHIPPING, "-k", "3")
    assert hits[0]["doc_id"] == "shipping.txt" and hits[0]["file"] == "shipping.txt"
    assert search(env, index, PDF_LINE)[0]["doc_id"] == "logbook.pdf"
    assert search(env, index, DOCX_LINE)[0]["doc_id"] == "sales.docx"
    refunds = search(env, index, "how do refunds work", "--filter", "file=refunds.md")
    assert {h["doc_id"] for h in refunds} == {"policies/refunds.md"}
    assert "billing@example.com" not in refunds[0]["text"]  # masked before it was stored
    jsonl_ids = {h["doc_id"] for h in search(env, index, "support hours and passwords", "-k", "7")}
    assert {"faq.jsonl#1", "faq-hours"} <= jsonl_ids

    code, again = ingest(env, str(folder), "--index", index)
    assert code == 3 and again["created"] is False
    summary = again["summary"]
    assert summary["documents_unchanged"] == 7
    assert summary["documents_added"] == summary["documents_updated"] == 0
    assert summary["chunks"] == 0 and summary["embed_jobs"] == 0

    for bad in ("broken.pdf", "empty.txt", "blob.txt", "shipping.txt"):
        (folder / bad).unlink()
    code, pruned = ingest(env, str(folder), "--index", index, "--prune")
    assert code == 0
    assert pruned["pruned"] == ["shipping.txt"]
    assert pruned["summary"]["documents_deleted"] == 1
    assert pruned["summary"]["index_documents"] == 6
    assert all(h["doc_id"] != "shipping.txt" for h in search(env, index, SHIPPING, "-k", "10"))


def test_search_table_and_refusals(env: dict[str, str], tmp_path: Path) -> None:
    index = unique("notes")
    (tmp_path / "note.md").write_text(f"# Travel\n\n{SHIPPING}\n\x1b[31mred\x1b[0m\n")
    done = seekq(env, "ingest", str(tmp_path / "note.md"), "--index", index)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 added" in done.stdout

    shown = seekq(env, "search", index, "when do parcels arrive")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "note.md" in shown.stdout and "Travel" in shown.stdout and "ms" in shown.stdout
    assert "\x1b[31m" not in shown.stdout  # control characters are shown escaped

    missing = seekq(env, "search", unique("none"), "anything")
    assert missing.returncode == 1 and "404" in missing.stdout
    refused = seekq(env, "ingest", str(tmp_path), "--index", unique("new"), "--no-create")
    assert refused.returncode == 1 and "index_not_found" in refused.stdout
    assert "Traceback" not in missing.stdout + missing.stderr + refused.stdout + refused.stderr
