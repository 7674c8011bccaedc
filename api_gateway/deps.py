"""FastAPI dependencies: the per-process job context, the calling principal."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api_gateway.rate_limit import KeyRateLimiter
from api_gateway.settings import GatewaySettings
from jobs.context import JobsContext
from jobs.errors import AuthError
from jobs.files import FileService
from jobs.indexes import IndexService
from jobs.keys import Principal
from jobs.service import JobService

bearer = HTTPBearer(auto_error=False, description="A seekq API key: sq_<id>_<secret>")


def get_context(request: Request) -> JobsContext:
    context: JobsContext = request.app.state.context
    return context


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


ContextDep = Annotated[JobsContext, Depends(get_context)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]


def get_service(context: ContextDep) -> JobService:
    return context.service


def get_principal(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None:
        raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
    return context.keys.authenticate(credentials.credentials)


async def get_rate_limited_principal(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> Principal:
    """The principal, once its key is under its request rate (429 otherwise)."""
    limiter: KeyRateLimiter = request.app.state.rate_limiter
    await limiter.admit(principal.key_id, request.scope.setdefault("state", {}))
    return principal


def get_files(context: ContextDep) -> FileService:
    return context.files


def get_indexes(context: ContextDep) -> IndexService:
    return context.indexes


ServiceDep = Annotated[JobService, Depends(get_service)]
FilesDep = Annotated[FileService, Depends(get_files)]
IndexesDep = Annotated[IndexService, Depends(get_indexes)]
PrincipalDep = Annotated[Principal, Depends(get_rate_limited_principal)]
