"""OpenAI's request and response bodies, and the conversions between them and seekq jobs.

The gateway's synchronous endpoints and the batch runner (on a worker) share this module:
a request becomes the spec of the job it submits (`generate_spec()`, `embed_spec()`), and a
finished job's result becomes the body the endpoint answers (`embeddings_response()`,
`completion_response()`, `chat_completion_response()`). Batch lines go through
`batch_job_spec()` and `batch_response_body()`, so a batch line gets exactly the spec and
the body the same request would get from the endpoint.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from jobs.catalog import JobKind
from jobs.errors import JobCancelledError, JobFailedError, JobTimeoutError, SpecError
from jobs.records import JobView
from jobs.specs import (
    MAX_EMBED_INPUTS,
    MAX_MESSAGES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_TEXT_CHARS,
    EmbedResult,
    GenerateResult,
    ModelName,
    decode_vector,
    describe_validation_error,
)
from jobs.status import JobStatus, is_terminal


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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


EncodingFormat = Literal["float", "base64"]


def embed_spec(body: EmbeddingsRequest) -> dict[str, Any]:
    """The embed spec an embeddings request submits."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    return {"model": body.model, "input": texts}


def embed_result_of(job: JobView) -> EmbedResult:
    """The result of a finished embed job, or the error an OpenAI caller gets."""
    if job.status == JobStatus.SUCCEEDED.value and job.result is not None:
        return EmbedResult.model_validate(job.result)
    if job.status == JobStatus.FAILED.value:
        error_type = job.error.type if job.error else "unknown"
        raise JobFailedError(f"job {job.id} failed ({error_type})")
    raise JobTimeoutError(f"job {job.id} is still {job.status}; poll GET /v1/jobs/{job.id}")


def generate_result_of(job: JobView) -> GenerateResult:
    """The result of a finished generate job, or the error an OpenAI caller gets.

    A cancelled job is an error (job_cancelled), not a choice: OpenAI has no finish reason
    for it, and "stop" or "length" would misreport why the text ends. Its partial text
    stays readable at GET /v1/jobs/{id}.
    """
    result = job.result if job.status == JobStatus.SUCCEEDED.value else None
    if result is not None and result.get("finish_reason") != "cancelled":
        return GenerateResult.model_validate(result)
    if job.status == JobStatus.FAILED.value:
        error_type = job.error.type if job.error else "unknown"
        raise JobFailedError(f"job {job.id} failed ({error_type})")
    if is_terminal(JobStatus(job.status)):
        raise JobCancelledError(f"job {job.id} was cancelled; see GET /v1/jobs/{job.id}")
    raise JobTimeoutError(f"job {job.id} is still {job.status}; poll GET /v1/jobs/{job.id}")


def encode_vector(encoded: str, encoding_format: str) -> list[float] | str:
    """Results are stored as OpenAI's base64 already; floats are decoded on request."""
    return encoded if encoding_format == "base64" else decode_vector(encoded)


def embeddings_response(
    model: str, result: EmbedResult, encoding_format: str, dimensions: int | None
) -> EmbeddingsResponse:
    """Raises SpecError when `dimensions` asks for another size than the model makes."""
    if dimensions is not None and dimensions != result.dimensions:
        raise SpecError(f"dimensions: model '{model}' only produces {result.dimensions}")
    data = [
        EmbeddingData(index=i, embedding=encode_vector(encoded, encoding_format))
        for i, encoded in enumerate(result.vectors_base64)
    ]
    tokens = result.prompt_tokens
    return EmbeddingsResponse(
        data=data, model=model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


def created_of(job: JobView) -> int:
    """OpenAI's `created`: the job's submit time, in Unix seconds."""
    return int(job.created_at.timestamp())


def finish_reason_of(result: GenerateResult) -> FinishReason:
    """generate_result_of() has turned a cancelled job into an error already."""
    return "length" if result.finish_reason == "length" else "stop"


def completion_usage(result: GenerateResult) -> CompletionUsage:
    total = result.prompt_tokens + result.completion_tokens
    return CompletionUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=total,
    )


