"""A small synchronous HTTP client for the seekq gateway.

client = SeekqClient("http://127.0.0.1:8000", api_key="sq_...")
job = client.submit("embed", {"input": ["hello"]})
job = client.wait(job["id"])
"""

import time
from typing import Any

import httpx

__all__ = ["SeekqAPIError", "SeekqClient"]


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
        return self._call("GET", f"/v1/jobs/{job_id}", params=params)

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
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def audit(self, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/v1/audit", params=params)

    def embeddings(self, texts: list[str], model: str = "all-MiniLM-L6-v2") -> dict[str, Any]:
        return self._call("POST", "/v1/embeddings", json={"input": texts, "model": model})

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


def _api_error(response: httpx.Response) -> SeekqAPIError:
    try:
        error = response.json()["error"]
        return SeekqAPIError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        return SeekqAPIError(response.status_code, "http_error", response.text[:200])
