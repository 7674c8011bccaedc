"""Spec (input) and result models of each job kind.

Specs are strict: unknown fields are refused, `true` is not an integer, `"1"` is not a
number and NaN/Infinity are not floats. Sizes are bounded here so that every entry point
(HTTP, CLI, Python producer) gets the same limits.
"""

import base64
import re
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
# A registered model, or `<base>:<adapter>` (a fine-tuned LoRA adapter of that base).
BASE_MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}(:[A-Za-z0-9][A-Za-z0-9._\-]{0,63})?$"
MAX_EMBED_INPUTS = 2048
MAX_TEXT_CHARS = 32_768
MAX_PING_CHARS = 1024
MAX_PING_HOLD_S = 600.0

ModelName = Annotated[str, Field(min_length=1, max_length=257, pattern=MODEL_NAME_PATTERN)]
EmbedText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "StrictModel":
        """A stored (validated, then masked) spec, rebuilt without re-checking the input
        limits: masking may have made a text longer than they allow."""
        return cls.model_construct(**data)


class EmbedSpec(StrictModel):
    """Embed a list of texts with a sentence-embedding model."""

    model: ModelName = DEFAULT_EMBED_MODEL
    input: list[EmbedText] = Field(min_length=1, max_length=MAX_EMBED_INPUTS)
    normalize: bool = True


class EmbedResult(StrictModel):
    model: str
    dimensions: int
    # One string per input, in input order: the vector as little-endian float32, base64
    # (OpenAI's encoding_format="base64"). Exact, and a quarter of the size of JSON floats.
    vectors_base64: list[str]
    prompt_tokens: int
    # Tokens per input, in input order (after truncation to the model's maximum length).
    token_counts: list[int]


def decode_vector(encoded: str) -> list[float]:
    """A `vectors_base64` entry as floats."""
    values = array("f")
    values.frombytes(base64.b64decode(encoded))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


MAX_PROMPT_CHARS = 65_536
MAX_MESSAGES = 256
MAX_NEW_TOKENS = 4096  # a hard ceiling; SEEKQ_MAX_NEW_TOKENS sets the operator's (lower) one
MAX_STOP_STRINGS = 4
MAX_BANNED_WORDS = 256
MAX_WORD_CHARS = 64

PromptText = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Word = Annotated[str, Field(min_length=1, max_length=MAX_WORD_CHARS)]


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class GenerateSpec(StrictModel):
    """Generate text from a prompt, or from chat messages through the model's chat template.

    `temperature` 0 is greedy decoding; `top_k` 0 and `top_p` 1 turn those filters off.
    `banned_words` are blocked token sequences (a LogitsProcessor): a guard against
    exact words, not a content-safety guarantee (paraphrases and other spellings pass).
    """

    model: ModelName
    prompt: PromptText | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[Word] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    banned_words: list[Word] = Field(default_factory=list, max_length=MAX_BANNED_WORDS)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)
    # Publish tokens to the job's Redis stream as they are made (SSE at the gateway).
    stream: bool = False

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "GenerateSpec":
        messages = data.get("messages")
        if messages is not None:
            data = {**data, "messages": [ChatMessage.model_construct(**m) for m in messages]}
        return cls.model_construct(**data)

    @model_validator(mode="after")
    def _one_input(self) -> "GenerateSpec":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self


FinishReason = Literal["stop", "length", "cancelled"]


class GenerateTiming(StrictModel):
    queued_ms: float  # from the engine receiving the request to its prefill
    first_token_ms: float  # from the engine receiving the request to the first token
    total_ms: float


class GenerateResult(StrictModel):
    model: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timing: GenerateTiming
    # MoE models: tokens routed to each expert, per MoE layer ("layer index" -> counts by
    # expert). Each layer sums to (prompt_tokens + completion_tokens - 1) * top_k.
    expert_counts: dict[str, list[int]] | None = None


class PingSpec(StrictModel):
    """A model-free canary: exercises submit → SQL → Redis → worker → SQL."""

    payload: str = Field(default="", max_length=MAX_PING_CHARS)
    # Hold the worker this long before answering (checking cancel and lease as it waits):
    # for drills of what long jobs meet (kill -9, leases, time limits, cancels).
    hold_s: float = Field(default=0.0, ge=0, le=MAX_PING_HOLD_S, allow_inf_nan=False)
    # Keep holding when asked to stop: a drill of a runner stuck in native code, which only
    # the hard time limit ends (the ping kind's limit is 30 s unless SEEKQ_TIME_LIMITS_S).
    ignore_stop: bool = False


class PingResult(StrictModel):
    payload: str


def describe_validation_error(exc: ValidationError) -> str:
    """A precise message naming each field and problem, without any input value."""
    return describe_errors(exc.errors(include_input=False, include_url=False))


def describe_errors(
    errors: Sequence[Mapping[str, Any]], whole: str = "spec", skip: tuple[str, ...] = ()
) -> str:
    """pydantic's error list as one message: each location (keys that do not look like
    field names shown as <key>; `skip` left out) and its problem, never an input value.
    `whole` names the location of an error about the whole value."""
    parts = []
    for error in errors[:20]:
        loc = [p for p in error.get("loc", ()) if p not in skip]
        where = ".".join(_safe_loc(p) for p in loc) or whole
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


_PLAIN_KEY = re.compile(r"^(?!.*[0-9]{4})[A-Za-z_][A-Za-z0-9_]{0,40}$")


def _safe_loc(part: object) -> str:
    """A location part as shown in errors: an index, or a key only when it looks like a
    field name. An unknown key is the client's text and may hold personal data (an
    e-mail address used as a key): it is shown as <key>."""
    if isinstance(part, int):
        return str(part)
    text = str(part)
    return text if _PLAIN_KEY.match(text) else "<key>"
