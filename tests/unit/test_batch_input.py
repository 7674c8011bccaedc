"""Batch input files: per-line envelope checks, one url per batch, masking of user text."""

import json

import pytest

from jobs.batch_input import (
    BATCH_URLS,
    MAX_CUSTOM_ID,
    BatchInput,
    decode_batch_lines,
    encode_batch_lines,
    parse_batch_file,
)
from jobs.errors import DatasetError
from jobs.pii import PiiMasker

MASKER = PiiMasker(b"batch-test-key-0123456789")
CHAT = "/v1/chat/completions"
SECRET = "alice@example.com"

BODIES = {
    CHAT: {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    "/v1/completions": {"model": "m", "prompt": "once upon", "temperature": 0.5},
    "/v1/embeddings": {"model": "e", "input": ["a", "b"]},
}


def lines(*records: object) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


def request(custom_id: str, url: str = CHAT, **body: object) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body or BODIES[url]}


def parse(data: bytes, max_lines: int = 100) -> BatchInput:
    return parse_batch_file(data, MASKER, max_lines=max_lines)


def problems(data: bytes) -> list[tuple[int, str]]:
    with pytest.raises(DatasetError, match=r"^batch input file has \d+ invalid line\(s\)") as e:
        parse(data)
    return e.value.lines


@pytest.mark.parametrize("url", BATCH_URLS)
def test_a_good_file_of_each_url_is_read_with_its_line_numbers(url: str) -> None:
    batch = parse(lines(request("a", url), request("b", url), request("c", url)))
    assert batch.url == url
    assert [(r["line"], r["custom_id"], r["url"]) for r in batch.lines] == [
        (1, "a", url),
        (2, "b", url),
        (3, "c", url),
    ]
    assert batch.lines[0]["body"] == BODIES[url]
    assert batch.entity_counts == {}
    assert decode_batch_lines(encode_batch_lines(batch.lines)) == batch.lines


def test_crlf_line_ends_and_a_missing_final_newline_are_fine() -> None:
    data = b"\r\n".join(json.dumps(request(str(i))).encode() for i in range(3))
    assert [r["line"] for r in parse(data).lines] == [1, 2, 3]


def test_every_bad_line_is_named_without_its_content() -> None:
    no_custom_id = request("x")
    del no_custom_id["custom_id"]
    no_body = request("y")
    del no_body["body"]
    data = lines(
        request("ok"),  # line 1
        "",  # line 2: empty
        "{not json " + SECRET,  # line 3
        "1" * 5000,  # line 4: an integer too long to convert (ValueError)
        "[" * 100_000 + "]" * 100_000,  # line 5: nested too deeply (RecursionError)
        [SECRET],  # line 6: not an object
        {**request("k"), SECRET: 1},  # line 7: unknown key (that is itself PII)
        no_custom_id,  # line 8
        {**request("n"), "custom_id": 7},  # line 9
        request(""),  # line 10
        request("x" * (MAX_CUSTOM_ID + 1)),  # line 11
        {**request("m"), "method": "GET"},  # line 12
        {**request("u"), "url": "/v1/responses"},  # line 13
        no_body,  # line 14
        {**request("b"), "body": [SECRET]},  # line 15
        request("mail " + SECRET),  # line 16: custom_id with PII
        request("x" * MAX_CUSTOM_ID),  # line 17: exactly the limit is fine
    )
    found = problems(data[:-1] + b"\n\xff\xfe\n")  # line 18: not UTF-8
    assert [n for n, _ in found] == [*range(2, 17), 18]
    said = dict(found)
    assert said[2].startswith("empty line")
    assert all(said[n].startswith("not valid JSON") for n in (3, 4, 5))
    assert said[6] == "not a JSON object"
    assert said[7].startswith("unknown key")
    assert said[8] == "custom_id is missing"
    assert said[9] == "custom_id must be a string"
    assert said[10] == "custom_id must not be empty"
    assert said[11] == f"custom_id is longer than {MAX_CUSTOM_ID} characters"
    assert said[12] == 'method must be "POST"'
    assert said[13].startswith("url must be one of")
    assert said[14] == "body is missing"
    assert said[15] == "body must be a JSON object"
    assert said[16] == "custom_id must not hold personal data"
    assert said[18] == "not UTF-8 text"
    with pytest.raises(DatasetError) as caught:
        parse(data)
    message = str(caught.value)
    assert message.startswith("batch input file has 15 invalid line(s): line 2: empty line")
    assert SECRET not in message and "not json" not in message and "x" * 20 not in message


def test_all_problems_of_one_line_are_reported_together() -> None:
    record = {"custom_id": 5, "method": "PUT", "url": "/v2", "body": 1, "extra": 0}
    [(line, said)] = problems(lines(request("a"), record))
    assert line == 2
    assert said.split("; ") == [
        "custom_id must be a string",
        "unknown key(s): only custom_id, method, url, body",
        'method must be "POST"',
        f"url must be one of {', '.join(BATCH_URLS)}",
        "body must be a JSON object",
    ]


def test_a_duplicate_custom_id_names_the_line_it_first_appeared_on() -> None:
    data = lines(request("a"), request("b"), request("a"), request("a"))
    assert problems(data) == [
        (3, "duplicate custom_id (first on line 1)"),
        (4, "duplicate custom_id (first on line 1)"),
    ]


