"""Request and response bodies of the HTTP API (pydantic v2, strict)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from jobs.adapters import AdapterView
from jobs.specs import (
    MAX_EMBED_INPUTS,
    MAX_MESSAGES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_TEXT_CHARS,
    ModelName,
)


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


class StreamOptions(Strict):
    include_usage: bool = False


class GenerationOptions(Strict):
    """The OpenAI sampling fields seekq supports, plus seekq's own (`top_k`,
    `repetition_penalty`, `banned_words`). Unknown fields are refused (422), and so are
    known OpenAI features seekq lacks, by name: `n` > 1, non-zero `frequency_penalty` /
    `presence_penalty`, `logit_bias`, `logprobs`, `top_logprobs`. Ranges are checked by
    the generate spec. Without `max_tokens` the spec's default applies (64 new tokens).
    """

    model: ModelName
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_logprobs: int | None = None
    # Accepted for compatibility, never stored (it may identify a person).
    user: str | None = Field(default=None, max_length=256)
    top_k: int | None = None
    repetition_penalty: float | None = None
    banned_words: list[str] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise PydanticCustomError("unsupported", "only n=1 is supported")
        return value

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _zero_penalty(cls, value: float | None) -> float | None:
        if value:
            raise PydanticCustomError(
                "unsupported", "only 0 is supported; seekq has repetition_penalty instead"
            )
        return value

    @field_validator("logit_bias", "top_logprobs")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        if value:
            raise PydanticCustomError("unsupported", "not supported")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "GenerationOptions":
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError(
                "unsupported", "stream_options is only allowed when stream is true"
            )
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def spec_options(self) -> dict[str, Any]:
        """The generate-spec fields every request sets, None-valued ones left out."""
        options = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "banned_words": self.banned_words,
            "repetition_penalty": self.repetition_penalty,
        }
        kept = {name: value for name, value in options.items() if value is not None}
        return {"model": self.model, **kept, "stream": self.stream}


class CompletionRequest(GenerationOptions):
    """OpenAI `POST /v1/completions` (legacy text completion): one prompt per request."""

    prompt: str | list[str] = Field(description="a text, or a list holding exactly one text")
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise PydanticCustomError("unsupported", "only one prompt per request is supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise PydanticCustomError("unsupported", "not supported")
        return value

    def generate_spec(self) -> dict[str, Any]:
        prompt = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        return {**self.spec_options(), "prompt": prompt}


class TextPart(Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatMessageIn(Strict):
    """A chat message; `developer` is OpenAI's newer name for `system` and is sent as one.
    Text parts are joined with newlines. Tool, image and audio messages are not supported."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def spec_message(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        content = self.content
        if not isinstance(content, str):
            content = "\n".join(part.text for part in content)
        return {"role": role, "content": content}


class ChatCompletionRequest(GenerationOptions):
    """OpenAI `POST /v1/chat/completions`, rendered through the model's chat template."""

    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError("unsupported", "not supported")
        return value

    @model_validator(mode="after")
    def _one_token_limit(self) -> "ChatCompletionRequest":
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise PydanticCustomError(
                "unsupported", "max_tokens and max_completion_tokens differ; give one"
            )
        return self

    def generate_spec(self) -> dict[str, Any]:
        spec = self.spec_options()
        if self.max_completion_tokens is not None:
            spec["max_new_tokens"] = self.max_completion_tokens
        return {**spec, "messages": [m.spec_message() for m in self.messages]}


FinishReason = Literal["stop", "length"]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason
    logprobs: None = None


class Completion(BaseModel):
    """The id is `cmpl-<job id>`: the job stays readable at GET /v1/jobs/{job id}."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The id is `chatcmpl-<job id>`: the job stays readable at GET /v1/jobs/{job id}."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


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
