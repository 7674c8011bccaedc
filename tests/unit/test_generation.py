"""Generate specs and the engine's text pieces: sampling filters, stop strings, the
incremental decoder and the banned-word guard (no model needed)."""

import pytest
import torch

from jobs import errors
from jobs.catalog import get_entry, parse_spec
from jobs.pii import PiiMasker
from jobs.service import mask_spec
from jobs.specs import GenerateSpec
from workers.sampling import BannedWordGuard, IncrementalDecoder, StopMatcher, filter_logits


def test_generate_spec_bounds_and_one_input() -> None:
    entry = get_entry("generate")
    ok = parse_spec(entry, {"model": "m", "prompt": "hi", "max_new_tokens": 8, "seed": 1})
    assert isinstance(ok, GenerateSpec) and ok.temperature == 1.0
    bad = [
        {"model": "m"},  # neither prompt nor messages
        {"model": "m", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"model": "m", "prompt": "a", "max_new_tokens": 0},
        {"model": "m", "prompt": "a", "temperature": 2.5},
        {"model": "m", "prompt": "a", "top_p": 0},
        {"model": "m", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]},
        {"model": "m", "prompt": "a", "max_new_tokens": True},
        {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
        {"model": "m", "prompt": "a", "logprobs": 2},
    ]
    for raw in bad:
        with pytest.raises(errors.SpecError) as caught:
            parse_spec(entry, raw)
        assert "hi" not in str(caught.value)


def test_chat_messages_are_masked_roles_kept() -> None:
    spec = parse_spec(
        get_entry("generate"),
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "mail bob@example.com"},
            ],
        },
    )
    masked, counts = mask_spec(get_entry("generate"), spec, PiiMasker(b"k" * 32))
    assert "bob@example.com" not in str(masked)
    assert [m["role"] for m in masked["messages"]] == ["system", "user"]
    assert masked["messages"][0]["content"] == "be brief"
    assert counts == {"EMAIL": 1}
    rebuilt = GenerateSpec.from_stored(masked)
    assert rebuilt.messages is not None and rebuilt.messages[1].role == "user"


def test_filter_logits_per_row_top_k_and_top_p() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 3)
    out = filter_logits(
        logits,
        temperature=torch.tensor([1.0, 1.0, 1.0]),
        top_k=torch.tensor([2, 0, 0]),
        top_p=torch.tensor([1.0, 0.5, 1.0]),
    )
    assert torch.isinf(out[0]).tolist() == [False, False, True, True]
    assert torch.isinf(out[1]).tolist() == [False, True, True, True]  # 0.64 >= 0.5 alone
    assert not torch.isinf(out[2]).any()


def test_filter_logits_top_k_alone_skips_the_sort() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = filter_logits(
        logits,
        temperature=torch.tensor([0.5, 0.0]),
        top_k=torch.tensor([2, 0]),
        top_p=torch.tensor([1.0, 1.0]),
    )
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert out[0, 1].item() == 8.0  # divided by the temperature
    assert torch.equal(out[1], logits[1])  # greedy row, no filter: untouched


def test_stop_matcher_finds_and_holds_back() -> None:
    stops = StopMatcher(["END", "##"])
    assert stops.find("abc EN", 0) == -1
    assert stops.find("abc END more", 4) == 4
    assert stops.held_back("abc EN") == 2  # "EN" may become "END"
    assert stops.held_back("abc #") == 1
    assert stops.held_back("abc x") == 0


def test_incremental_decoder_never_splits_a_character() -> None:
    data = "héllo wörld ✓".encode()
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    decoder = IncrementalDecoder(decode)
    pieces = [decoder.push(b) for b in data]
    assert "".join(pieces) + decoder.flush() == "héllo wörld ✓"
    assert all("\ufffd" not in piece for piece in pieces)


def test_banned_word_guard_matches_whole_words_any_case() -> None:
    guard = BannedWordGuard(["plan"])
    assert not guard.allows("the annual ", "PLAN")
    assert not guard.allows("the annual pl", "an")
    assert guard.allows("the annual pl", "anet")  # "planet" is another word
    assert guard.allows("the annual ", "")
