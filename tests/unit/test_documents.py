"""Unit tests for jobs.documents (and the readers in jobs.formats): a real folder of mixed
documents, good and broken, built here; every broken file gets its precise error and the
rest still extract."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import docx
import pypdf
import pytest

from jobs.documents import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    ArchiveBombError,
    BadLineError,
    BinaryContentError,
    ContentMismatchError,
    CorruptDocumentError,
    Document,
    DocumentError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedDocumentError,
    Extraction,
    InvalidFilenameError,
    NoTextLayerError,
    UnsupportedTypeError,
    extract,
    mask_document,
    safe_name,
)
from jobs.errors import SpecError
from jobs.pii import PiiMasker

MAX_BYTES = 200_000
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
# Put into every broken file's content: no error message may repeat it.
SECRET = "s3cr3t-content-marker"

NOTES = f"Refund policy.\r\nRefunds reach the card {CARD} within five days.\r\nAsk {EMAIL}.\n"
GUIDE = """# Handbook

Welcome to the handbook.

## Refunds

Refunds take five days.

```bash
# not a heading: inside a code fence
```

Shipping
========

Parcels leave daily.
"""
PAGE = """<!doctype html><html><head><title>Page title</title>
<style>body { color: red }</style><script>var secret = "do not index";</script></head>
<body><h1>Support &amp; Help</h1><p>Call   us
any day.</p><div>Line one<br>Line two</div>
<h2>Opening <em>hours</em></h2><p>Nine to five.</p><pre>  keep   this
  spacing</pre><noscript>enable js</noscript></body></html>"""
PDF_PAGES = [
    ["Page one opens the manual.", "Returns are accepted for thirty days."],
    ["Page two covers shipping.", "Parcels are tracked (end to end)."],
]


# --------------------------------------------------------------------------
# Builders


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF written by hand: one Helvetica text object per page, an xref."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, lines in enumerate(pages):
        shown = " ".join(f"({_escape(line)}) Tj T*" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode("latin-1") if lines else b""
        objects[4 + 2 * i] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects[5 + 2 * i] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in sorted(objects))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def encrypt_pdf(data: bytes, *, user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner-pw", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    word = docx.Document()
    word.add_heading("Quarterly report", level=1)
    word.add_paragraph(f"Sales grew. Contact {EMAIL} with questions.")
    word.add_heading("Regions", level=2)
    table = word.add_table(rows=2, cols=2)
    for r, row in enumerate([("Region", "Growth"), ("North", "12%")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    word.add_paragraph("The north led the quarter.")
    out = io.BytesIO()
    word.save(out)
    return out.getvalue()


def rezip(data: bytes, change: Callable[[str, bytes], bytes]) -> bytes:
    """The same archive with each member's bytes passed through `change(name, bytes)`."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, change(info.filename, src.read(info)), zipfile.ZIP_DEFLATED)
    return out.getvalue()


def padded_document_xml(name: str, body: bytes) -> bytes:
    """word/document.xml grown by whitespace: tiny compressed, big expanded."""
    return (
        body.replace(b"</w:body>", b" " * 2_000_000 + b"</w:body>")
        if name == "word/document.xml"
        else body
    )


def lying_sizes(data: bytes, member: str, size: int) -> bytes:
    """Patch the uncompressed size `member` declares (local and central headers)."""
    out = bytearray(data)
    name = member.encode()
    for signature, field_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = out.find(signature)
        while at >= 0:
            if out[at + name_at : at + name_at + len(name)] == name:
                out[at + field_at : at + field_at + 4] = struct.pack("<I", size)
            at = out.find(signature, at + 1)
    return bytes(out)


