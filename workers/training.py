"""LoRA fine-tuning of a causal LM: examples and hyperparameters in, a PEFT adapter out.

Hugging Face `Trainer` runs the loop (optimizer, schedule, accumulation, checkpoints,
resume with the same data order and RNG); this module chooses the LoRA targets, refuses
the ones that would break serving, encodes the examples (`workers.lora_data`) and bridges
Trainer's callbacks to `TrainingHooks`, the seam the job layer plugs into:

- `should_stop` is asked after every optimizer step; True ends training there and saves
  that step as a checkpoint (a cancel keeps the work done so far);
- `on_log` gets every step's loss and every evaluation;
- `on_checkpoint` gets each complete checkpoint directory, which `train_lora` takes back
  as `resume_from` (from anywhere it was copied to).

The adapter is a plain PEFT directory (adapter_config.json + adapter_model.safetensors)
that `PeftModel.from_pretrained` loads outside seekq.
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.pytorch_utils import Conv1D

from jobs.finetune_specs import EXPERT_PROJECTIONS
from workers.lora_data import FeatureDataset, encode_example, feature_datasets, training_tokenizer

__all__ = [
    "LoraHyperparameters",
    "TrainingEvent",
    "TrainingHooks",
    "TrainingOutcome",
    "count_parameters",
    "default_target_modules",
    "encode_example",
    "train_lora",
]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CHECKPOINTS_KEPT = 2  # Trainer deletes older ones; the hook has copied each already
# Written into each checkpoint, read by no resume: peft's model card and a pickle of the
# TrainingArguments (resuming takes the arguments from `params`, not from the checkpoint).
UNREAD_CHECKPOINT_FILES = ("README.md", "training_args.bin")
_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
_QKVO_MODELS = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
_ATTENTION_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys((*_QKVO_MODELS, "gemma", "gemma2", "gemma3_text", "olmo", "olmo2"), _QKVO),
    "phi3": ("qkv_proj", "o_proj"),
    "gpt2": ("c_attn", "c_proj"),  # Conv1D; c_proj also names the MLP's output projection
}


@dataclass(frozen=True)
class LoraHyperparameters:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: default_target_modules(...)
    n_epochs: int = 3
    max_steps: int | None = None  # when set, overrides n_epochs
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    seed: int = 0
    validation_split: float = 0.0  # share of examples held out for eval_loss (0: none)
    completion_only: bool = True  # loss only on completion / assistant tokens
    checkpoint_every: int = 50  # optimizer steps between checkpoints
    max_length: int | None = None  # truncate examples (None: the model's context length)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TrainingEvent:
    step: int
    total_steps: int
    epoch: float
    loss: float | None
    learning_rate: float | None
    eval_loss: float | None
    elapsed_s: float  # since this run (attempt) started


@dataclass(frozen=True)
class TrainingOutcome:
    adapter_dir: Path | None  # None when stopped early
    steps: int
    total_steps: int
    train_loss: float | None  # mean of every step's loss, over the whole run (resumes too)
    eval_loss: float | None  # the last evaluation's
    trainable_params: int
    total_params: int
    trained_tokens: int  # non-padding tokens fed to training, counting epochs
    stopped: bool  # should_stop ended it before the last step
    resumed_from_step: int  # 0 when not resumed
    adapter_size_bytes: int = 0  # the adapter directory's files; 0 when stopped


class TrainingHooks(Protocol):
    def should_stop(self) -> bool: ...

    def on_log(self, event: TrainingEvent) -> None: ...

    def on_checkpoint(self, directory: Path, step: int) -> None: ...


def default_target_modules(model_type: str, config: Any = None) -> tuple[str, ...]:
    """Attention projections only: every one is an nn.Linear in every architecture below,
    so the adapter can be served in mixed-adapter batches (MoE expert targets cannot)."""
    if model_type in ("deepseek_v2", "deepseek_v3"):
        split_q = getattr(config, "q_lora_rank", 1) is not None
        query = ("q_a_proj", "q_b_proj") if split_q else ("q_proj",)
        return (*query, "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    if model_type in _ATTENTION_TARGETS:
        return _ATTENTION_TARGETS[model_type]
    raise ValueError(
        f"no default LoRA target modules for model type {model_type!r}; "
        "pass target_modules (the names of its attention projection Linear layers)"
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train_lora(
    base_dir: Path,
    examples: list[dict[str, Any]],
    params: LoraHyperparameters,
    work_dir: Path,
    hooks: TrainingHooks,
    *,
    device: str = "cpu",
    resume_from: Path | None = None,
    dtype: str = "auto",
    eval_examples: list[dict[str, Any]] | None = None,
) -> TrainingOutcome:
    """Fine-tune a LoRA adapter on `base_dir`; checkpoints go under `work_dir/checkpoints`,
    the adapter to `work_dir/adapter`. Torch's thread count is the caller's to set.
    `eval_examples` (a validation file) replace the held-out split when given."""
    started = time.monotonic()
    resumed_from_step = checkpoint_step(resume_from) if resume_from is not None else 0
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = training_tokenizer(base_dir)
    model = lora_model(base_dir, params, torch_dtype)
    max_length = params.max_length or int(getattr(model.config, "max_position_embeddings", 2048))
    train_set, eval_set = feature_datasets(
        tokenizer,
        examples,
        params.validation_split,
        params.seed,
        params.completion_only,
        max_length,
        eval_examples,
    )
    bridge = _HooksCallback(hooks, started)
    args = training_arguments(params, work_dir / "checkpoints", device, torch_dtype, bool(eval_set))
    trainer = _trainer(model, tokenizer, args, train_set, eval_set, bridge)
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    adapter_dir = None if bridge.stopped else save_adapter(model, work_dir / "adapter")
    return _outcome(trainer.state, model, adapter_dir, bridge.stopped, resumed_from_step)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """auto: fp32 on the CPU (bf16 matmuls there are slower, not faster); bf16 on CUDA,
    fp16 where the GPU has no bf16."""
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype in named:
        return named[dtype]
    if dtype != "auto":
        raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, not {dtype!r}")
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def checkpoint_step(directory: Path) -> int:
    """The optimizer step a checkpoint directory was saved at."""
    state_file = directory / "trainer_state.json"
    if not state_file.is_file():
        raise ValueError(f"{directory} is not a training checkpoint (no trainer_state.json)")
    step: int = json.loads(state_file.read_text())["global_step"]
    return step


def lora_model(base_dir: Path, params: LoraHyperparameters, torch_dtype: torch.dtype) -> Any:
    """The base model with LoRA layers injected on checked targets (seeded: LoRA's A
    matrices start random)."""
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
    )
    targets = params.target_modules or default_target_modules(model.config.model_type, model.config)
    check_targets(model, targets)
    set_seed(params.seed)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=list(targets),
    )
    peft_model = get_peft_model(model, config)
    _check_linear_only(peft_model)
    return peft_model


def check_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    """Refuse, before peft sees them, targets that name a MoE's routed experts and targets
    that match no Linear layer (peft ignores those when another target matches)."""
    if _has_stacked_experts(model) and EXPERT_PROJECTIONS & set(targets):
        raise ValueError(_experts_message(sorted(EXPERT_PROJECTIONS & set(targets))))
    linear_names = [name for name, module in model.named_modules() if _is_linear(module)]
    missing = [t for t in targets if not any(_matches(name, t) for name in linear_names)]
    if missing:
        candidates = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
        raise ValueError(
            f"target_modules {missing} match no Linear layer of this model; "
            f"its Linear layers are named {candidates}"
        )


def _matches(module_name: str, target: str) -> bool:
    """peft's rule for a list of targets: the full name, or its dotted suffix."""
    return module_name == target or module_name.endswith("." + target)


