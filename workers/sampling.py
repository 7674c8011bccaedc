"""Choosing each sequence's next token, and turning tokens into text as they come.

Sampling is vectorised over the batch for the common parameters (temperature, top-k,
top-p), with one torch.Generator per sequence so a seeded request gives the same tokens
whatever else shares its batch. The rarer options run per sequence through transformers'
own logits processors (repetition penalty, `bad_words_ids`).
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    NoBadWordsLogitsProcessor,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
)

# A sequence whose banned-word guard rejects this many candidates in a row stops.
MAX_GUARD_TRIES = 16


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    banned_words: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Temperature, then top-k, then top-p, each with its own value per row (B, V).
    Rows with temperature 0 are left as they are (they take the argmax)."""
    scaled = logits / torch.where(temperature > 0, temperature, 1.0).unsqueeze(1)
    if bool((top_p >= 1.0).all()):
        return _top_k_only(scaled, top_k)
    sorted_logits, order = scaled.sort(dim=1, descending=True)
    vocab = scaled.shape[1]
    ranks = torch.arange(vocab, device=scaled.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab).unsqueeze(1)
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=1)
    # Drop a token when the tokens ranked above it already reach top_p (keep the first).
    drop |= (probs.cumsum(dim=1) - probs) >= top_p.unsqueeze(1)
    filtered = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(scaled).scatter_(1, order, filtered)


def _top_k_only(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Top-k alone needs each row's k-th largest value, not a full sort."""
    if not bool((top_k > 0).any()):
        return scaled
    vocab = scaled.shape[1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    largest = scaled.topk(int(k.max()), dim=1).values
    threshold = largest.gather(1, (k - 1).clamp(max=largest.shape[1] - 1).unsqueeze(1))
    return scaled.masked_fill(scaled < threshold, float("-inf"))


def sample_rows(
    logits: torch.Tensor, greedy: Sequence[bool], generators: Sequence[torch.Generator]
) -> list[int]:
    """One token per row: the argmax for greedy rows, else a draw from softmax(logits)."""
    chosen = logits.argmax(dim=1).tolist()
    probs = logits.float().softmax(dim=1)
    for row, is_greedy in enumerate(greedy):
        if not is_greedy:
            draw = torch.multinomial(probs[row], 1, generator=generators[row])
            chosen[row] = int(draw.item())
    return chosen


class RowProcessors:
    """transformers' logits processors for one sequence's rarer options."""

    def __init__(
        self, params: SamplingParams, tokenizer: PreTrainedTokenizerBase, eos: Sequence[int]
    ) -> None:
        self.steps: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = []
        if params.repetition_penalty != 1.0:
            self.steps.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        bad_words_ids = banned_token_sequences(tokenizer, params.banned_words)
        if bad_words_ids:
            self.steps.append(NoBadWordsLogitsProcessor(bad_words_ids, list(eos)))

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, history: list[int], logits: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([history], device=logits.device)
        scores = logits.unsqueeze(0)
        for step in self.steps:
            scores = step(ids, scores)
        return scores.squeeze(0)


def banned_token_sequences(
    tokenizer: PreTrainedTokenizerBase, words: Sequence[str]
) -> list[list[int]]:
    """The token sequences of each word as it usually appears: alone, after a space,
    capitalised. Other spellings are caught by `BannedWordGuard` on the text."""
    sequences: set[tuple[int, ...]] = set()
    for word in words:
        for variant in {word, word.lower(), word.capitalize(), word.upper()}:
            for text in (variant, " " + variant):
                ids = tokenizer.encode(text, add_special_tokens=False)
                if ids:
                    sequences.add(tuple(ids))
    return [list(s) for s in sorted(sequences)]


class BannedWordGuard:
    """Rejects a token when the text would then hold a banned word (whole word, any case).

    Token bans alone miss other tokenisations of the same word; this check on the text
    catches those, so a banned word never appears in the output. It is still not a
    content-safety filter: paraphrases, misspellings and other languages pass.
    """

    def __init__(self, words: Sequence[str]) -> None:
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        self.window = max(len(w) for w in words) + 1

    def allows(self, text: str, delta: str) -> bool:
        if not delta:
            return True
        tail = text[-self.window :] + delta
        return self.pattern.search(tail) is None


class IncrementalDecoder:
    """Text of a growing token sequence, a piece at a time; never splits a character."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def peek(self, token: int) -> str:
        """The text `token` would add (maybe "" while a character is incomplete)."""
        return self._delta([*self.ids[self.prefix_offset :], token])

    def push(self, token: int) -> str:
        """Append `token`; the new text it completes."""
        delta = self._delta([*self.ids[self.prefix_offset :], token])
        self.ids.append(token)
        if delta:
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """At the end: whatever text is still held back (an incomplete character)."""
        before = self.decode(self.ids[self.prefix_offset : self.read_offset])
        after = self.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""

    def _delta(self, window: list[int]) -> str:
        before = self.decode(self.ids[self.prefix_offset : self.read_offset])
        after = self.decode(window)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            return after[len(before) :]
        return ""


class StopMatcher:
    """Finds stop strings in the text, and how much of its end may still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in stops), default=0)

    def find(self, text: str, new_from: int) -> int:
        """Where the first stop string starts, searching text added from `new_from`; -1."""
        if not self.stops:
            return -1
        start = max(0, new_from - self.longest + 1)
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits, default=-1)

    def held_back(self, text: str) -> int:
        """Characters at the end of `text` that could begin a stop string: not streamed
        yet, so streamed text never holds a stop string the final text drops."""
        for size in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0