def test_lines_using_another_url_than_the_first_good_line_are_named() -> None:
    embed = "/v1/embeddings"
    data = lines({"custom_id": "bad"}, request("a", embed), request("b"), request("c", embed))
    found = problems(data)
    assert [n for n, _ in found] == [1, 3]
    assert "url differs" in found[1][1] and embed in found[1][1]


def test_an_empty_file_has_no_requests() -> None:
    with pytest.raises(DatasetError, match=r"^batch input file has no requests$"):
        parse(b"")


def test_the_line_count_is_bounded() -> None:
    assert len(parse(lines(*(request(str(i)) for i in range(5))), max_lines=5).lines) == 5
    with pytest.raises(DatasetError, match=r"has 6 lines; at most 5$"):
        parse(lines(*(request(str(i)) for i in range(6))), max_lines=5)


def test_an_unpaired_surrogate_escape_is_refused_so_the_stored_form_can_be_utf8() -> None:
    raw = '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", '
    raw += '"body": {"messages": [{"role": "user", "content": "\\ud800"}]}}'
    found = problems(lines(request("a"), raw))
    assert [n for n, _ in found] == [2]
    assert "surrogate" in found[0][1]


def test_user_text_is_masked_and_counted_and_user_is_dropped() -> None:
    chat = request(
        "chat",
        model="m",
        user=SECRET,
        temperature=0.2,
        stop=["\n"],
        messages=[
            {"role": "system", "content": f"write to {SECRET}"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "card 4111 1111 1111 1111"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ],
            },
            {"role": "assistant", "content": None},
        ],
    )
    data = lines(
        chat,
        request("one", "/v1/chat/completions", messages="not a list"),
    )
    batch = parse(data)
    body = batch.lines[0]["body"]
    stored = encode_batch_lines(batch.lines).decode()
    assert SECRET not in stored and "4111 1111 1111 1111" not in stored
    assert "user" not in body
    assert body["model"] == "m" and body["temperature"] == 0.2 and body["stop"] == ["\n"]
    assert body["messages"][0]["content"].startswith("write to [EMAIL:")
    assert body["messages"][1]["content"][0]["text"].startswith("card [")
    assert body["messages"][1]["content"][1] == chat["body"]["messages"][1]["content"][1]  # type: ignore[index]
    assert body["messages"][2] == {"role": "assistant", "content": None}
    assert batch.lines[1]["body"] == {"messages": "not a list"}  # left for per-line validation
    assert batch.entity_counts["EMAIL"] == 1 and sum(batch.entity_counts.values()) == 2


def test_prompts_and_inputs_are_masked_as_strings_or_lists_of_strings() -> None:
    completions = "/v1/completions"
    embeddings = "/v1/embeddings"
    batch = parse(
        lines(
            request("s", completions, model="m", prompt=f"hi {SECRET}"),
            request("l", completions, model="m", prompt=[SECRET, "plain", [1, 2]]),
        )
    )
    assert batch.lines[0]["body"]["prompt"].startswith("hi [EMAIL:")
    assert batch.lines[1]["body"]["prompt"][0].startswith("[EMAIL:")
    assert batch.lines[1]["body"]["prompt"][1:] == ["plain", [1, 2]]
    assert batch.entity_counts == {"EMAIL": 2}
    batch = parse(
        lines(
            request("s", embeddings, model="e", input=SECRET),
            request("l", embeddings, model="e", input=["x", f"to {SECRET}"], user="u1"),
            request("t", embeddings, model="e", input=[5, 6]),
        )
    )
    assert batch.lines[0]["body"]["input"].startswith("[EMAIL:")
    assert batch.lines[1]["body"] == {
        "model": "e",
        "input": ["x", batch.lines[1]["body"]["input"][1]],
    }
    assert SECRET not in encode_batch_lines(batch.lines).decode()
    assert batch.lines[2]["body"]["input"] == [5, 6]
    assert batch.entity_counts == {"EMAIL": 2}


def test_the_stored_form_keeps_non_ascii_text_and_line_separators() -> None:
    batch = parse(lines(request("u", "/v1/completions", model="m", prompt="naïve\u2028日本")))
    encoded = encode_batch_lines(batch.lines)
    assert "naïve".encode() in encoded
    assert decode_batch_lines(encoded) == batch.lines


AMBIGUOUS_LINES = [
    ('{"custom_id": "a", "custom_id": "b"}', "duplicate key in an object"),
    ('{"custom_id": "a", "body": {"temperature": NaN}}', "NaN and Infinity are not JSON numbers"),
    ('{"custom_id": "a\\u0000"}', "a string holds a NUL character"),
    ('{"custom_id": "\\ud800"}', "a string holds a NUL character"),
    ("[" * 100 + "]" * 100, "nested deeper than 64 levels"),
]


@pytest.mark.parametrize(("line", "reason"), AMBIGUOUS_LINES)
def test_lines_json_reads_two_ways_or_no_store_keeps_are_refused(line: str, reason: str) -> None:
    said = dict(problems(lines(request("ok"), line)))
    assert said[2].startswith(f"not valid JSON: {reason}")
    assert "custom_id" not in said[2]  # the reason, never the line