def completion_response(job: JobView, model: str, result: GenerateResult) -> Completion:
    choice = CompletionChoice(text=result.text, finish_reason=finish_reason_of(result))
    return Completion(
        id=f"cmpl-{job.id}",
        created=created_of(job),
        model=model,
        choices=[choice],
        usage=completion_usage(result),
    )


def chat_completion_response(job: JobView, model: str, result: GenerateResult) -> ChatCompletion:
    choice = ChatChoice(
        message=AssistantMessage(content=result.text), finish_reason=finish_reason_of(result)
    )
    return ChatCompletion(
        id=f"chatcmpl-{job.id}",
        created=created_of(job),
        model=model,
        choices=[choice],
        usage=completion_usage(result),
    )


CHAT_COMPLETIONS_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
EMBEDDINGS_URL = "/v1/embeddings"
BATCH_ENDPOINTS: dict[str, JobKind] = {
    CHAT_COMPLETIONS_URL: JobKind.GENERATE,
    COMPLETIONS_URL: JobKind.GENERATE,
    EMBEDDINGS_URL: JobKind.EMBED,
}
BatchRequest = ChatCompletionRequest | CompletionRequest | EmbeddingsRequest
_REQUEST_MODELS: dict[str, type[BatchRequest]] = {
    CHAT_COMPLETIONS_URL: ChatCompletionRequest,
    COMPLETIONS_URL: CompletionRequest,
    EMBEDDINGS_URL: EmbeddingsRequest,
}


def batch_request(url: str, body: object) -> BatchRequest:
    """A batch line's body, validated as its endpoint validates it. Raises SpecError with
    a message naming fields and problems, never the line's values (nor the url)."""
    model = _REQUEST_MODELS.get(url)
    if model is None:
        raise SpecError(f"url: must be one of {', '.join(BATCH_ENDPOINTS)}")
    if not isinstance(body, dict):
        raise SpecError("body: must be a JSON object")
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc)) from None
    if isinstance(request, GenerationOptions) and request.stream:
        raise SpecError("stream: stream is not supported in batches")
    return request


def batch_job_spec(url: str, body: object) -> tuple[JobKind, dict[str, Any]]:
    """The kind and spec the endpoint at `url` would submit for `body` (not yet checked
    against the kind's spec model: submitting does that)."""
    request = batch_request(url, body)
    if isinstance(request, EmbeddingsRequest):
        return JobKind.EMBED, embed_spec(request)
    return JobKind.GENERATE, request.generate_spec()


def batch_response_body(url: str, body: object, job: JobView) -> tuple[int, dict[str, Any]]:
    """The status and body the endpoint at `url` would have answered for `body`, once its
    job succeeded. A job without a response (failed, cancelled, not finished) raises
    JobFailedError, JobCancelledError or JobTimeoutError, and an embeddings `dimensions`
    the model does not make raises SpecError: the caller writes an error line for those."""
    request = batch_request(url, body)
    response: BaseModel
    if isinstance(request, EmbeddingsRequest):
        result = embed_result_of(job)
        fmt, dimensions = request.encoding_format, request.dimensions
        response = embeddings_response(request.model, result, fmt, dimensions)
    elif isinstance(request, ChatCompletionRequest):
        response = chat_completion_response(job, request.model, generate_result_of(job))
    else:
        response = completion_response(job, request.model, generate_result_of(job))
    return 200, response.model_dump(mode="json")


def batch_error(job: JobView) -> dict[str, str]:
    """A failed job's error as a batch error entry: its type as the code, and its message
    (seekq's own text, which names fields but never holds input)."""
    if job.error is None:
        return {"code": "job_failed", "message": f"job {job.id} ended {job.status}"}
    return {"code": job.error.type, "message": job.error.message}
