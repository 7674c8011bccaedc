"""Request and response bodies of the HTTP API (pydantic v2, strict)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.specs import MAX_EMBED_INPUTS, MAX_TEXT_CHARS, ModelName


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class JobCreate(Strict):
    kind: str = Field(max_length=32, description="embed | generate | index | search | finetune")
    spec: dict[str, Any] = Field(description="The kind's spec; see the kind's schema")
    priority: int = Field(default=5, ge=0, le=9, description="0 lowest, 9 highest")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class EmbeddingsRequest(Strict):
    """OpenAI `POST /v1/embeddings`. Token-id inputs are not supported."""

    input: str | list[str] = Field(
        description=f"a text or 1-{MAX_EMBED_INPUTS} texts of <= {MAX_TEXT_CHARS} characters"
    )
    model: ModelName
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    # Accepted for compatibility, never stored (it may identify a person).
    user: str | None = Field(default=None, max_length=256)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
