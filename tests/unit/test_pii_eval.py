"""The labelled PII corpus, the evaluation's arithmetic, the targets, and `seekq pii-eval`."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from jobs.pii import MASK_TOKEN, EntityType, PiiMasker, PiiSpan, detect
from jobs.pii_corpus import KINDS, GoldSpan, LabelledDocument, generate_corpus
from jobs.pii_eval import EvalReport, TypeScore, evaluate, report_dict
from seekq import pii_eval_command
from seekq.cli import app

KEY = b"0123456789abcdef-test-key"


@pytest.fixture(scope="module")
def corpus() -> list[LabelledDocument]:
    return generate_corpus()


@pytest.fixture(scope="module")
def report(corpus: list[LabelledDocument]) -> EvalReport:
    return evaluate(corpus)


# --------------------------------------------------------------------------
# Corpus


def test_corpus_is_deterministic_for_a_seed() -> None:
    assert generate_corpus(seed=7, documents=40) == generate_corpus(seed=7, documents=40)
    assert generate_corpus(seed=7, documents=40) != generate_corpus(seed=8, documents=40)


def test_spans_lie_in_the_text_and_do_not_overlap(corpus: list[LabelledDocument]) -> None:
    for document in corpus:
        ordered = sorted(document.spans, key=lambda s: s.start)
        assert all(0 <= s.start < s.end <= len(document.text) for s in ordered)
        assert all(a.end <= b.start for a, b in itertools.pairwise(ordered))


def test_corpus_has_thousands_of_entities_of_every_kind(corpus: list[LabelledDocument]) -> None:
    kinds = Counter(span.kind for document in corpus for span in document.spans)
    assert set(kinds) == {name for name, _, _ in KINDS}
    assert min(kinds.values()) >= 20
    gold = Counter(span.entity for document in corpus for span in document.gold)
    assert set(gold) == {e.value for e in EntityType}
    assert sum(gold.values()) >= 3000
    assert {d.language for d in corpus} == {"en", "zh"}


def _values(corpus: list[LabelledDocument], kind: str) -> list[str]:
    return [d.text[s.start : s.end] for d in corpus for s in d.spans if s.kind == kind]


@pytest.mark.parametrize(
    ("kind", "looks_like"),
    [
        ("date", lambda v: "年" in v),
        ("date", lambda v: v[:3] in {"Nov", "Mar"} and "," in v),  # "Nov 29, 2025"
        ("date", lambda v: v.count("/") == 2 and len(v.rsplit("/", 1)[1]) == 2),  # 11/29/25
        ("date", lambda v: v[0] == "\uff11" or v[0] == "\uff12"),  # full-width digits
        ("phone.cn_mobile", lambda v: v.isdigit() and len(v) == 11),  # no separators
        ("phone.cn_mobile", lambda v: v.startswith("(+86)")),
        ("card.visa", lambda v: "-" in v and " " in v),  # mixed separators
        ("card.amex", lambda v: [len(g) for g in v.replace("-", " ").split()] == [4, 6, 5]),
        ("secret.pem", lambda v: "\n" in v),
        ("decoy.prc_bad_checksum", lambda v: len(v) == 18),
        ("decoy.timestamp", lambda v: v.isdigit() and len(v) == 10),
    ],
)
def test_hard_cases_are_in_the_corpus(
    corpus: list[LabelledDocument], kind: str, looks_like: object
) -> None:
    assert callable(looks_like)
    assert any(looks_like(v) for v in _values(corpus, kind))


def test_phones_sit_right_against_cjk_text(corpus: list[LabelledDocument]) -> None:
    def cjk(ch: str) -> bool:
        return "\u4e00" <= ch <= "\u9fff"

    glued = [
        d.text[s.start : s.end]
        for d in corpus
        for s in d.gold
        if s.entity == "PHONE" and s.start and cjk(d.text[s.start - 1]) and cjk(d.text[s.end])
    ]
    assert len(glued) >= 20


# --------------------------------------------------------------------------
# The gate: the masker meets the targets on the default corpus


def test_every_type_meets_the_targets(report: EvalReport) -> None:
    failing = [s for s in report.scores if not s.meets_targets]
    assert not failing, report_dict(report)
    assert report.passed


def test_leaks_and_false_positives_are_rare(report: EvalReport) -> None:
    assert report.leak_rate < 0.001
    assert report.false_positives_per_10k_chars < 0.5


def test_detect_gives_the_spans_mask_replaces(corpus: list[LabelledDocument]) -> None:
    masker = PiiMasker(KEY)
    for document in corpus[:100]:
        spans, masked = detect(document.text), masker.mask(document.text).text
        # Between tokens the masked text is the original between spans, in order.
        kept, cursor = [], 0
        for span in spans:
            kept.append(document.text[cursor : span.start])
            cursor = span.end
        kept.append(document.text[cursor:])
        assert MASK_TOKEN.split(masked) == kept
        entities = [t[1:].split(":")[0] for t in MASK_TOKEN.findall(masked)]
        assert entities == [span.entity.value for span in spans]


# --------------------------------------------------------------------------
# Metrics on a hand-labelled example

TEXT = "card 4111 1111 1111 1111 mail a@b.io order 123"
TINY = LabelledDocument(
    "tiny",
    "en",
    TEXT,
    (
        GoldSpan(5, 24, "CARD_NUMBER", "card"),
        GoldSpan(30, 36, "EMAIL", "email"),
        GoldSpan(43, 46, None, "decoy.order"),
    ),
)


def test_metrics_on_a_hand_labelled_example() -> None:
    predicted = (
        PiiSpan(5, 19, EntityType.CARD_NUMBER),  # "4111 1111 1111": last group left
        PiiSpan(30, 36, EntityType.EMAIL),
        PiiSpan(43, 46, EntityType.PHONE),  # on the decoy
    )
    report = evaluate([TINY], detector=lambda text: list(predicted))
    scores = {s.entity: s for s in report.scores}
    card, email, phone = scores["CARD_NUMBER"], scores["EMAIL"], scores["PHONE"]
    # A partly masked card is a miss, but the prediction overlaps its gold span.
    assert (card.gold, card.found, card.predicted, card.correct) == (1, 0, 1, 1)
    assert (card.recall, card.precision, card.f2) == (0.0, 1.0, 0.0)
    assert (email.recall, email.precision, email.f2) == (1.0, 1.0, 1.0)
    assert (phone.gold, phone.predicted, phone.correct, phone.precision) == (0, 1, 0, 0.0)
    assert phone.recall == 1.0 and not phone.meets_targets
    # 16 card digits + 6 e-mail characters; the last card group (4 digits) leaked.
    assert (report.gold_characters, report.leaked_characters) == (22, 4)
    assert report.leak_rate == pytest.approx(4 / 22)
    assert report.false_positives == 1
    assert report.false_positives_per_10k_chars == pytest.approx(10_000 / len(TEXT))
    assert report.missed_kinds == {"card": 1}
    assert report.false_positive_kinds == {"PHONE on decoy.order": 1}
    assert not report.passed


def test_wrong_type_is_a_miss_and_a_false_positive() -> None:
    report = evaluate([TINY], detector=lambda text: [PiiSpan(5, 24, EntityType.PHONE)])
    scores = {s.entity: s for s in report.scores}
    assert scores["CARD_NUMBER"].recall == 0.0
    assert scores["PHONE"].precision == 0.0
    assert report.leaked_characters == 6  # the e-mail; the card is masked, as a phone
    assert report.false_positive_kinds == {"PHONE on card": 1}


def test_several_spans_on_one_gold_span_count_once() -> None:
    document = LabelledDocument("pem", "en", "AAAA\nBBBB", (GoldSpan(0, 9, "SECRET", "pem"),))
    lines = [PiiSpan(0, 4, EntityType.SECRET), PiiSpan(5, 9, EntityType.SECRET)]
    score = {s.entity: s for s in evaluate([document], detector=lambda t: lines).scores}
    assert (score["SECRET"].found, score["SECRET"].predicted, score["SECRET"].correct) == (1, 1, 1)


def test_f2_weighs_recall_four_times() -> None:
    half_precise = TypeScore("X", gold=10, found=10, predicted=20, correct=10)
    half_recalled = TypeScore("X", gold=20, found=10, predicted=10, correct=10)
    assert half_precise.f2 == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))  # 0.8333
    assert half_recalled.f2 == pytest.approx(5 * 0.5 / (4 + 0.5))  # 0.5556
    assert TypeScore("X", 0, 0, 0, 0).f2 == 1.0


# --------------------------------------------------------------------------
# Detector cases the corpus relies on (each fixed while building the evaluation)


@pytest.mark.parametrize(
    "secret",
    [
        "sk-" + "aB3" * 16,
        "sk-proj-" + "Ab9_-" * 20,
        "ghp_" + "aB1" * 12,
        "github_pat_" + "aB1" * 20,
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-123456789012-1234567890123-" + "aB1" * 8,
        "AIza" + "aB1_-xY2z" * 3 + "aB1cD3eF",
        "glpat-" + "aB1" * 7,
        "whsec_" + "aB1" * 10,
        "sq_0123456789abcdef_" + "aB1_-" * 8 + "xyz",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
    ],
)
def test_secrets_are_masked(secret: str) -> None:
    for text in (f"key: {secret} ok", f"密钥{secret}谢谢"):
        assert [(s.entity, text[s.start : s.end]) for s in detect(text)] == [("SECRET", secret)]


def test_pem_key_lines_are_masked_and_markers_kept() -> None:
    body = [
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
        "VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1G",
    ]
    text = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END PRIVATE KEY-----"
    assert [text[s.start : s.end] for s in detect(text)] == body


def test_url_password_alone_is_masked() -> None:
    text = "DATABASE_URL=postgres://app:s3cr3t-Pa55@db.internal:5432/app"
    assert [(s.entity, text[s.start : s.end]) for s in detect(text)] == [("SECRET", "s3cr3t-Pa55")]


@pytest.mark.parametrize(
    "text",
    [
        "see sk-learn-pipeline-basics-and-more",
        "sha256 " + "a3f9" * 16,
        "AKIAEXAMPLE",
        "ip 192.168.10.12 up",
        "v3.11.4",
        "ORD-20251129-4821",
        "ts 1732900000",
        "card 4111 1111 1111 1112",  # Luhn-invalid: neither a card nor a phone
        "id 110105194912310021",  # PRC checksum wrong
        "id 110105194913310028",  # PRC checksum right, month 13
        "IBAN GB82 WEST 1234 5698 7654 33",  # IBAN checksum wrong: no card, no phone
        "order 2025112900012345",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert detect(text) == []


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("born 29 Nov 2025.", "DATE"),
        ("born Nov 29, 2025.", "DATE"),
        ("born November 29th, 2025.", "DATE"),
        ("born 11/29/25.", "DATE"),
        ("电话：(+86) 13812345678。", "PHONE"),
        ("call +44 (0)20 7946 0958 now", "PHONE"),
        ("call 4155552671 now", "PHONE"),
    ],
)
def test_forms_added_for_the_corpus(text: str, entity: str) -> None:
    spans = detect(text)
    assert [s.entity.value for s in spans] == [entity]
    assert text[spans[0].start].isalnum() or text[spans[0].start] in "(+"


def test_two_phones_one_space_apart() -> None:
    text = "tel +44 (0)131 314 5709 010 82634411 end"
    assert [text[s.start : s.end] for s in detect(text)] == ["+44 (0)131 314 5709", "010 82634411"]


# --------------------------------------------------------------------------
# The command


def test_command_prints_json_and_passes() -> None:
    result = CliRunner().invoke(app, ["pii-eval", "--documents", "60", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["seed"] == 3 and data["documents"] == 60 and data["passed"] is True
    assert [t["entity"] for t in data["types"]] == [e.value for e in EntityType]


def test_command_table_and_exit_code_one_when_a_target_is_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missed = evaluate([TINY], detector=lambda text: [])
    monkeypatch.setattr(pii_eval_command, "evaluate", lambda documents: missed)
    result = CliRunner().invoke(app, ["pii-eval", "--documents", "1"])
    assert result.exit_code == 1
    assert "CARD_NUMBER" in result.output and "FAIL" in result.output
