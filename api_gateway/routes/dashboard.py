"""The jobs dashboard: server-rendered pages (no JS build step) over SQL, which Flower
cannot show: queued jobs, history across restarts, a job's timeline and its masked audit
events. Signing in takes an API key once; the browser then holds a signed session naming
the key (HttpOnly, SameSite=Strict), checked against the key at every page, so revoking
the key ends the session. A tenant sees its own jobs only; keys of the tenants in
SEEKQ_DASHBOARD_ADMIN_TENANTS get a tenant filter and may look at any tenant's jobs.
"""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import ContextDep, SettingsDep
from api_gateway.routing import CheckedRoute
from jobs.catalog import CATALOG
from jobs.errors import AuthError, SpecError
from jobs.keys import Principal
from jobs.status import JobStatus

router = APIRouter(prefix="/dashboard", include_in_schema=False, route_class=CheckedRoute)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
COOKIE = "seekq_session"
SESSION_S = 8 * 3600
PAGE = 50
Filter = Annotated[str, Query(max_length=32)]


def _who(request: Request, context: ContextDep) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        return context.keys.from_session(token)
    except AuthError:
        return None


def _viewed(who: Principal, tenant: str, settings: SettingsDep, context: ContextDep) -> Principal:
    """Whose jobs the page shows: `tenant`'s when `who` is an admin tenant's key."""
    if tenant and tenant != who.tenant_name and who.tenant_name in settings.dashboard_admin_tenants:
        return context.keys.acting_as(who, tenant)
    return who


def _to_login() -> RedirectResponse:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"tenant": None})


@router.post("/login")
def login(
    request: Request,
    context: ContextDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    try:
        who = context.keys.authenticate(api_key.strip())
    except AuthError as exc:
        page = {"tenant": None, "error": f"not signed in: {exc}"}
        return templates.TemplateResponse(request, "login.html", page, status_code=401)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        context.keys.session_token(who, SESSION_S),
        max_age=SESSION_S,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    return _to_login()


@router.get("", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    context: ContextDep,
    settings: SettingsDep,
    kind: Filter = "",
    status: Filter = "",
    tenant: Annotated[str, Query(max_length=64)] = "",
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    who = await run_in_threadpool(_who, request, context)
    if who is None:
        return _to_login()
    page: dict[str, Any] = {"tenant": who.tenant_name, "kind": kind, "status": status}
    page.update(kinds=[k.value for k in CATALOG], statuses=[s.value for s in JobStatus])
    page.update(admin=who.tenant_name in settings.dashboard_admin_tenants, viewed=tenant)
    try:
        viewed = await run_in_threadpool(_viewed, who, tenant, settings, context)
        found = await run_in_threadpool(
            context.service.list_jobs,
            viewed,
            kind=kind or None,
            status=status or None,
            limit=PAGE,
            cursor=cursor or None,
        )
        page.update(jobs=found.data, next_cursor=found.next_cursor)
    except (SpecError, AuthError) as exc:
        page.update(jobs=[], next_cursor=None, error=str(exc))
    return templates.TemplateResponse(request, "jobs.html", page)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    job_id: str,
    request: Request,
    context: ContextDep,
    settings: SettingsDep,
    tenant: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    who = await run_in_threadpool(_who, request, context)
    if who is None:
        return _to_login()
    viewed = await run_in_threadpool(_viewed, who, tenant, settings, context)
    job = await run_in_threadpool(context.service.get, viewed, job_id)  # 404: not theirs
    audit = await run_in_threadpool(context.service.job_audit, viewed, job_id)
    moments = [
        ("queued", job.created_at),
        ("started", job.started_at),
        ("cancel requested", job.cancel_requested_at),
        (job.status, job.finished_at),
    ]
    page = {
        "tenant": who.tenant_name,
        "viewed": tenant,
        "job": job,
        "audit": audit,
        "timeline": [(name, moment) for name, moment in moments if moment is not None],
    }
    return templates.TemplateResponse(request, "job.html", page)
