"""Measures :mod:`jobs.pii` on the labelled corpus of :mod:`jobs.pii_corpus`.

Matching rule (also in docs/pii.md):

- a gold span is *found* when every non-whitespace character of it lies inside
  detected spans of the gold span's type (one or several: a PEM key is masked line by
  line); a value masked as the wrong type is a miss for its type and a false positive
  for the other;
- a detected span is *correct* when it overlaps a gold span of its own type, otherwise
  it is a false positive (whether it hit a decoy or plain text); several detected
  spans on one gold span (the lines of a PEM key) count as one correct prediction;
- the leak rate is the fraction of gold non-whitespace characters left outside every
  detected span (of any type: a card masked as a phone does not leak).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jobs.pii import EntityType, PiiSpan, detect
from jobs.pii_corpus import GoldSpan, LabelledDocument

RECALL_TARGET = 0.99
PRECISION_TARGET = 0.95

Detector = Callable[[str], list[PiiSpan]]


@dataclass(frozen=True)
class TypeScore:
    entity: str
    gold: int
    found: int
    predicted: int
    correct: int

    @property
    def recall(self) -> float:
        return self.found / self.gold if self.gold else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0

    @property
    def f2(self) -> float:
        """F-beta with beta 2: recall weighs four times as much as precision."""
        p, r = self.precision, self.recall
        return 5 * p * r / (4 * p + r) if p + r else 0.0

    @property
    def meets_targets(self) -> bool:
        return self.recall >= RECALL_TARGET and self.precision >= PRECISION_TARGET


@dataclass(frozen=True)
class EvalReport:
    documents: int
    characters: int
    scores: tuple[TypeScore, ...]
    gold_characters: int
    leaked_characters: int
    false_positives: int
    missed_kinds: dict[str, int] = field(default_factory=dict)  # gold kind -> misses
    false_positive_kinds: dict[str, int] = field(default_factory=dict)  # "TYPE on kind"

    @property
    def leak_rate(self) -> float:
        return self.leaked_characters / self.gold_characters if self.gold_characters else 0.0

    @property
    def false_positives_per_10k_chars(self) -> float:
        return 10_000 * self.false_positives / self.characters if self.characters else 0.0

    @property
    def passed(self) -> bool:
        return all(score.meets_targets for score in self.scores)


@dataclass
class _Tally:
    gold: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    predicted: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    missed_kinds: Counter[str] = field(default_factory=Counter)
    fp_kinds: Counter[str] = field(default_factory=Counter)
    gold_chars: int = 0
    leaked_chars: int = 0


def _coverage(length: int, spans: Sequence[PiiSpan]) -> list[str | None]:
    covered: list[str | None] = [None] * length
    for span in spans:
        covered[span.start : span.end] = [span.entity.value] * (span.end - span.start)
    return covered


def _score_gold(text: str, gold: GoldSpan, covered: list[str | None], tally: _Tally) -> None:
    assert gold.entity is not None
    chars = [i for i in range(gold.start, gold.end) if not text[i].isspace()]
    tally.gold[gold.entity] += 1
    tally.gold_chars += len(chars)
    tally.leaked_chars += sum(covered[i] is None for i in chars)
    if all(covered[i] == gold.entity for i in chars):
        tally.found[gold.entity] += 1
    else:
        tally.missed_kinds[gold.kind] += 1


def _score_predictions(
    predicted: Sequence[PiiSpan], labels: Sequence[GoldSpan], tally: _Tally
) -> None:
    credited: set[GoldSpan] = set()
    for span in predicted:
        entity = span.entity.value
        hits = [g for g in labels if g.start < span.end and span.start < g.end]
        right = [g for g in hits if g.entity == entity]
        if not right:
            tally.predicted[entity] += 1
            tally.fp_kinds[f"{entity} on {hits[0].kind if hits else 'text'}"] += 1
        elif right[0] not in credited:
            credited.add(right[0])
            tally.predicted[entity] += 1
            tally.correct[entity] += 1


def _score_document(document: LabelledDocument, detector: Detector, tally: _Tally) -> None:
    predicted = detector(document.text)
    covered = _coverage(len(document.text), predicted)
    for gold in document.gold:
        _score_gold(document.text, gold, covered, tally)
    _score_predictions(predicted, document.spans, tally)


def evaluate(documents: Sequence[LabelledDocument], detector: Detector = detect) -> EvalReport:
    """Scores ``detector`` (by default the masker's own :func:`jobs.pii.detect`)."""
    tally = _Tally()
    for document in documents:
        _score_document(document, detector, tally)
    scores = tuple(
        TypeScore(e.value, tally.gold[e], tally.found[e], tally.predicted[e], tally.correct[e])
        for e in EntityType
    )
    return EvalReport(
        documents=len(documents),
        characters=sum(len(d.text) for d in documents),
        scores=scores,
        gold_characters=tally.gold_chars,
        leaked_characters=tally.leaked_chars,
        false_positives=sum(tally.predicted.values()) - sum(tally.correct.values()),
        missed_kinds=dict(tally.missed_kinds.most_common()),
        false_positive_kinds=dict(tally.fp_kinds.most_common()),
    )


def report_dict(report: EvalReport) -> dict[str, object]:
    """The report as JSON-ready data, derived metrics included."""
    return {
        "documents": report.documents,
        "characters": report.characters,
        "types": [
            {
                "entity": s.entity,
                "gold": s.gold,
                "found": s.found,
                "predicted": s.predicted,
                "correct": s.correct,
                "precision": round(s.precision, 4),
                "recall": round(s.recall, 4),
                "f2": round(s.f2, 4),
                "meets_targets": s.meets_targets,
            }
            for s in report.scores
        ],
        "leak_rate": round(report.leak_rate, 6),
        "false_positives": report.false_positives,
        "false_positives_per_10k_chars": round(report.false_positives_per_10k_chars, 3),
        "missed_kinds": report.missed_kinds,
        "false_positive_kinds": report.false_positive_kinds,
        "passed": report.passed,
    }
