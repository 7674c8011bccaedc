"""Format readers behind `jobs.documents.extract`: content → text with page and heading maps.

Each reader takes content already sniffed as its format and returns a `Layout`, or raises
`FormatError` with a `code` that `jobs.documents` turns into its typed error. Readers never
see a file name and never touch the file system.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import docx
import pypdf
from docx.opc.exceptions import PackageNotFoundError
from lxml import etree

_MAX_ZIP_MEMBERS = 10_000


@dataclass(frozen=True)
class Layout:
    text: str
    pages: tuple[tuple[int, int], ...] = ()  # (page number from 1, start offset)
    headings: tuple[tuple[int, str], ...] = ()  # (start offset of the heading line, title)


class FormatError(Exception):
    """The content cannot be read; `code` names why (a `DocumentError` code)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(offset, line) for every line of a text with `\\n` newlines."""
    offset = 0
    for line in text.split("\n"):
        yield offset, line
        offset += len(line) + 1


# --------------------------------------------------------------------------
# Markdown

_ATX = re.compile(r" {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r" {0,3}(?:=+|-+)[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def read_markdown(text: str) -> Layout:
    return Layout(text, headings=tuple(_markdown_headings(text)))


def _markdown_headings(text: str) -> Iterator[tuple[int, str]]:
    """ATX (`## Title`) and setext (`Title` over `===`/`---`) headings outside code fences."""
    fence = ""
    previous: tuple[int, str] | None = None  # the last paragraph line, a setext candidate
    for offset, line in lines(text):
        opener = _FENCE.match(line)
        if fence:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = ""
            continue
        if opener:
            fence, previous = opener.group(1), None
            continue
        atx = _ATX.match(line)
        if atx:
            if atx.group(1):
                yield offset, atx.group(1).strip()
            previous = None
        elif previous and _SETEXT.match(line):
            yield previous[0], previous[1].strip()
            previous = None
        else:
            previous = (offset, line) if line.strip() else None


# --------------------------------------------------------------------------
# Blocks (HTML, Word): paragraphs joined by a blank line, and one more newline before a
# heading, so the splitter (which ranks runs of newlines by length) prefers to cut there.


def _assemble(blocks: list[tuple[bool, str]]) -> Layout:
    parts: list[str] = []
    headings: list[tuple[int, str]] = []
    length = 0
    for is_heading, block in blocks:
        separator = ("\n\n\n" if is_heading else "\n\n") if parts else ""
        length += len(separator)
        if is_heading:
            headings.append((length, " ".join(block.split())))
        parts += [separator, block]
        length += len(block)
    return Layout("".join(parts), headings=tuple(headings))


# --------------------------------------------------------------------------
# HTML

_HTML_SKIP = frozenset({"script", "style", "noscript", "template", "title"})
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_HTML_BLOCKS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "body", "dd", "details", "div", "dl"),
        *("dt", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav"),
        *("ol", "p", "pre", "section", "summary", "table", "td", "th", "tr", "ul"),
    }
)


class _HtmlText(HTMLParser):
    """Blocks of an HTML page: headings h1-h6 and paragraphs; script, style and the like
    (and the <title>, page chrome) dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[bool, str]] = []
        self._pieces: list[str] = []
        self._skip = 0
        self._pre = 0
        self._heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self._skip += 1
        elif tag in _HTML_HEADINGS:
            self._flush()
            self._heading = True
        elif tag == "br":
            self._pieces.append("\n")
        elif tag in _HTML_BLOCKS and not self._heading:
            self._flush()
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _HTML_HEADINGS and self._heading:
            self._flush()
        elif tag in _HTML_BLOCKS and not self._heading:
            self._flush()
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._pieces.append(data if self._pre else re.sub(r"\s+", " ", data))

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        text = newlines("".join(self._pieces))
        text = text.strip("\n") if self._pre else re.sub(r" *\n *", "\n", text).strip()
        if text.strip():
            self.blocks.append((self._heading, text))
        self._pieces, self._heading = [], False


def read_html(text: str) -> Layout:
    parser = _HtmlText()
    try:
        parser.feed(text)
        parser.close()
    except (AssertionError, ValueError):  # _markupbase asserts on some malformed declarations
        raise FormatError("corrupt", "the HTML could not be parsed") from None
    return _assemble(parser.blocks)


