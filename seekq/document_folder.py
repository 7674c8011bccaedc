"""A folder of documents as `seekq ingest` sees it: which files to send under which ids,
and which indexed ids name files that are gone (for --prune)."""

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import typer

from jobs.documents import SUPPORTED_EXTENSIONS
from jobs.pii import MASK_TOKEN

# What the server reads; anything else is reported as skipped, not sent.
SUPPORTED_SUFFIXES = SUPPORTED_EXTENSIONS
LINE_SUFFIX = re.compile(r"#(\d+)$")  # a .jsonl line's document: <the file's id>#<line>


@dataclass(frozen=True)
class LocalFile:
    path: Path
    doc_id: str


def collect(target: Path, id_prefix: str = "") -> tuple[list[LocalFile], list[dict[str, str]]]:
    """The regular files to upload (sorted by id) and those skipped, with why."""
    if target.is_symlink() or not target.exists():
        raise typer.BadParameter(f"{target} is not a file or folder")
    if target.is_file():
        return _consider(target, id_prefix + target.name)
    found: list[LocalFile] = []
    skipped: list[dict[str, str]] = []
    for path in _walk(target):
        files, skips = _consider(path, id_prefix + path.relative_to(target).as_posix())
        found += files
        skipped += skips
    return sorted(found, key=lambda f: f.doc_id), skipped


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, names in os.walk(root):  # symlinked folders are listed, not entered
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(folder, n) for n in sorted(names) if not n.startswith("."))


def _consider(path: Path, doc_id: str) -> tuple[list[LocalFile], list[dict[str, str]]]:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return [], [{"file": doc_id, "reason": "symbolic link"}]
    if not stat.S_ISREG(mode):
        return [], [{"file": doc_id, "reason": "not a regular file"}]
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return [], [{"file": doc_id, "reason": f"unsupported type {path.suffix or '(none)'}"}]
    return [LocalFile(path, doc_id)], []


def prune_candidates(indexed: list[str], root: Path, id_prefix: str) -> list[str]:
    """Ids under `id_prefix` that name a readable-type file missing from `root`, and
    `<file>.jsonl#<n>` ids whose file has no line n any more (or a blank one). Ids that
    name no such path (a .jsonl line's own id, another source's) are kept, and so are ids
    the server masked (personal data in a path): which local file they name cannot be
    told here, so they are never pruned."""
    lines: dict[Path, list[str]] = {}
    gone = []
    for doc_id in indexed:
        if not doc_id.startswith(id_prefix) or MASK_TOKEN.search(doc_id):
            continue
        relative = doc_id[len(id_prefix) :]
        line = LINE_SUFFIX.search(relative)
        parts = PurePosixPath(LINE_SUFFIX.sub("", relative)).parts
        if not parts or any(p in {".", ".."} or p.startswith(".") for p in parts):
            continue
        path = root.joinpath(*parts)
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        number = int(line[1]) if line and path.suffix.lower() == ".jsonl" else 0
        if not path.is_file() or (number and _no_line(path, number, lines)):
            gone.append(doc_id)
    return gone


def _no_line(path: Path, number: int, cache: dict[Path, list[str]]) -> bool:
    if path not in cache:
        cache[path] = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    found = cache[path]
    return number > len(found) or not found[number - 1].strip()
