"""Uploaded files in, plain-text documents out (with page and heading maps).

`extract()` sniffs what the bytes really are (never trusting the extension alone), reads
.txt, .md, .html/.htm, .pdf, .docx and .jsonl, and returns `Document` records whose
`pages` and `headings` map character offsets of `text` to page numbers and section titles.
`mask_document()` masks a document's PII before anything stores, chunks or embeds it.

A file that cannot be read raises one `DocumentError`; a .jsonl file with some bad lines
returns its good lines as documents and each bad line as a `BadLineError`. Messages name the
file (its safe name), the line and the reason, never the content:

    SpecError (jobs.errors)
    └── DocumentError                 code: what the API reports per file
        ├── InvalidFilenameError      empty, a dot name, control characters, too long
        ├── UnsupportedTypeError      an extension seekq does not read
        ├── DocumentTooLargeError     over max_bytes
        │   └── ArchiveBombError      a .docx that expands past max_expanded_bytes
        ├── EmptyDocumentError        no bytes, or no text once read
        ├── BinaryContentError        not UTF-8 / UTF-16 text, or NUL bytes
        ├── ContentMismatchError      the content is not what the extension says
        ├── CorruptDocumentError      the PDF / zip / Word parser gave up
        ├── EncryptedDocumentError    a PDF that opens only with a password
        ├── NoTextLayerError          a PDF without text (scanned?)
        └── BadLineError              one .jsonl line (the rest of the file is read)
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from jobs import formats
from jobs.errors import SpecError
from jobs.formats import FormatError, Layout, lines, newlines
from jobs.pii import PiiMasker

MAX_NAME_CHARS = 255
DEFAULT_MAX_EXPANDED_BYTES = 64 * 1024 * 1024
_MAX_LINE_METADATA_BYTES = 16 * 1024
_MAX_LINE_ID_CHARS = 256

PLAIN, MARKDOWN, HTML = "text/plain", "text/markdown", "text/html"
PDF, JSONL = "application/pdf", "application/jsonl"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

# extension → (sniffed kind the content must have, media type)
_EXTENSIONS: dict[str, tuple[str, str]] = {
    ".txt": ("text", PLAIN),
    ".md": ("text", MARKDOWN),
    ".markdown": ("text", MARKDOWN),
    ".html": ("text", HTML),
    ".htm": ("text", HTML),
    ".jsonl": ("text", JSONL),
    ".pdf": ("pdf", PDF),
    ".docx": ("zip", DOCX),
}
# The file extensions seekq reads (what `seekq ingest` uploads from a folder).
SUPPORTED_EXTENSIONS = frozenset(_EXTENSIONS)
_KIND_WORDS = {
    "text": "text",
    "pdf": "a PDF",
    "zip": "a zip archive",
    "ole": "an OLE compound file (a legacy .doc or an encrypted Office file)",
}


# --------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Document:
    """One document's text and where its pages and sections start (character offsets).

    `sha256` identifies the content: of the source bytes (the file, or the .jsonl line)
    after `extract()`, of the masked text and metadata after `mask_document()` — what an
    index stores, so no stored value derives from unmasked text.
    """

    doc_id: str
    text: str
    source_name: str
    media_type: str
    sha256: str
    pages: tuple[tuple[int, int], ...] = ()  # (page number from 1, start offset)
    headings: tuple[tuple[int, str], ...] = ()  # (start offset of the heading line, title)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Extraction:
    documents: list[Document]
    errors: list[BadLineError]  # per-line errors of a .jsonl file; empty otherwise


# --------------------------------------------------------------------------
# Errors


class DocumentError(SpecError):
    """A file (or one .jsonl line) that cannot become a document."""

    code: ClassVar[str] = "invalid_document"

    def __init__(self, filename: str, reason: str, *, line: int | None = None) -> None:
        where = filename if line is None else f"{filename} line {line}"
        super().__init__(f"{where}: {reason}")
        self.filename = filename
        self.reason = reason
        self.line = line

    def __reduce__(self) -> tuple[Any, ...]:  # pickle (e.g. a prefork pool) rebuilds it whole
        return functools.partial(type(self), line=self.line), (self.filename, self.reason)


class InvalidFilenameError(DocumentError):
    code = "invalid_filename"


class UnsupportedTypeError(DocumentError):
    code = "unsupported_type"


class DocumentTooLargeError(DocumentError):
    code = "too_large"


class ArchiveBombError(DocumentTooLargeError):
    code = "expands_too_large"


class EmptyDocumentError(DocumentError):
    code = "empty"


class BinaryContentError(DocumentError):
    code = "binary"


class ContentMismatchError(DocumentError):
    code = "content_mismatch"


class CorruptDocumentError(DocumentError):
    code = "corrupt"


class EncryptedDocumentError(DocumentError):
    code = "encrypted"


class NoTextLayerError(DocumentError):
    code = "no_text_layer"


class BadLineError(DocumentError):
    code = "bad_line"


_FORMAT_ERRORS: tuple[type[DocumentError], ...] = (
    ArchiveBombError,
    ContentMismatchError,
    CorruptDocumentError,
    EncryptedDocumentError,
    NoTextLayerError,
)
_ERRORS_BY_CODE = {cls.code: cls for cls in _FORMAT_ERRORS}


# --------------------------------------------------------------------------
# Names and sniffing


def safe_name(filename: str) -> str:
    """The last path component, checked; a label only, never joined to a path."""
    name = re.split(r"[/\\]", filename)[-1].strip()
    if not name or name in {".", ".."}:
        raise InvalidFilenameError("<invalid name>", "the file name is empty")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs"} for ch in name):
        raise InvalidFilenameError("<invalid name>", "the file name has control characters")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidFilenameError("<invalid name>", f"the file name is over {MAX_NAME_CHARS}")
    return name


def _extension(name: str) -> str:
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > 0 else ""
    if ext not in _EXTENSIONS:
        supported = ", ".join(sorted(_EXTENSIONS))
        raise UnsupportedTypeError(name, f"unsupported file type (supported: {supported})")
    return ext


def _sniff(data: bytes) -> str:
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    return "text"  # or binary: decoding decides


def _decode(name: str, data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise BinaryContentError(
            name, "not text: the bytes are not valid UTF-8 or UTF-16"
        ) from None
    if "\x00" in text:
        raise BinaryContentError(name, "not text: the content has NUL bytes")
    return newlines(text)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Entry point


def extract(
    filename: str,
    data: bytes,
    *,
    max_bytes: int,
    doc_id: str | None = None,
    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES,
) -> Extraction:
    """Read one uploaded file. `doc_id` defaults to the safe name (+ `#<line>` per .jsonl
    line without an "id"); pass a stable id (e.g. the path relative to an ingested folder)
    where two files may share a name."""
    name = safe_name(filename)
    ext = _extension(name)
    kind, media_type = _EXTENSIONS[ext]
    if len(data) > max_bytes:
        raise DocumentTooLargeError(name, f"the file is over the {max_bytes}-byte limit")
    if not data:
        raise EmptyDocumentError(name, "the file is empty")
    sniffed = _sniff(data)
    if sniffed != kind:
        raise ContentMismatchError(name, f"named {ext} but the content is {_KIND_WORDS[sniffed]}")
    base_id = doc_id or name
    if media_type == JSONL:
        return _read_jsonl(name, base_id, _decode(name, data))
    try:
        layout = _layout(name, media_type, data, max_expanded_bytes)
    except FormatError as error:
        raise _ERRORS_BY_CODE[error.code](name, error.reason) from None
    if not layout.text.strip():
        raise EmptyDocumentError(name, "the file has no text")
    document = Document(
        doc_id=base_id,
        text=layout.text,
        source_name=name,
        media_type=media_type,
        sha256=_sha256(data),
        pages=layout.pages,
        headings=layout.headings,
    )
    return Extraction([document], [])


def _layout(name: str, media_type: str, data: bytes, max_expanded_bytes: int) -> Layout:
    if media_type == PDF:
        return formats.read_pdf(data)
    if media_type == DOCX:
        return formats.read_docx(data, max_expanded_bytes=max_expanded_bytes)
    return _TEXT_READERS[media_type](_decode(name, data))


_TEXT_READERS: dict[str, Callable[[str], Layout]] = {
    PLAIN: Layout,
    MARKDOWN: formats.read_markdown,
    HTML: formats.read_html,
}


# --------------------------------------------------------------------------
# JSON Lines: {"id"?, "text", "metadata"?} per line


def _read_jsonl(name: str, base_id: str, text: str) -> Extraction:
    documents: list[Document] = []
    errors: list[BadLineError] = []
    first_line_of: dict[str, int] = {}
    for number, (_, line) in enumerate(lines(text), start=1):
        if not line.strip():
            continue
        try:
            document = _jsonl_document(name, base_id, number, line)
            if document.doc_id in first_line_of:
                seen = first_line_of[document.doc_id]
                raise BadLineError(name, f"duplicate id (first on line {seen})", line=number)
        except BadLineError as error:
            errors.append(error)
            continue
        first_line_of[document.doc_id] = number
        documents.append(document)
    if not documents and not errors:
        raise EmptyDocumentError(name, "the file has no lines")
    return Extraction(documents, errors)


def _reject_constant(token: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _jsonl_document(name: str, base_id: str, number: int, line: str) -> Document:
    def bad(reason: str) -> BadLineError:
        return BadLineError(name, reason, line=number)

    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise bad("not valid JSON") from None
    if not isinstance(record, dict):
        raise bad("not a JSON object")
    unknown = sorted(set(record) - {"id", "text", "metadata"})
    if unknown:
        raise bad(f"unknown keys {unknown} (allowed: id, text, metadata)")
    text, metadata = record.get("text"), record.get("metadata", {})
    if not isinstance(text, str) or not text.strip():
        raise bad('"text" must be a non-empty string')
    if not isinstance(metadata, dict):
        raise bad('"metadata" must be a JSON object')
    if not _storable(text) or not _storable(metadata):
        raise bad("NUL characters or lone surrogates (SQL cannot store them)")
    if len(json.dumps(metadata).encode()) > _MAX_LINE_METADATA_BYTES:
        raise bad(f'"metadata" is over {_MAX_LINE_METADATA_BYTES} bytes')
    doc_id = _line_id(record.get("id"), bad) or f"{base_id}#{number}"
    return Document(
        doc_id=doc_id,
        text=newlines(text),
        source_name=name,
        media_type=PLAIN,
        sha256=_sha256(line.encode()),
        metadata=metadata,
    )


def _storable(value: Any) -> bool:
    """JSON escapes can smuggle in what UTF-8 and PostgreSQL text refuse: NUL, lone
    surrogates."""
    if isinstance(value, str):
        return "\x00" not in value and not _SURROGATE.search(value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return True


_SURROGATE = re.compile("[\ud800-\udfff]")


def _line_id(value: Any, bad: Callable[[str], BadLineError]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise bad('"id" must be a string or an integer')
    doc_id = str(value)
    if not doc_id or len(doc_id) > _MAX_LINE_ID_CHARS:
        raise bad(f'"id" must have 1 to {_MAX_LINE_ID_CHARS} characters')
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs"} for ch in doc_id):
        raise bad('"id" has control characters')
    return doc_id


# --------------------------------------------------------------------------
# Masking


def mask_document(document: Document, masker: PiiMasker) -> tuple[Document, dict[str, int]]:
    """The document with PII masked in its text, heading titles and metadata values, its
    page and heading offsets moved to the masked text, and its sha256 taken over the
    masked content; plus the entity counts.

    Mask before chunking: a chunk boundary (or an overlap start) can cut through a card
    number or an e-mail address, and a masker that sees only the chunk would miss both
    halves. Chunking the masked text also makes token counts final.

    The text is masked piece by piece between page and heading starts, which are all line
    starts; that equals masking it whole because no pii-v2 detector matches across a line
    break (a test pins this).
    """
    counts: dict[str, int] = {}
    cuts = sorted({0, *(start for _, start in document.pages), *(o for o, _ in document.headings)})
    if any(cut and document.text[cut - 1] != "\n" for cut in cuts):
        raise ValueError("page and heading offsets must be line starts")
    moved: dict[int, int] = {}
    pieces: list[str] = []
    length = 0
    for lo, hi in zip(cuts, [*cuts[1:], len(document.text)], strict=True):
        moved[lo] = length
        pieces.append(_mask_into(document.text[lo:hi], masker, counts))
        length += len(pieces[-1])
    text = "".join(pieces)
    metadata = _mask_value(dict(document.metadata), masker, counts)
    content = json.dumps({"text": text, "metadata": metadata}, sort_keys=True, ensure_ascii=False)
    masked = replace(
        document,
        text=text,
        pages=tuple((number, moved[start]) for number, start in document.pages),
        headings=tuple((moved[o], masker.mask(title).text) for o, title in document.headings),
        metadata=metadata,
        sha256=_sha256(content.encode()),
    )
    return masked, counts


def _mask_into(text: str, masker: PiiMasker, counts: dict[str, int]) -> str:
    result = masker.mask(text)
    for entity, n in result.counts.items():
        counts[entity] = counts.get(entity, 0) + n
    return result.text


def _mask_value(value: Any, masker: PiiMasker, counts: dict[str, int]) -> Any:
    if isinstance(value, str):
        return _mask_into(value, masker, counts)
    if isinstance(value, dict):
        return {key: _mask_value(item, masker, counts) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_value(item, masker, counts) for item in value]
    return value
