"""The gateway's route class: request bodies are read as strict JSON (jobs.strict_json:
no duplicate keys, no NaN or Infinity, no NUL or lone surrogate, bounded nesting) and path
and query parameters are refused when they hold a character no store can keep (NUL), all
before the endpoint runs. Every router of the gateway is built with `route_class=CheckedRoute`.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from api_gateway.schemas import ErrorResponse
from jobs import strict_json
from jobs.errors import SpecError


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        # FastAPI turns the JSONDecodeError raised here into a 400 `invalid_json`.
        if not hasattr(self, "_json"):
            self._json = strict_json.loads(await self.body())
        return self._json


# Documented on every operation, in place of FastAPI's {"detail": [...]} 422 that the
# gateway never sends (api_gateway.errors answers every error in this shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request was refused"},
    "5XX": {"model": ErrorResponse, "description": "seekq or a part it needs failed"},
}


class CheckedRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["responses"] = {**ERROR_RESPONSES, **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            check_parameters(request)
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return checked


def check_parameters(request: Request) -> None:
    """Path and query parameters a database could not even look up (PostgreSQL refuses
    NUL in text): a 422 naming the parameter, never its value."""
    named = [("path", k, v) for k, v in request.path_params.items()]
    named += [("query", k, v) for k, v in request.query_params.multi_items()]
    for where, name, value in named:
        if strict_json.find_unstorable(value) is not None or "\x00" in name:
            label = name if name.isidentifier() else "<parameter>"
            raise SpecError(f"{where} parameter {label}: holds a NUL character or a lone surrogate")
