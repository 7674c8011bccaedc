"""Request and response bodies of the HTTP API (pydantic v2, strict).

The OpenAI bodies live in jobs.openai_formats (the batch runner, on a worker, needs them
too) and are re-exported here with the gateway's own.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.adapters import AdapterView
from jobs.openai_formats import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageIn,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    GenerationOptions,
    StreamOptions,
    Strict,
    TextPart,
    Usage,
)

__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionUsage",
    "EmbeddingData",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorDetail",
    "ErrorResponse",
    "GenerationOptions",
    "Health",
    "JobCreate",
    "ModelCard",
    "ModelDeleted",
    "ModelList",
    "StreamOptions",
    "Strict",
    "TextPart",
    "Usage",
]


class JobCreate(Strict):
    kind: str = Field(max_length=32, description="embed | generate | index | search | finetune")
    spec: dict[str, Any] = Field(description="The kind's spec; see the kind's schema")
    priority: int = Field(default=5, ge=0, le=9, description="0 lowest, 9 highest")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard | AdapterView]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


class ErrorDetail(BaseModel):
    message: str = Field(description="what is wrong, naming fields, never repeating input")
    type: str = Field(description="invalid_request_error | authentication_error")
    param: str | None = None
    code: str | None = Field(description="e.g. invalid_request, invalid_json, not_found")


class ErrorResponse(BaseModel):
    """Every error answer (OpenAI's shape), 4xx and 5xx alike."""

    error: ErrorDetail
