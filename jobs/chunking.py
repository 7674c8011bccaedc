"""Token-aware chunks of a (masked) document, with overlap, sized in the embedding model's
own tokens.

Boundaries come from `semantic-text-splitter` (Rust): it cuts at the largest semantic unit
that fits — heading sections and blocks for Markdown (`MarkdownSplitter`), runs of newlines,
sentences, words for other text (`TextSplitter`) — counting with the model's Hugging Face
`tokenizers.Tokenizer`, and gives each chunk's character offset.

Overlap is ours. The library's `overlap` is a maximum built from whole units of the level a
chunk was cut at, so at sentence or paragraph level it is mostly zero (75% of neighbours in a
256/32-token run over prose). Instead the splitter cuts chunks of `max_tokens - special
tokens - overlap_tokens`, and each chunk is then extended backwards by up to `overlap_tokens`
tokens of the text before it, starting on a word boundary, never past the start of the
section (heading) the chunk begins in. The result is re-measured with the tokenizer:
every chunk's `token_count`, which includes the model's special tokens ([CLS] and [SEP] for
all-MiniLM-L6-v2), is at most `max_tokens`.

Chunk a document after `jobs.documents.mask_document`: the counts are then those of the text
that is embedded, and no boundary can cut a PII value in two halves a masker would miss.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Encoding, Tokenizer

from jobs.documents import MARKDOWN, Document


@dataclass(frozen=True)
class Chunk:
    index: int  # position in its document, from 0
    text: str  # document.text[start:end]
    start: int
    end: int
    token_count: int  # with the model's special tokens, as the embedder sees it
    page: int | None  # the page (from 1) where the chunk's own text starts; None: no pages
    heading: str | None  # the section title in force there; None: before any heading
    doc_id: str
    source_name: str
    metadata: Mapping[str, Any]


class Chunker:
    """Built once per process (tokenizer and splitters), then `chunk()` per document."""

    def __init__(
        self,
        tokenizer: Tokenizer | str | os.PathLike[str],
        *,
        max_tokens: int = 256,
        overlap_tokens: int = 32,
    ) -> None:
        self._tokenizer = _unbounded(tokenizer)
        self._special_tokens = len(self._tokenizer.encode("").ids)
        own_tokens = max_tokens - self._special_tokens - overlap_tokens
        if overlap_tokens < 0 or own_tokens < 1:
            raise ValueError(
                f"max_tokens={max_tokens} leaves no room for text beside "
                f"{self._special_tokens} special tokens and overlap_tokens={overlap_tokens}"
            )
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self._text_splitter = TextSplitter.from_huggingface_tokenizer(self._tokenizer, own_tokens)
        self._markdown_splitter = MarkdownSplitter.from_huggingface_tokenizer(
            self._tokenizer, own_tokens
        )

    def count(self, text: str) -> int:
        """Tokens of `text` with the model's special tokens."""
        return len(self._tokenizer.encode(text).ids)

    def chunk(self, document: Document) -> list[Chunk]:
        splitter = (
            self._markdown_splitter if document.media_type == MARKDOWN else self._text_splitter
        )
        text = document.text
        sections = [offset for offset, _ in document.headings]
        spans = []
        for own_start, own_text in splitter.chunk_indices(text):
            i = bisect.bisect_right(sections, own_start)
            floor = sections[i - 1] if i else 0
            start = self._overlap_start(text, own_start, floor, self.overlap_tokens)
            spans.append(_Span(start, own_start + len(own_text), own_start, floor))
        counts = [
            len(e.ids) for e in self._tokenizer.encode_batch([text[s.start : s.end] for s in spans])
        ]
        return [
            self._chunk(document, index, *self._fit(text, span, count))
            for index, (span, count) in enumerate(zip(spans, counts, strict=True))
        ]

    def _fit(self, text: str, span: _Span, count: int) -> tuple[_Span, int]:
        """Shrink the overlap until the chunk fits: token counts of joined pieces are not
        always the sum of the pieces' counts."""
        budget = self.overlap_tokens
        while count > self.max_tokens and span.start < span.own_start:
            budget -= 1
            start = self._overlap_start(text, span.own_start, span.floor, budget)
            span = _Span(start, span.end, span.own_start, span.floor)
            count = self.count(text[span.start : span.end])
        if count > self.max_tokens:  # the splitter's contract, checked, never trusted
            raise RuntimeError(f"the splitter cut a chunk of {count} > {self.max_tokens} tokens")
        return span, count

    def _chunk(self, document: Document, index: int, span: _Span, token_count: int) -> Chunk:
        return Chunk(
            index=index,
            text=document.text[span.start : span.end],
            start=span.start,
            end=span.end,
            token_count=token_count,
            page=_page_at(document.pages, span.own_start),
            heading=_heading_at(document.headings, span.own_start),
            doc_id=document.doc_id,
            source_name=document.source_name,
            metadata=dict(document.metadata),
        )

    def _overlap_start(self, text: str, own_start: int, floor: int, budget: int) -> int:
        """Where the last `budget` tokens before `own_start` (and after `floor`) begin,
        moved forward to the start of a word; `own_start` when none fit."""
        if own_start <= floor or budget <= 0:
            return own_start
        window = 16 * budget
        while True:
            low = max(floor, own_start - window)
            encoding = self._tokenizer.encode(text[low:own_start], add_special_tokens=False)
            # One token more than needed, so a word cut by the window edge is never used.
            if len(encoding.ids) > budget or low == floor:
                break
            window *= 4
        first = _word_start(text[low:own_start], encoding, max(0, len(encoding.ids) - budget))
        return low + encoding.offsets[first][0] if first is not None else own_start


@dataclass(frozen=True)
class _Span:
    start: int  # with the overlap
    end: int
    own_start: int  # where the splitter's chunk starts
    floor: int  # the start of the section it is in: the overlap never reaches before it


def _page_at(pages: Sequence[tuple[int, int]], offset: int) -> int | None:
    i = bisect.bisect_right([start for _, start in pages], offset)
    return pages[i - 1][0] if i else None


def _heading_at(headings: Sequence[tuple[int, str]], offset: int) -> str | None:
    i = bisect.bisect_right([start for start, _ in headings], offset)
    return headings[i - 1][1] if i else None


def _word_start(window: str, encoding: Encoding, index: int) -> int | None:
    """The first token at or after `index` that starts a pre-tokenizer word, preferring one
    after whitespace (so "don't" is not entered at its "t"; CJK text has no spaces)."""
    words, offsets = encoding.word_ids, encoding.offsets
    starts = [i for i in range(index, len(words)) if i == 0 or words[i] != words[i - 1]]
    spaced = [i for i in starts if offsets[i][0] == 0 or window[offsets[i][0] - 1].isspace()]
    candidates = spaced or starts
    return candidates[0] if candidates else None


def _unbounded(tokenizer: Tokenizer | str | os.PathLike[str]) -> Tokenizer:
    """A private copy without truncation or padding (MiniLM's tokenizer.json pads and
    truncates to 128, which would make every count 128). A directory means its
    tokenizer.json; paths come from configuration, never from a request."""
    if isinstance(tokenizer, Tokenizer):
        copy = Tokenizer.from_str(tokenizer.to_str())
    else:
        path = Path(tokenizer)
        copy = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    copy.no_truncation()
    copy.no_padding()
    return copy


def chunk(
    document: Document,
    tokenizer: Tokenizer | str | os.PathLike[str],
    *,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """One-off `Chunker(...).chunk(document)`; build a `Chunker` once to chunk many."""
    return Chunker(tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens).chunk(document)