GOOD = {
    "notes.txt": NOTES.encode(),
    "guide.md": GUIDE.encode(),
    "page.html": PAGE.encode(),
    "manual.pdf": make_pdf(PDF_PAGES),
    "report.docx": make_docx(),
    "records.jsonl": b"\n".join(
        [
            json.dumps(
                {"id": "r-1", "text": "First record.", "metadata": {"team": "ops"}}
            ).encode(),
            json.dumps({"text": "Second record without an id."}).encode(),
            b"",
            b'{"text": "' + SECRET.encode() + b'", broken',
            json.dumps({"id": "r-4", "metadata": {"note": SECRET}}).encode(),
            json.dumps({"id": "r-1", "text": "Same id again."}).encode(),
            json.dumps({"id": "r-7", "text": "Seventh.", "extra": 1}).encode(),
        ]
    ),
}
BROKEN: dict[str, tuple[bytes, type[DocumentError]]] = {
    "empty.txt": (b"", EmptyDocumentError),
    "blank.md": (b"  \n\n\t\n", EmptyDocumentError),
    "binary.txt": (b"\x89\xff\xfe" + SECRET.encode() + bytes(range(256)), BinaryContentError),
    "nul.txt": (SECRET.encode() + b"\x00tail", BinaryContentError),
    "oversized.txt": (SECRET.encode() * (MAX_BYTES // len(SECRET) + 1), DocumentTooLargeError),
    "named.pdf": (f"just text {SECRET}".encode(), ContentMismatchError),
    "renamed.txt": (make_pdf([[SECRET]]), ContentMismatchError),
    "legacy.docx": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + SECRET.encode(), ContentMismatchError),
    "archive.docx": (
        rezip(make_docx(), lambda n, b: b).replace(b"word/document.xml", b"word/documenx.xml"),
        ContentMismatchError,
    ),
    "corrupt.pdf": (b"%PDF-1.4\n" + SECRET.encode() + b"\n1 0 obj << /Type", CorruptDocumentError),
    "truncated.docx": (make_docx()[:3000], CorruptDocumentError),
    "lying.docx": (lying_sizes(make_docx(), "word/document.xml", 100), CorruptDocumentError),
    "locked.pdf": (encrypt_pdf(make_pdf([[SECRET]]), user_password="pw"), EncryptedDocumentError),
    "scanned.pdf": (make_pdf([[], []]), NoTextLayerError),
    "bomb.docx": (rezip(make_docx(), padded_document_xml), ArchiveBombError),
    "declared.docx": (lying_sizes(make_docx(), "word/document.xml", 2**31), ArchiveBombError),
    "picture.png": (b"\x89PNG\r\n\x1a\n" + SECRET.encode(), UnsupportedTypeError),
    "noextension": (SECRET.encode(), UnsupportedTypeError),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("documents")
    for name, data in {**GOOD, **{n: d for n, (d, _) in BROKEN.items()}}.items():
        (root / name).write_bytes(data)
    return root


def read(name: str, data: bytes, **options: int) -> Extraction:
    return extract(name, data, max_bytes=MAX_BYTES, max_expanded_bytes=1_000_000, **options)


@pytest.fixture(scope="module")
def ingested(folder: Path) -> dict[str, Extraction | DocumentError]:
    """The whole folder, one file at a time, as an index job would read it."""
    results: dict[str, Extraction | DocumentError] = {}
    for path in sorted(folder.iterdir()):
        try:
            results[path.name] = read(path.name, path.read_bytes())
        except DocumentError as error:
            results[path.name] = error
    return results


def one(result: Extraction | DocumentError) -> Document:
    assert isinstance(result, Extraction), result
    assert len(result.documents) == 1 and not result.errors
    return result.documents[0]


# --------------------------------------------------------------------------
# The folder


def test_every_broken_file_gets_its_own_error_and_the_rest_extract(
    ingested: dict[str, Extraction | DocumentError],
) -> None:
    errors = {name: type(r) for name, r in ingested.items() if isinstance(r, DocumentError)}
    assert errors == {name: error for name, (_, error) in BROKEN.items()}
    assert {name for name, r in ingested.items() if isinstance(r, Extraction)} == set(GOOD)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_errors_name_the_file_and_never_echo_content(
    ingested: dict[str, Extraction | DocumentError], name: str
) -> None:
    error = ingested[name]
    assert isinstance(error, DocumentError) and isinstance(error, SpecError)
    assert error.filename == name and str(error).startswith(f"{name}: ")
    assert SECRET not in str(error) and SECRET not in repr(error.args)
    assert error.code and error.code != DocumentError.code


def test_errors_survive_pickling() -> None:
    error = BadLineError("r.jsonl", "not valid JSON", line=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.line, copy.reason) == (
        BadLineError,
        "r.jsonl line 3: not valid JSON",
        3,
        "not valid JSON",
    )


def test_error_messages(ingested: dict[str, Extraction | DocumentError]) -> None:
    reasons = {name: r.reason for name, r in ingested.items() if isinstance(r, DocumentError)}
    assert reasons["named.pdf"] == "named .pdf but the content is text"
    assert reasons["renamed.txt"] == "named .txt but the content is a PDF"
    assert "scanned? no text layer" in reasons["scanned.pdf"]
    assert "password" in reasons["locked.pdf"]
    assert "1000000 bytes" in reasons["bomb.docx"]
    assert "legacy .doc or an encrypted Office file" in reasons["legacy.docx"]
    assert "word/document.xml" in reasons["archive.docx"]
    assert f"{MAX_BYTES}-byte limit" in reasons["oversized.txt"]


# --------------------------------------------------------------------------
# Formats


def test_plain_text(ingested: dict[str, Extraction | DocumentError]) -> None:
    document = one(ingested["notes.txt"])
    assert document.text == NOTES.replace("\r\n", "\n")
    assert (document.doc_id, document.source_name, document.media_type) == (
        "notes.txt",
        "notes.txt",
        PLAIN,
    )
    assert document.sha256 == hashlib.sha256(GOOD["notes.txt"]).hexdigest()
    assert document.pages == () and document.headings == () and document.metadata == {}


@pytest.mark.parametrize(
    "data",
    [
        codecs.BOM_UTF8 + "héllo".encode(),
        codecs.BOM_UTF16_LE + "héllo".encode("utf-16-le"),
        codecs.BOM_UTF16_BE + "héllo".encode("utf-16-be"),
    ],
    ids=["utf-8-bom", "utf-16-le-bom", "utf-16-be-bom"],
)
def test_text_encodings_with_a_bom(data: bytes) -> None:
    assert one(read("a.txt", data)).text == "héllo"


@pytest.mark.parametrize(
    "data", ["héllo".encode("utf-16-le"), "héllo".encode("latin-1")], ids=["utf-16", "latin-1"]
)
def test_text_without_a_bom_must_be_utf8(data: bytes) -> None:
    with pytest.raises(BinaryContentError):
        read("a.txt", data)


def test_markdown_headings_skip_code_fences_and_read_setext(
    ingested: dict[str, Extraction | DocumentError],
) -> None:
    document = one(ingested["guide.md"])
    assert document.media_type == MARKDOWN and document.text == GUIDE
    assert [title for _, title in document.headings] == ["Handbook", "Refunds", "Shipping"]
    starts = [document.text[offset:].split("\n")[0] for offset, _ in document.headings]
    assert starts == ["# Handbook", "## Refunds", "Shipping"]


def test_html_keeps_text_and_headings_and_drops_scripts(
    ingested: dict[str, Extraction | DocumentError],
) -> None:
    document = one(ingested["page.html"])
    assert document.media_type == HTML
    for dropped in ("do not index", "color: red", "enable js", "Page title"):
        assert dropped not in document.text
    assert document.headings == (
        (0, "Support & Help"),
        (document.text.index("Opening hours"), "Opening hours"),
    )
    assert "Call us any day." in document.text
    assert "Line one\nLine two" in document.text
    assert "  keep   this\n  spacing" in document.text  # <pre> keeps its whitespace
    assert "\n\n\nOpening hours" in document.text  # a stronger break before a heading


def test_pdf_pages(ingested: dict[str, Extraction | DocumentError]) -> None:
    document = one(ingested["manual.pdf"])
    assert document.media_type == PDF
    assert [number for number, _ in document.pages] == [1, 2]
    (_, first), (_, second) = document.pages
    assert first == 0
    assert document.text[first:].startswith("Page one opens the manual.")
    assert document.text[second:] == "Page two covers shipping.\nParcels are tracked (end to end)."


def test_pdf_page_numbers_skip_pages_without_text() -> None:
    document = one(read("m.pdf", make_pdf([[], ["Only the second page."], []])))
    assert document.pages == ((2, 0),)


def test_pdf_with_only_an_owner_password_opens() -> None:
    data = encrypt_pdf(make_pdf(PDF_PAGES), user_password="")
    assert pypdf.PdfReader(io.BytesIO(data)).is_encrypted
    assert [number for number, _ in one(read("owner.pdf", data)).pages] == [1, 2]


def test_docx_paragraphs_headings_and_tables(
    ingested: dict[str, Extraction | DocumentError],
) -> None:
    document = one(ingested["report.docx"])
    assert document.media_type == DOCX
    assert [title for _, title in document.headings] == ["Quarterly report", "Regions"]
    for offset, title in document.headings:
        assert document.text[offset:].startswith(title)
    assert "Region | Growth\n\nNorth | 12%" in document.text
    assert document.text.endswith("The north led the quarter.")


def test_docx_under_the_default_expansion_limit_reads() -> None:
    big = rezip(make_docx(), padded_document_xml)
    assert one(extract("big.docx", big, max_bytes=MAX_BYTES)).headings


def test_jsonl_lines_are_documents_and_bad_lines_are_errors(
    ingested: dict[str, Extraction | DocumentError],
) -> None:
    result = ingested["records.jsonl"]
    assert isinstance(result, Extraction)
    assert [(d.doc_id, d.text, d.metadata) for d in result.documents] == [
        ("r-1", "First record.", {"team": "ops"}),
        ("records.jsonl#2", "Second record without an id.", {}),
    ]
    assert all(d.source_name == "records.jsonl" for d in result.documents)
    lines = GOOD["records.jsonl"].split(b"\n")
    assert result.documents[1].sha256 == hashlib.sha256(lines[1]).hexdigest()
    assert [(e.line, e.reason) for e in result.errors] == [
        (4, "not valid JSON"),
        (5, '"text" must be a non-empty string'),
        (6, "duplicate id (first on line 1)"),
        (7, "unknown keys ['extra'] (allowed: id, text, metadata)"),
    ]
    assert all(isinstance(e, BadLineError) and SECRET not in str(e) for e in result.errors)
    assert str(result.errors[0]) == "records.jsonl line 4: not valid JSON"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"text": "x", "metadata": [1]}', '"metadata" must be a JSON object'),
        ('{"text": "x", "metadata": {"v": NaN}}', "not valid JSON"),
        ('{"text": "x", "id": true}', '"id" must be a string or an integer'),
        ('{"text": "x", "id": ""}', '"id" must have 1 to 256 characters'),
        ('{"text": "x", "id": "a\\u0007b"}', '"id" has control characters'),
        (
            '{"text": "nul \\u0000 here"}',
            "NUL characters or lone surrogates (SQL cannot store them)",
        ),
        ('{"text": "half \\ud800"}', "NUL characters or lone surrogates (SQL cannot store them)"),
    ],
)
def test_jsonl_line_checks(line: str, reason: str) -> None:
    result = read("r.jsonl", line.encode())
    assert result.documents == [] and [e.reason for e in result.errors] == [reason]


