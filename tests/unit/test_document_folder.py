"""What `seekq ingest` sends from a folder, and what --prune may delete (conservatively)."""

import json
import os
from pathlib import Path

import pytest
import typer

from seekq.document_folder import collect, prune_candidates


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "guides" / "deep").mkdir(parents=True)
    (tmp_path / "guides" / "deep" / "setup.md").write_text("setup")
    (tmp_path / "notes.TXT").write_text("notes")
    (tmp_path / "faq.jsonl").write_text(
        json.dumps({"text": "a"}) + "\n\n" + json.dumps({"id": "own", "text": "b"}) + "\n"
    )
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "readme.md").write_text("hidden folder")
    (tmp_path / ".env.md").write_text("hidden file")
    os.symlink(tmp_path / "notes.TXT", tmp_path / "alias.md")
    os.symlink(tmp_path / "guides", tmp_path / "linked")
    return tmp_path


def test_collect_walks_regular_visible_files(folder: Path) -> None:
    files, skipped = collect(folder)
    assert [f.doc_id for f in files] == ["faq.jsonl", "guides/deep/setup.md", "notes.TXT"]
    assert skipped == [
        {"file": "alias.md", "reason": "symbolic link"},
        {"file": "photo.png", "reason": "unsupported type .png"},
    ]


def test_collect_one_file_and_a_prefix(folder: Path) -> None:
    files, skipped = collect(folder / "guides" / "deep" / "setup.md", "kb/")
    assert [f.doc_id for f in files] == ["kb/setup.md"] and skipped == []
    with pytest.raises(typer.BadParameter):
        collect(folder / "missing")


def test_prune_only_ids_naming_a_gone_file_under_the_prefix(folder: Path) -> None:
    indexed = [
        "guides/deep/setup.md",  # there
        "guides/old.md",  # gone
        "faq.jsonl#1",  # line 1 is there
        "faq.jsonl#2",  # line 2 is blank now
        "faq.jsonl#9",  # past the end
        "gone.jsonl#1",  # its file is gone
        "own",  # a .jsonl line's own id: its file cannot be told
        "../outside.md",  # not a path under the folder
        ".git/readme.md",  # hidden: never ingested, never pruned
        "report.xlsx",  # not a type ingest sends
        "people/[PHONE:2f1c9a0b].md",  # masked by the server: which file, unknowable
    ]
    assert prune_candidates(indexed, folder, "") == [
        "guides/old.md",
        "faq.jsonl#2",
        "faq.jsonl#9",
        "gone.jsonl#1",
    ]
    assert prune_candidates(["kb/gone.md", "gone.md", "kb/notes.TXT"], folder, "kb/") == [
        "kb/gone.md"
    ]
