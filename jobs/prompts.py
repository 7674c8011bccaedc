"""Prompt checks before queueing: render a generate spec and count its tokens.

Reads the model directory's own files (tokenizer.json, the chat template, config.json)
with `tokenizers` and a sandboxed jinja2 environment, so the gateway can refuse a prompt
that cannot fit the model's context window with a 4xx before anything is queued, without
loading transformers or torch. The worker renders with transformers' own
`apply_chat_template` and checks again; the two agree for ordinary templates, and where a
template relies on transformers-only features the worker's check still refuses the job
with the same error.
"""

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from jobs.errors import ConfigError, ContextLengthError, SpecError
from jobs.registry import ModelEntry, resolve_source
from jobs.specs import GenerateSpec

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class PromptFormat:
    """What submit needs to know about one causal-LM directory."""

    tokenizer: Tokenizer
    chat_template: str | None
    special_tokens: dict[str, str]
    context_length: int

    @classmethod
    def read(cls, directory: Path) -> "PromptFormat":
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.exists():
            raise ConfigError(f"model directory {directory.name!r} has no tokenizer.json")
        config = _read_json(directory / "config.json")
        tokenizer_config = _read_json(directory / "tokenizer_config.json")
        return cls(
            tokenizer=Tokenizer.from_file(str(tokenizer_file)),
            chat_template=_chat_template(directory, tokenizer_config),
            special_tokens=_special_tokens(tokenizer_config),
            context_length=_context_length(config, directory),
        )

    def render(self, spec: GenerateSpec) -> str:
        """The prompt text: `prompt` as is, or `messages` through the chat template."""
        if spec.prompt is not None:
            return spec.prompt
        if self.chat_template is None:
            raise SpecError(f"messages: model '{spec.model}' has no chat template; send a prompt")
        messages = [{"role": m.role, "content": m.content} for m in spec.messages or []]
        return self.render_messages(messages, add_generation_prompt=True)

    def render_messages(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if self.chat_template is None:
            raise SpecError("messages: the model has no chat template")
        try:
            template = _ENVIRONMENT.from_string(self.chat_template)
            return template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except TemplateError as exc:
            raise SpecError(f"messages: the model's chat template refused them ({exc})") from None

    def count(self, spec: GenerateSpec) -> int:
        """Prompt tokens as the worker counts them: special tokens are added to a plain
        prompt; a rendered chat template already holds its own."""
        plain = spec.prompt is not None
        return len(self.tokenizer.encode(self.render(spec), add_special_tokens=plain).ids)

    def check_fits(self, spec: GenerateSpec) -> int:
        """The prompt's token count; raises ContextLengthError when it cannot fit."""
        prompt_tokens = self.count(spec)
        check_context(prompt_tokens, spec.max_new_tokens, self.context_length)
        return prompt_tokens


def check_context(prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
    if prompt_tokens + max_new_tokens > context_length:
        raise ContextLengthError(
            f"this model's context is {context_length} tokens; the prompt has {prompt_tokens} "
            f"and max_new_tokens (OpenAI: max_tokens) asks for {max_new_tokens}: shorten the "
            "prompt or ask for fewer new tokens"
        )


class PromptFormats:
    """PromptFormat per model name, read once per process."""

    def __init__(self) -> None:
        self._formats: dict[str, PromptFormat] = {}
        self._lock = threading.Lock()

    def get(self, entry: ModelEntry) -> PromptFormat:
        with self._lock:
            found = self._formats.get(entry.name)
            if found is None:
                found = PromptFormat.read(resolve_source(entry.source))
                self._formats[entry.name] = found
            return found


def _raise(message: str) -> None:
    raise TemplateError(message)


_ENVIRONMENT = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
)
_ENVIRONMENT.globals["raise_exception"] = _raise


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _special_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """bos_token, eos_token, ...: the names chat templates use."""
    return {
        key: value
        for key, value in tokenizer_config.items()
        if key.endswith("_token") and isinstance(value, str)
    }


def _chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text()
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def _context_length(config: dict[str, Any], directory: Path) -> int:
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(f"model directory {directory.name!r}: config.json gives no context length")
