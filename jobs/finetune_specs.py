"""The fine-tune job: its spec (base model, training file, LoRA hyper-parameters), its
result (the registered adapter and its metrics), and the dataset line formats.

A fine-tune makes a LoRA adapter named `<base>:<adapter>`; generate jobs and chat
completions use it by that model name as soon as the job succeeds.
"""

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from jobs.index_specs import FILE_ID_PATTERN
from jobs.specs import BASE_MODEL_PATTERN, MAX_MESSAGES, MAX_PROMPT_CHARS, StrictModel

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"
MODULE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"
MAX_METADATA_PAIRS = 16

# Module names that, on a mixture-of-experts model, make peft wrap the routed experts'
# 3-D parameters (lora.ParamWrapper) instead of Linear layers: such adapters cannot share a
# batch with other adapters (peft 0.21: "ParamWrapper does not support mixed adapter
# batches yet"), so seekq refuses them rather than serve them one request at a time. The
# submit check uses the model types below; the worker also detects stacked experts itself.
EXPERT_PROJECTIONS = frozenset(
    {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "w1", "w2", "w3", "experts"}
)
MOE_MODEL_TYPES = frozenset(
    {"deepseek_v2", "deepseek_v3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "dbrx"}
)

AdapterName = Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN, max_length=64)]
FileId = Annotated[str, Field(pattern=FILE_ID_PATTERN, max_length=40)]
ModuleName = Annotated[str, Field(pattern=MODULE_NAME_PATTERN, max_length=128)]


class FineTuneHyperparameters(StrictModel):
    """LoRA and training settings. The defaults suit small models; `learning_rate` is the
    absolute rate (OpenAI's `learning_rate_multiplier` scales the default)."""

    n_epochs: int = Field(default=3, ge=1, le=100)
    max_steps: int | None = Field(default=None, ge=1, le=100_000, description="overrides n_epochs")
    batch_size: int = Field(default=8, ge=1, le=256)
    learning_rate: float = Field(default=2e-4, gt=0.0, le=1.0)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=128)
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=0.5)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    lora_r: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1, le=1024)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[ModuleName] | None = Field(
        default=None, min_length=1, max_length=32, description="None: the architecture's default"
    )
    validation_split: float = Field(default=0.0, ge=0.0, le=0.5)
    completion_only: bool = Field(default=True, description="loss on completion tokens only")
    checkpoint_every: int = Field(default=50, ge=1, le=100_000, description="optimizer steps")
    max_length: int | None = Field(default=None, ge=8, le=131_072)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "FineTuneHyperparameters":
        return cls.model_construct(**data)


class FineTuneSpec(StrictModel):
    """Train the LoRA adapter `<model>:<adapter>` on a `fine-tune` file's examples."""

    model: Annotated[str, Field(pattern=BASE_MODEL_PATTERN, max_length=128)]
    training_file: FileId
    validation_file: FileId | None = None
    adapter: AdapterName
    hyperparameters: FineTuneHyperparameters = Field(default_factory=FineTuneHyperparameters)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = (
        Field(default_factory=dict, max_length=MAX_METADATA_PAIRS)
    )

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "FineTuneSpec":
        params = FineTuneHyperparameters.from_stored(data.get("hyperparameters") or {})
        return cls.model_construct(**{**data, "hyperparameters": params})

    @property
    def model_name(self) -> str:
        """The name generate jobs use: `<base>:<adapter>`."""
        return f"{self.model}:{self.adapter}"


class FineTuneResult(StrictModel):
    model: str  # <base>:<adapter>
    adapter_id: str
    steps: int
    total_steps: int
    train_loss: float | None
    eval_loss: float | None
    trainable_params: int
    total_params: int
    trained_tokens: int
    adapter_bytes: int
    adapter_files: dict[str, dict[str, Any]]  # file name -> {"size", "sha256"}
    resumed_from_step: int  # 0: trained in one attempt
    dataset_sha256: str


# --- dataset lines (OpenAI's fine-tuning formats) ---------------------------------------

TrainText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class PromptCompletionLine(StrictModel):
    prompt: TrainText
    completion: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]


class TrainMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: TrainText
    weight: Literal[0, 1] | None = Field(default=None, description="0: no loss on this turn")

    @model_validator(mode="after")
    def _weight_on_assistant(self) -> "TrainMessage":
        if self.weight is not None and self.role != "assistant":
            raise ValueError("weight is allowed on assistant messages only")
        return self


class ChatLine(StrictModel):
    messages: list[TrainMessage] = Field(min_length=1, max_length=MAX_MESSAGES)

    @model_validator(mode="after")
    def _trains_something(self) -> "ChatLine":
        if not any(m.role == "assistant" and m.weight != 0 for m in self.messages):
            raise ValueError("needs at least one assistant message to learn from (weight not 0)")
        return self
