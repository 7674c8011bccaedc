"""A small synchronous HTTP client for the seekq gateway.

client = SeekqClient("http://127.0.0.1:8000", api_key="sq_...")
job = client.submit("embed", {"input": ["hello"]})
job = client.wait(job["id"])

job = client.submit("generate", {"model": "tiny-deepseek", "prompt": "hi", "stream": True})
for text in client.stream_events(job["id"]):
    print(text, end="")

file = client.upload_file("refunds.md", Path("docs/refunds.md").read_bytes())
client.create_index("handbook")
job = client.index_documents("handbook", [{"file_id": file["id"], "id": "refunds.md"}])
job = client.wait(job["id"])
hits = client.search("handbook", "how do refunds work", k=5)["hits"]
"""

import json
import time
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote

import httpx

__all__ = ["SeekqAPIError", "SeekqClient"]


def _segment(name: str) -> str:
    """A name as one path segment: "../files/x" must not reach another route."""
    return quote(name, safe="")


class SeekqAPIError(Exception):
    """The gateway answered with an error; `status` and `code` say which."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class SeekqClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 130.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
        )

    def submit(
        self,
        kind: str,
        spec: dict[str, Any],
        *,
        priority: int = 5,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "spec": spec, "priority": priority}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return self._call("POST", "/v1/jobs", json=body)

    def get(self, job_id: str, *, wait_s: float = 0) -> dict[str, Any]:
        params = {"wait": wait_s} if wait_s else None
        return self._call("GET", f"/v1/jobs/{_segment(job_id)}", params=params)

    def wait(self, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """The job once terminal (long-polling), or as it stands after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            job = self.get(job_id, wait_s=max(0.0, min(60.0, remaining)))
            if job["status"] in {"succeeded", "failed", "cancelled"} or remaining <= 0:
                return job

    def list_jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{_segment(job_id)}/cancel")

    def audit(self, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/v1/audit", params=params)

    def generate(self, spec: dict[str, Any], *, timeout_s: float = 120.0) -> dict[str, Any]:
        """Submit a generate job and return it once terminal (or as it stands at timeout)."""
        job = self.submit("generate", spec)
        return self.wait(job["id"], timeout_s)

    def stream_events(self, job_id: str) -> Iterator[str]:
        """The job's text as it is made (GET /v1/jobs/{id}/events); returns when it is done.
        Read the finished job with get(); a job late past the gateway's wait raises."""
        with self._http.stream("GET", f"/v1/jobs/{_segment(job_id)}/events") as response:
            if response.is_error:
                response.read()
                raise _api_error(response)
            for event, data in _sse_events(response.iter_lines()):
                if event == "token":
                    yield json.loads(data)["text"]
                elif event == "done":
                    return
                elif event == "error":
                    error = json.loads(data)["error"]
                    raise SeekqAPIError(response.status_code, error["code"], error["message"])

    def embeddings(self, texts: list[str], model: str = "all-MiniLM-L6-v2") -> dict[str, Any]:
        return self._call("POST", "/v1/embeddings", json={"input": texts, "model": model})

    # Files ---------------------------------------------------------------

    def upload_file(
        self, filename: str, content: bytes | IO[bytes], *, purpose: str = "assistants"
    ) -> dict[str, Any]:
        """Upload one file (POST /v1/files; an open binary file is streamed); a file the
        server cannot read raises with the document error's code (`corrupt`, `empty`...)."""
        files = {"file": (filename, content, "application/octet-stream")}
        return self._call("POST", "/v1/files", files=files, data={"purpose": purpose})

    def list_files(self) -> dict[str, Any]:
        return self._call("GET", "/v1/files")

    def get_file(self, file_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/files/{_segment(file_id)}")

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/files/{_segment(file_id)}")

    # Indexes -------------------------------------------------------------

    def create_index(self, name: str, **options: Any) -> dict[str, Any]:
        """Create an index; `options`: model, type, metric, params, chunk_tokens,
        chunk_overlap. An existing name raises (409 `index_exists`)."""
        body = {"name": name, **{k: v for k, v in options.items() if v is not None}}
        return self._call("POST", "/v1/indexes", json=body)

    def get_index(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/indexes/{_segment(name)}")

    def find_index(self, name: str) -> dict[str, Any] | None:
        """The index, or None when there is none by that name."""
        try:
            return self.get_index(name)
        except SeekqAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def list_indexes(self) -> dict[str, Any]:
        return self._call("GET", "/v1/indexes")

    def delete_index(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/indexes/{_segment(name)}")

    def index_documents(self, name: str, documents: list[dict[str, Any]]) -> dict[str, Any]:
        """Upsert documents (`{"file_id"|"text", "id", "metadata"?}`, ≤ 10,000 per call);
        returns the index job (202)."""
        path = f"/v1/indexes/{_segment(name)}/documents"
        return self._call("POST", path, json={"documents": documents})

    def delete_documents(self, name: str, ids: list[str]) -> dict[str, Any]:
        path = f"/v1/indexes/{_segment(name)}/documents/delete"
        return self._call("POST", path, json={"ids": ids})

    def rebuild_index(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/indexes/{_segment(name)}/rebuild")

    def list_index_documents(
        self, name: str, *, limit: int = 200, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", f"/v1/indexes/{_segment(name)}/documents", params=params)

    def search(
        self, name: str, query: str, *, k: int = 5, filter: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "k": k}
        if filter:
            body["filter"] = filter
        return self._call("POST", f"/v1/indexes/{_segment(name)}/search", json=body)

    # Fine-tuning ---------------------------------------------------------

    def create_fine_tune(
        self,
        model: str,
        training_file: str,
        *,
        suffix: str | None = None,
        validation_file: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A LoRA fine-tune of `model` (POST /v1/fine_tuning/jobs); `hyperparameters`
        takes seekq's fields (n_epochs, max_steps, learning_rate, lora_r, ...)."""
        body: dict[str, Any] = {"model": model, "training_file": training_file}
        if suffix is not None:
            body["suffix"] = suffix
        if validation_file is not None:
            body["validation_file"] = validation_file
        if hyperparameters:
            body["seekq"] = hyperparameters
        return self._call("POST", "/v1/fine_tuning/jobs", json=body)

    def get_fine_tune(self, fine_tuning_job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/fine_tuning/jobs/{_segment(fine_tuning_job_id)}")

    def list_fine_tunes(self, *, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return self._call("GET", "/v1/fine_tuning/jobs", params=params)

    def cancel_fine_tune(self, fine_tuning_job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/fine_tuning/jobs/{_segment(fine_tuning_job_id)}/cancel")

    def fine_tune_events(
        self, fine_tuning_job_id: str, *, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        """Newest first; `after` (an event id) continues with older ones."""
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        path = f"/v1/fine_tuning/jobs/{_segment(fine_tuning_job_id)}/events"
        return self._call("GET", path, params=params)

    def list_models(self) -> dict[str, Any]:
        """Registered models and this tenant's fine-tuned adapters."""
        return self._call("GET", "/v1/models")

    def delete_model(self, model: str) -> dict[str, Any]:
        """Delete a fine-tuned adapter (`<base>:<name>`)."""
        return self._call("DELETE", f"/v1/models/{_segment(model)}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "SeekqClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise _api_error(response)
        body: dict[str, Any] = response.json()
        return body


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream; comments and ids are skipped."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _api_error(response: httpx.Response) -> SeekqAPIError:
    try:
        error = response.json()["error"]
        return SeekqAPIError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        return SeekqAPIError(response.status_code, "http_error", response.text[:200])