def test_jsonl_ids_default_to_a_given_doc_id_and_line() -> None:
    result = read("r.jsonl", b'{"text": "a"}\n{"text": "b", "id": 42}', doc_id="team/r.jsonl")
    assert [d.doc_id for d in result.documents] == ["team/r.jsonl#1", "42"]


def test_a_given_doc_id_replaces_the_name() -> None:
    document = one(read("dir/notes.txt", b"hello", doc_id="dir/notes.txt"))
    assert (document.doc_id, document.source_name) == ("dir/notes.txt", "notes.txt")


# --------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("C:\\Users\\me\\notes.md", "notes.md"),
        ("  report final.pdf ", "report final.pdf"),
        ("résumé.docx", "résumé.docx"),
    ],
)
def test_safe_names_drop_directories(given: str, safe: str) -> None:
    assert safe_name(given) == safe


@pytest.mark.parametrize(
    "given",
    ["", "dir/", "..", "a/..", "a\x00b.txt", "a\nb.txt", "evil\u202etxt.exe", "x" * 252 + ".txt"],
)
def test_unsafe_names_are_refused_without_echoing_them(given: str) -> None:
    with pytest.raises(InvalidFilenameError) as caught:
        read(given, b"text")
    assert caught.value.filename == "<invalid name>"


