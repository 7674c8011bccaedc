"""Liveness and readiness probes, and the Prometheus metrics."""

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api_gateway.deps import ContextDep, SettingsDep
from api_gateway.routing import CheckedRoute
from api_gateway.schemas import Health
from jobs.errors import AuthError

router = APIRouter(tags=["health"], route_class=CheckedRoute)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(context: ContextDep) -> JSONResponse:
    """The database and the broker both answer."""
    checks = {"database": _check_database(context), "broker": _check_broker(context)}
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check_database(context: ContextDep) -> str:
    try:
        with context.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _check_broker(context: ContextDep) -> str:
    try:
        context.redis.ping()
    except RedisError as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus text format: request latency and errors by route, queue depth."""
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthError("metrics need 'Authorization: Bearer <SEEKQ_METRICS_TOKEN>'")
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