def _has_stacked_experts(model: torch.nn.Module) -> bool:
    """3-D weights outside convolutions (a hybrid's Conv1d has them too): experts."""
    return any(
        parameter.dim() == 3
        for module in model.modules()
        if not isinstance(module, torch.nn.modules.conv._ConvNd)
        for parameter in module.parameters(recurse=False)
    )


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | Conv1D)


def _experts_message(names: list[str]) -> str:
    return (
        f"target_modules {names} would put LoRA on this MoE's routed experts: peft rewrites "
        "those names into the experts' stacked 3-D parameters (lora.ParamWrapper), whose "
        "adapters cannot be served in mixed-adapter batches (and the dense and shared-expert "
        "MLPs get none); target the attention projections instead (the default)"
    )


def _check_linear_only(model: torch.nn.Module) -> None:
    """After injection, every LoRA layer must wrap a Linear: peft may still have mapped a
    target (say, a regex) onto expert parameters."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not _is_linear(module.get_base_layer()):
            raise ValueError(f"{name}: " + _experts_message([name.rsplit(".", 1)[-1]]))


def training_arguments(
    params: LoraHyperparameters,
    output_dir: Path,
    device: str,
    torch_dtype: torch.dtype,
    evaluate: bool,
) -> TrainingArguments:
    """Every step logged; checkpoints (and evaluations) every `checkpoint_every` steps and
    at the end; seeds for weights, dropout and data order; nothing reported, printed or
    downloaded."""
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # Trainer trains on the current device
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        num_train_epochs=params.n_epochs,
        max_steps=params.max_steps or -1,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a share of the steps
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=params.checkpoint_every,
        save_total_limit=CHECKPOINTS_KEPT,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=params.checkpoint_every if evaluate else None,
        prediction_loss_only=True,  # no logits kept: the vocabulary makes them the largest
        include_num_input_tokens_seen="non_padding",
        label_names=["labels"],
        use_cpu=not device.startswith("cuda"),
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        dataloader_num_workers=0,
        seed=params.seed,
        data_seed=params.seed,
        report_to=[],
        disable_tqdm=True,
        log_level="warning",
    )


def _trainer(
    model: Any,
    tokenizer: Any,
    args: TrainingArguments,
    train_set: FeatureDataset,
    eval_set: FeatureDataset | None,
    bridge: TrainerCallback,
) -> Trainer:
    """A Trainer that prints nothing. The collator is passed as a plain function: Trainer
    saves a collator's tokenizer into every checkpoint, and the glue ships checkpoints."""
    collator = DataCollatorForSeq2Seq(
        tokenizer,
        label_pad_token_id=-100,
        pad_to_multiple_of=8 if args.device.type == "cuda" else None,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=lambda features: collator(features),
        callbacks=[bridge],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for print()
    return trainer


class _HooksCallback(TrainerCallback):
    """Trainer's callback points, forwarded to the job's hooks."""

    def __init__(self, hooks: TrainingHooks, started: float) -> None:
        self.hooks = hooks
        self.started = started
        self.stopped = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        if state.global_step < state.max_steps and self.hooks.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:
            return  # the run's closing summary
        event = TrainingEvent(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=state.epoch or 0.0,
            loss=logs.get("loss"),
            learning_rate=logs.get("learning_rate"),
            eval_loss=logs.get("eval_loss"),
            elapsed_s=time.monotonic() - self.started,
        )
        self.hooks.on_log(event)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        directory = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        for name in UNREAD_CHECKPOINT_FILES:
            (directory / name).unlink(missing_ok=True)
        self.hooks.on_checkpoint(directory, state.global_step)


def save_adapter(model: PeftModel, directory: Path) -> Path:
    """Safetensors and the config only: peft also writes a README model card with
    placeholder text, which no loader reads."""
    model.save_pretrained(str(directory), safe_serialization=True)
    for path in directory.iterdir():
        if path.name not in ADAPTER_FILES:
            path.unlink()
    return directory


def _outcome(
    state: TrainerState,
    model: Any,
    adapter_dir: Path | None,
    stopped: bool,
    resumed_from_step: int,
) -> TrainingOutcome:
    """Losses from the log history, which a checkpoint carries: a resumed run's figures
    cover the steps before the resume too."""
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    trainable, total = count_parameters(model)
    size = sum(p.stat().st_size for p in adapter_dir.iterdir()) if adapter_dir else 0
    return TrainingOutcome(
        adapter_dir=adapter_dir,
        steps=state.global_step,
        total_steps=state.max_steps,
        train_loss=math.fsum(losses) / len(losses) if losses else None,
        eval_loss=evals[-1] if evals else None,
        trainable_params=trainable,
        total_params=total,
        trained_tokens=int(state.num_input_tokens_seen),
        stopped=stopped,
        resumed_from_step=resumed_from_step,
        adapter_size_bytes=size,
    )