# --------------------------------------------------------------------------
# PDF

_PDF_FAILURES = (
    pypdf.errors.PyPdfError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    zlib.error,
)
_ENCRYPTED = "the PDF is encrypted (it needs a password)"


def read_pdf(data: bytes) -> Layout:
    """Page texts joined by a blank line; pages without text are left out of the map."""
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _open_without_password(reader):
            raise FormatError("encrypted", _ENCRYPTED)
        texts = [newlines(page.extract_text() or "").replace("\x00", "") for page in reader.pages]
    except pypdf.errors.FileNotDecryptedError:
        raise FormatError("encrypted", _ENCRYPTED) from None
    except _PDF_FAILURES:
        raise FormatError("corrupt", "the PDF could not be read (corrupt?)") from None
    if not texts:
        raise FormatError("corrupt", "the PDF has no pages")
    pages = [(number, text.strip()) for number, text in enumerate(texts, start=1) if text.strip()]
    if not pages:
        raise FormatError(
            "no_text_layer", "the PDF has no extractable text (scanned? no text layer)"
        )
    parts: list[str] = []
    starts: list[tuple[int, int]] = []
    length = 0
    for number, page_text in pages:
        if parts:
            parts.append("\n\n")
            length += 2
        starts.append((number, length))
        parts.append(page_text)
        length += len(page_text)
    return Layout("".join(parts), pages=tuple(starts))


def _open_without_password(reader: pypdf.PdfReader) -> bool:
    """Many PDFs are encrypted with an owner password only; they open with an empty one."""
    try:
        return reader.decrypt("") != pypdf.PasswordType.NOT_DECRYPTED
    except pypdf.errors.DependencyError:  # an algorithm the installed crypto cannot do
        return False


# --------------------------------------------------------------------------
# Word (.docx)

_DOCX_FAILURES = (
    zipfile.BadZipFile,
    PackageNotFoundError,
    etree.XMLSyntaxError,
    KeyError,
    ValueError,
    EOFError,
    zlib.error,
)


def read_docx(data: bytes, *, max_expanded_bytes: int) -> Layout:
    _check_archive(data, max_expanded_bytes)
    try:
        word = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(word))
    except _DOCX_FAILURES:
        raise FormatError("corrupt", "the Word document could not be read (corrupt?)") from None
    return _assemble(blocks)


def _check_archive(data: bytes, max_expanded_bytes: int) -> None:
    """Refuse zip bombs by the sizes the archive declares, before anything inflates it.

    zipfile stops inflating a member at its declared size (and a lie then fails the CRC
    check), so the declared sizes bound what python-docx can expand. python-docx parses
    XML with entity resolution off, so entity bombs do not expand either.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise FormatError("corrupt", "the zip archive is corrupt") from None
    if not any(m.filename == "word/document.xml" for m in members):
        raise FormatError("content_mismatch", "a zip archive without word/document.xml")
    expanded = sum(m.file_size for m in members)
    if len(members) > _MAX_ZIP_MEMBERS or expanded > max_expanded_bytes:
        raise FormatError(
            "expands_too_large", f"the archive expands past {max_expanded_bytes} bytes"
        )


def _docx_blocks(word: Any) -> Iterator[tuple[bool, str]]:
    """Body paragraphs and tables in order (a row is one line, cells joined by " | ");
    headers, footers, notes and text boxes are not read."""
    for item in word.iter_inner_content():
        if isinstance(item, docx.table.Table):
            for row in item.rows:
                line = " | ".join(cell.text.strip() for cell in _distinct_cells(row.cells))
                if line.strip(" |"):
                    yield False, line
        elif item.text.strip():
            style = (item.style.name or "").lower() if item.style is not None else ""
            yield style.startswith("heading") or style == "title", item.text.strip()


def _distinct_cells(cells: tuple[Any, ...]) -> list[Any]:
    """python-docx repeats a horizontally merged cell once per grid column."""
    return [cell for i, cell in enumerate(cells) if i == 0 or cell is not cells[i - 1]]
