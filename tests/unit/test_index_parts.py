"""Pure parts of the index pipeline: spec rules, masking of nested spec values, the
fan-out's token batches, stored file documents."""

import itertools

import pytest

from jobs.catalog import CATALOG, JobKind, parse_spec
from jobs.documents import Document
from jobs.errors import SpecError
from jobs.files import StoredDocument, _decode, _encode, _id_suffix
from jobs.index_specs import IndexCreate
from jobs.pii import PiiMasker
from jobs.service import mask_spec
from workers.fanout import token_batches

MASKER = PiiMasker(b"k" * 32)
CARD = "4111 1111 1111 1111"


def index_spec(**spec: object) -> object:
    return parse_spec(CATALOG[JobKind.INDEX], {"index": "handbook", **spec})


def test_index_spec_matches_its_action() -> None:
    index_spec(documents=[{"id": "a", "text": "hello"}])
    index_spec(action="delete", delete=["a"])
    index_spec(action="rebuild")
    with pytest.raises(SpecError, match="upsert takes"):
        index_spec(documents=[])
    with pytest.raises(SpecError, match="exactly one of 'file_id' and 'text'"):
        index_spec(documents=[{"id": "a"}])
    with pytest.raises(SpecError, match="needs an 'id'"):
        index_spec(documents=[{"text": "no id"}])
    with pytest.raises(SpecError, match="rebuild takes neither"):
        index_spec(action="rebuild", delete=["a"])
    with pytest.raises(SpecError, match="index"):
        parse_spec(CATALOG[JobKind.INDEX], {"index": "../etc", "action": "rebuild"})
    with pytest.raises(SpecError, match="file_id"):
        index_spec(documents=[{"file_id": "/etc/passwd"}])


def test_index_create_refuses_params_of_another_type() -> None:
    IndexCreate(name="a", type="hnsw", params={"m": 16})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not apply to a flat index"):
        IndexCreate(name="a", type="flat", params={"m": 16})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_overlap"):
        IndexCreate(name="a", chunk_tokens=64, chunk_overlap=40)


def test_nested_spec_values_are_masked_but_file_ids_kept() -> None:
    file_id = "file-4111111111111111" + "0" * 16
    parsed = index_spec(
        documents=[
            {
                "id": "jane.doe@example.com.txt",
                "text": f"card {CARD}",
                "metadata": {"n": 4111111111111111},
            },
            {"file_id": file_id, "id": "ok.md"},
        ]
    )
    masked, counts = mask_spec(CATALOG[JobKind.INDEX], parsed, MASKER)  # type: ignore[arg-type]
    first, second = masked["documents"]
    assert CARD not in first["text"] and "jane.doe" not in first["id"]
    assert isinstance(first["metadata"]["n"], str) and "4111" not in first["metadata"]["n"]
    assert second["file_id"] == file_id and second["id"] == "ok.md"
    assert counts == {"CARD_NUMBER": 2, "EMAIL": 1}


def test_search_filter_values_are_masked_like_stored_values() -> None:
    parsed = parse_spec(
        CATALOG[JobKind.SEARCH],
        {"index": "h", "query": f"paid {CARD}", "filter": {"owner": "jane.doe@example.com"}},
    )
    masked, _ = mask_spec(CATALOG[JobKind.SEARCH], parsed, MASKER)
    stored = MASKER.mask("jane.doe@example.com").text
    assert masked["filter"]["owner"] == stored and CARD not in masked["query"]


def test_token_batches_respect_the_budget_and_keep_order() -> None:
    assert token_batches([100, 100, 100, 100], 250) == [(0, 2), (2, 4)]
    assert token_batches([300, 10], 250) == [(0, 1), (1, 2)]  # an oversized text alone
    assert token_batches([], 250) == []
    spans = token_batches([7] * 1000, 70)
    assert spans[0] == (0, 10) and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_stored_documents_round_trip() -> None:
    document = Document(
        doc_id="a.md",
        text="# T\nbody\n",
        source_name="a.md",
        media_type="text/markdown",
        sha256="0" * 64,
        pages=((1, 0),),
        headings=((0, "T"),),
        metadata={"k": [1, "x"]},
    )
    stored = [StoredDocument(document, None), StoredDocument(document, "#3")]
    assert _decode(_encode(stored)) == stored


def test_document_id_suffixes() -> None:
    assert _id_suffix("notes.jsonl", "notes.jsonl") == ""  # the file's one document
    assert _id_suffix("notes.jsonl#12", "notes.jsonl") == "#12"  # a line without an id
    assert _id_suffix("faq-7", "notes.jsonl") is None  # a line's own id
    assert _id_suffix("notes.jsonl#x", "notes.jsonl") is None


def test_progress_counts_documents_whose_chunks_are_all_embedded() -> None:
    import numpy as np

    from workers.indexing import _Progress

    progress = _Progress([0, 0, 1, 2, 2, 2], settled=3, total=6)
    embedded = np.zeros(6, dtype=np.bool_)
    assert progress.report(embedded)["documents_done"] == 3
    embedded[[0, 2]] = True
    assert progress.report(embedded) == {
        "documents_total": 6,
        "documents_done": 4,
        "chunks": 6,
        "chunks_embedded": 2,
    }
    embedded[:] = True
    assert progress.report(embedded)["documents_done"] == 6
    assert progress.report(embedded)["documents_done"] == 6  # reported twice, counted once