# --------------------------------------------------------------------------
# Masking


@pytest.fixture(scope="module")
def masker() -> PiiMasker:
    return PiiMasker(b"document-test-key-0123456789")


def test_masking_removes_pii_and_keeps_the_maps(masker: PiiMasker) -> None:
    text = f"Intro {EMAIL}.\n\n## Cards\n\nPay with {CARD} today.\n\nPage two for {EMAIL}."
    raw = Document(
        doc_id="d",
        text=text,
        source_name="d.md",
        media_type=MARKDOWN,
        sha256="raw",
        pages=((1, 0), (2, text.index("Page two"))),
        headings=((text.index("## Cards"), f"Cards of {EMAIL}"),),
        metadata={"owner": EMAIL, "tags": [CARD, 3], "n": 1},
    )
    masked, counts = mask_document(raw, masker)
    assert counts == {"EMAIL": 3, "CARD_NUMBER": 2}
    dumped = json.dumps([masked.text, masked.headings, masked.metadata])
    assert EMAIL not in dumped and CARD not in dumped and "jane" not in dumped
    assert masked.text[masked.pages[1][1] :].startswith("Page two for [EMAIL:")
    assert masked.text[masked.headings[0][0] :].startswith("## Cards")
    assert masked.headings[0][1].startswith("Cards of [EMAIL:")
    assert masked.metadata["tags"][1:] == [3] and masked.metadata["n"] == 1
    assert masked.sha256 != raw.sha256 and mask_document(raw, masker)[0].sha256 == masked.sha256
    assert (masked.doc_id, masked.source_name) == (raw.doc_id, raw.source_name)


def test_masking_by_pieces_equals_masking_whole(masker: PiiMasker) -> None:
    """mask_document masks between page and heading starts (line starts); that is exact
    only while no detector matches across a line break. Values that touch the break:"""
    pieces = [f"card {CARD}", "4111 1111", "1111 1111 and", f"{EMAIL}", "+1 415 555", "0100 x"]
    for left in pieces:
        for right in pieces:
            whole = masker.mask(f"{left}\n{right}").text
            assert whole == masker.mask(left + "\n").text + masker.mask(right).text


def test_masking_refuses_offsets_inside_a_line(masker: PiiMasker) -> None:
    raw = Document("d", "one two", "d.txt", PLAIN, "x", pages=((1, 0), (2, 4)))
    with pytest.raises(ValueError, match="line starts"):
        mask_document(raw, masker)


def test_extracted_maps_are_at_line_starts(
    ingested: dict[str, Extraction | DocumentError], masker: PiiMasker
) -> None:
    for result in ingested.values():
        if isinstance(result, Extraction):
            for document in result.documents:
                mask_document(document, masker)  # raises if a map offset is mid-line
