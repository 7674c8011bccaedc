"""Artifacts are checked against the sha256 recorded when seekq wrote them, every time a
worker loads one: a FAISS index file changed on disk fails its search job with
ArtifactCorruptError, and nothing is served from it (real index, search and embed worker
processes; SQLite and PostgreSQL)."""

from pathlib import Path

from sqlalchemy import select

from storage.tables import FileRow, IndexRow
from tests.conftest import IndexWorkers, Stack, unique
from tests.integration.test_index_flow import ingest, upload, wait_job

SECRET_LINE = "The vault code word is marmalade-seventeen."


def stored_index_file(stack: Stack, name: str) -> Path:
    with stack.context.sessions() as session:
        key = session.scalar(select(IndexRow.version_key).where(IndexRow.name == name))
    assert key is not None
    return stack.tmp / "artifacts" / key


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_changed_index_file_fails_search_with_artifact_corrupt(
    stack: Stack, index_workers: IndexWorkers
) -> None:
    name = unique("idx")
    with stack.http() as http:
        assert http.post("/v1/indexes", json={"name": name, "type": "flat"}).status_code == 201
        ingest(http, name, [{"id": "vault.md", "text": SECRET_LINE}])
        path = stored_index_file(stack, name)
        flip_a_byte(path)  # before any search: no worker holds this version in memory

        submitted = http.post(
            "/v1/jobs", json={"kind": "search", "spec": {"index": name, "query": "code word"}}
        )
        assert submitted.status_code == 202, submitted.text
        job = wait_job(http, submitted.json()["id"])
        assert job["status"] == "failed"
        assert job["error"]["type"] == "ArtifactCorruptError"
        assert "sha256" in job["error"]["message"] and path.name in job["error"]["message"]
        assert job["result"] is None

        # The synchronous route answers 502 naming the error, and serves no hit either.
        answer = http.post(f"/v1/indexes/{name}/search", json={"query": "code word"})
        assert answer.status_code == 502
        assert "ArtifactCorruptError" in answer.json()["error"]["message"]
        assert "marmalade" not in answer.text

    log = index_workers.search.log()
    lines = [line for line in log.splitlines() if job["id"] in line and "job failed" in line]
    assert lines and "error=ArtifactCorruptError" in lines[0] and path.name in lines[0]
    assert "marmalade" not in log


def test_a_changed_stored_file_is_refused_with_artifact_corrupt(stack: Stack) -> None:
    with stack.http() as http:
        uploaded = upload(http, "vault.md", SECRET_LINE.encode())
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        with stack.context.sessions() as session:
            key = session.scalar(select(FileRow.artifact_key).where(FileRow.id == file_id))
        assert key is not None
        flip_a_byte(stack.tmp / "artifacts" / key)
        answer = http.get(f"/v1/files/{file_id}/content")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "artifact_corrupt"
    assert "marmalade" not in answer.text
