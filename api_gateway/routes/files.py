"""OpenAI-compatible files: upload (multipart), list, read, delete.

An upload is read, checked and PII-masked at once (`jobs.files`): a file seekq cannot read
is refused with a 400 whose `code` says why (corrupt, empty, binary, unsupported_type...),
and only the masked documents are kept.
"""

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from api_gateway.deps import FilesDep, PrincipalDep
from api_gateway.routing import CheckedRoute
from jobs.index_records import FileDeleted, FilePage, FileView
from jobs.index_specs import FILE_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["files"], route_class=CheckedRoute)


@router.post("/files", response_model=FileView)
async def upload_file(
    who: PrincipalDep,
    files: FilesDep,
    file: Annotated[UploadFile, File(description="the document (txt, md, html, pdf, docx, jsonl)")],
    purpose: Annotated[str, Form(max_length=32)] = "assistants",
) -> FileView:
    """Upload a document file; its documents are masked before anything stores them."""
    data = await file.read()
    return await run_in_threadpool(files.upload, who, file.filename or "", data, purpose)


@router.get("/files", response_model=FilePage)
async def list_files(
    who: PrincipalDep,
    files: FilesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=40, pattern=FILE_ID_PATTERN)] = None,
) -> FilePage:
    return await run_in_threadpool(files.page, who, limit, after)


@router.get("/files/{file_id}", response_model=FileView)
async def get_file(file_id: str, who: PrincipalDep, files: FilesDep) -> FileView:
    return await run_in_threadpool(files.get, who, file_id)


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
async def file_content(file_id: str, who: PrincipalDep, files: FilesDep) -> Response:
    """The file's content as seekq keeps it: a batch's output or error file as written;
    an uploaded file in its masked, normalised form (never the bytes as sent)."""
    content, name = await run_in_threadpool(files.content, who, file_id)
    headers = {"Content-Disposition": f'attachment; filename="{_ascii(name)}"'}
    return Response(content, media_type="application/octet-stream", headers=headers)


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, who: PrincipalDep, files: FilesDep) -> FileDeleted:
    """Forget the file (indexes keep the documents they were built from)."""
    await run_in_threadpool(files.delete, who, file_id)
    return FileDeleted(id=file_id)
