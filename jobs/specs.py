"""Spec (input) and result models of each job kind.

Specs are strict: unknown fields are refused, `true` is not an integer, `"1"` is not a
number and NaN/Infinity are not floats. Sizes are bounded here so that every entry point
(HTTP, CLI, Python producer) gets the same limits.
"""

import base64
import sys
from array import array
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}(:[A-Za-z0-9][A-Za-z0-9._\-]{0,127})?$"
MAX_EMBED_INPUTS = 2048
MAX_TEXT_CHARS = 32_768
MAX_PING_CHARS = 1024

ModelName = Annotated[str, Field(min_length=1, max_length=257, pattern=MODEL_NAME_PATTERN)]
EmbedText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


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


class PingSpec(StrictModel):
    """A model-free canary: exercises submit → SQL → Redis → worker → SQL."""

    payload: str = Field(default="", max_length=MAX_PING_CHARS)


class PingResult(StrictModel):
    payload: str


def describe_validation_error(exc: ValidationError) -> str:
    """A precise message naming each field and problem, without any input value."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts[:20])
