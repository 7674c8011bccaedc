"""L1: a LoRA fine-tune against a FULL fine-tune of the same tiny DeepSeek-V3 MoE
(`workers.models.tiny`, seed 0), on the same batches, in this process:

- L1-params  LoRA's trainable share with seekq's defaults (attention targets, r=8), and
             L1-params-r (information only) the rank at which that share crosses 1%;
- L1-step    full step time ÷ LoRA step time;
- L1-mem     peak training memory, LoRA ÷ full;
- L1-size    adapter safetensors ÷ the full model's safetensors (reported, no target).

Both sides run the same plain loop, forward + backward + AdamW step, no Trainer on either
side, over the same fixed batches; timed rounds alternate and each side's best is kept.
The LoRA side is `workers.training.lora_model`, the model `train_lora` trains.

Run on its own (no Redis, no worker): `python -m seekq.bench.finetune_rows [--quick]`.
"""

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch

from seekq.bench.embed_rows import synthetic_texts
from seekq.bench.harness import QUICK, QUIET_CORES, SETTLE_MAX_S, Sizes, busy_cores
from seekq.bench.report import Row

SEED = 20240615
BATCH = 8  # examples per step
BATCHES = 8  # distinct batches, cycled
WARM_STEPS = 3  # untimed steps per side before the first round
LEARNING_RATE = 2e-4
PARAMS_TARGET = 0.01
STEP_TARGET = 1.25
MEMORY_TARGET = 0.5


@dataclass(frozen=True)
class FinetuneSizes:
    steps: int  # timed optimizer steps per round and side
    rounds: int  # alternating rounds (best kept)


L1_FULL = FinetuneSizes(steps=60, rounds=3)
L1_QUICK = FinetuneSizes(steps=20, rounds=1)


@dataclass
class Side:
    """One fine-tune: a model in training mode and AdamW over its trainable parameters."""

    model: Any
    optimizer: torch.optim.Optimizer

    @classmethod
    def of(cls, model: Any) -> "Side":
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.train()
        return cls(model, torch.optim.AdamW(trainable, lr=LEARNING_RATE))

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.model(**batch).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _settle() -> None:
    """Wait (bounded) for other processes to go quiet: Harness.settle without a harness."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while busy_cores() > QUIET_CORES and time.monotonic() < deadline:
        pass


def l1_rows(sizes: Sizes, settle: Callable[[], None] = _settle) -> list[Row]:
    l1 = L1_QUICK if sizes == QUICK else L1_FULL
    with tempfile.TemporaryDirectory(prefix="seekq-l1-") as tmp:
        return finetune_rows(Path(tmp), l1, settle)


def finetune_rows(work: Path, sizes: FinetuneSizes, settle: Callable[[], None]) -> list[Row]:
    from transformers import AutoModelForCausalLM

    from workers.models.tiny import make_tiny_deepseek
    from workers.training import LoraHyperparameters, lora_model

    base_dir = make_tiny_deepseek(work / "tiny")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = LoraHyperparameters()
    lora = Side.of(lora_model(base_dir, params, torch.float32).to(device))
    full_model: Any = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    full = Side.of(full_model.to(device))
    batches, tokens = _batches(base_dir, device)
    step_times = best_step_times({"lora": lora, "full": full}, batches, sizes, settle)
    memory = {
        name: peak_bytes(side, batches[0], device)
        for name, side in {"lora": lora, "full": full}.items()
    }
    setting = Setting(params.r, device, torch.get_num_threads(), tokens, sizes)
    return [
        *params_rows(lora.model, params.r),
        step_row(step_times, setting),
        memory_row(memory, setting),
        size_row(
            _saved_bytes(lora.model, work / "adapter"), _saved_bytes(full.model, work / "full")
        ),
    ]


@dataclass(frozen=True)
class Setting:
    r: int
    device: str
    threads: int
    tokens: float  # mean tokens per example
    sizes: FinetuneSizes


def _batches(base_dir: Path, device: str) -> tuple[list[dict[str, torch.Tensor]], float]:
    """BATCHES fixed batches of BATCH prompt/completion examples (synthetic sentences),
    encoded as train_lora encodes them and right-padded; and the mean example length."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from workers.lora_data import encode_examples

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "right"
    texts = synthetic_texts(2 * BATCH * BATCHES, SEED)
    examples = [
        {"prompt": f"Question: {q}\nAnswer:", "completion": f" {a}"}
        for q, a in zip(texts[::2], texts[1::2], strict=True)
    ]
    features = encode_examples(tokenizer, examples, completion_only=True, max_length=512)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    batches = [
        {k: v.to(device) for k, v in collate(features[i : i + BATCH]).items()}
        for i in range(0, len(features), BATCH)
    ]
    return batches, sum(len(f["input_ids"]) for f in features) / len(features)


@dataclass
class StepTimes:
    """Seconds per optimizer step, by phase."""

    forward: float = 0.0
    backward: float = 0.0
    adamw: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.adamw

    def text(self) -> str:
        phases = f"forward {self.forward * 1000:.1f}, backward {self.backward * 1000:.1f}"
        return f"{self.total * 1000:.1f} ms/step ({phases}, AdamW {self.adamw * 1000:.1f})"


def best_step_times(
    sides: dict[str, Side],
    batches: list[dict[str, torch.Tensor]],
    sizes: FinetuneSizes,
    settle: Callable[[], None],
) -> dict[str, StepTimes]:
    """Each side's time per step: WARM_STEPS untimed, then alternating rounds of
    `sizes.steps` steps over the cycled batches; each side's fastest round kept."""
    for side in sides.values():
        for batch in batches[:WARM_STEPS]:
            side.step(batch)
    best: dict[str, StepTimes] = {}
    order = list(sides)
    for _ in range(sizes.rounds):
        for name in order:
            settle()
            times = _timed_steps(sides[name], batches, sizes.steps)
            if name not in best or times.total < best[name].total:
                best[name] = times
        order.reverse()
    return best


def _timed_steps(side: Side, batches: list[dict[str, torch.Tensor]], steps: int) -> StepTimes:
    """Side.step, with the clock read between its phases."""
    times = StepTimes()
    for batch in islice(cycle(batches), steps):
        started = _now()
        loss = side.model(**batch).loss
        forward_done = _now()
        loss.backward()
        backward_done = _now()
        side.optimizer.step()
        side.optimizer.zero_grad(set_to_none=True)
        times.forward += (forward_done - started) / steps
        times.backward += (backward_done - forward_done) / steps
        times.adamw += (_now() - backward_done) / steps
    return times


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_bytes(side: Side, batch: dict[str, torch.Tensor], device: str) -> dict[str, int]:
    """One more step's peak. CUDA: the allocator's own peak. CPU has no such counter, so
    an accounting (an upper bound: activations are freed as the gradients appear):
    parameters + gradients + AdamW state + the tensors autograd saves for backward
    (each storage once, parameters excluded)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        side.step(batch)
        torch.cuda.synchronize()
        return {"total": torch.cuda.max_memory_allocated()}
    parameters = {p.untyped_storage().data_ptr() for p in side.model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = side.model(**batch).loss
    loss.backward()
    grads = sum(p.grad.nbytes for p in side.model.parameters() if p.grad is not None)
    side.optimizer.step()
    side.optimizer.zero_grad(set_to_none=True)
    state = side.optimizer.state.values()
    adam = sum(t.nbytes for s in state for t in s.values() if isinstance(t, torch.Tensor))
    weights = sum(p.nbytes for p in side.model.parameters())
    parts = {"params": weights, "grads": grads, "adamw": adam, "saved": sum(saved.values())}
    return {**parts, "total": sum(parts.values())}


def _saved_bytes(model: Any, directory: Path) -> int:
    """Bytes of the safetensors files `save_pretrained` writes (the adapter's, for LoRA)."""
    model.save_pretrained(str(directory), safe_serialization=True)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


# ---------------------------------------------------------------- rows


def params_rows(model: Any, r: int) -> list[Row]:
    """The trainable share at r, and (information) the largest r within the target: LoRA
    adds r x (in + out) parameters per targeted Linear, so the share is linear in r."""
    from workers.training import count_parameters

    trainable, total = count_parameters(model)
    base, per_rank = total - trainable, trainable / r
    share = trainable / total
    within = int(PARAMS_TARGET * base / ((1 - PARAMS_TARGET) * per_rank))
    targets = sorted(model.peft_config["default"].target_modules)
    targeted = _targeted_base_params(model)

    def share_at(rank: int) -> str:
        return f"{rank * per_rank / (base + rank * per_rank):.2%}"

    return [
        Row(
            id="L1-params",
            what=(
                f"LoRA r={r} on the default targets ({', '.join(targets)}) of the tiny MoE "
                f"({base:,} parameters, hidden 128). A rank-r adapter on a d x d matrix adds "
                f"2r/d of it: at d=128 that is {2 * r / 128:.1%}, and these projections are "
                f"{targeted / base:.0%} of this model, so r={r} cannot reach 1% here "
                f"(at DeepSeek-V3's d=7,168, 2r/d is {2 * r / 7168:.2%})"
            ),
            seekq=f"{trainable:,} trainable of {total:,} ({share:.2%})",
            peer=f"{base:,} trainable (full fine-tune, 100%)",
            ratio=f"{share:.2%}",
            target=f"≤ {PARAMS_TARGET:.0%}",
            passed=share <= PARAMS_TARGET,
        ),
        Row(
            id="L1-params-r",
            what="the largest LoRA rank within 1% on this model (same targets)",
            seekq=f"r ≤ {within} (r={within}: {share_at(within)})" if within else "none",
            peer=f"r={within + 1}: {share_at(within + 1)} (over)",
            ratio=f"{per_rank:,.0f} parameters per rank",
            target="information",
            passed=None,
        ),
    ]


def _targeted_base_params(model: Any) -> int:
    from peft.tuners.lora import LoraLayer

    layers: list[Any] = [m.get_base_layer() for m in model.modules() if isinstance(m, LoraLayer)]
    return sum(int(layer.weight.numel()) for layer in layers)


def step_row(times: dict[str, StepTimes], setting: Setting) -> Row:
    ratio = times["full"].total / times["lora"].total
    return Row(
        id="L1-step",
        what=(
            f"one optimizer step (forward, backward, AdamW) on batches of {BATCH} "
            f"prompt/completion examples (~{setting.tokens:.0f} tokens each, loss on the "
            f"completion), {BATCHES} batches cycled; {setting.sizes.steps} steps per round, "
            f"best of {setting.sizes.rounds}; {setting.device}, torch threads "
            f"{setting.threads}. LoRA saves the frozen weights' gradients and most of "
            "AdamW, but still back-propagates through every layer and adds its own matmuls "
            "and dropout: on this model activations, not weights, dominate the work"
        ),
        seekq=f"{times['lora'].text()} (LoRA r={setting.r})",
        peer=f"{times['full'].text()} (full)",
        ratio=f"{ratio:.2f}x",
        target=f"≥ {STEP_TARGET}x",
        passed=ratio >= STEP_TARGET,
    )


def memory_row(memory: dict[str, dict[str, int]], setting: Setting) -> Row:
    ratio = memory["lora"]["total"] / memory["full"]["total"]
    if setting.device == "cuda":
        how = "torch.cuda.max_memory_allocated over one step"
    else:
        how = (
            "CPU accounting, not RSS: parameters + gradients + AdamW state + tensors saved "
            "for backward (saved_tensors_hooks, each storage once, parameters excluded), "
            "summed over one step, an upper bound on its peak"
        )
    saved_share = memory["full"].get("saved", 0) / memory["full"]["total"]
    why = (
        f"; LoRA drops the frozen weights' gradients and AdamW state, not the activations "
        f"saved for backward, which are {saved_share:.0%} of the full side's total here"
        if saved_share
        else ""
    )
    return Row(
        id="L1-mem",
        what=f"peak training memory, one step on L1-step's first batch; {how}{why}",
        seekq=f"{_megabytes(memory['lora'])} (LoRA)",
        peer=f"{_megabytes(memory['full'])} (full)",
        ratio=f"{ratio:.2f}x",
        target=f"≤ {MEMORY_TARGET}x",
        passed=ratio <= MEMORY_TARGET,
    )


def _megabytes(parts: dict[str, int]) -> str:
    total = f"{parts['total'] / 1e6:.2f} MB"
    detail = ", ".join(f"{name} {n / 1e6:.2f}" for name, n in parts.items() if name != "total")
    return f"{total} ({detail})" if detail else total


def size_row(adapter_bytes: int, full_bytes: int) -> Row:
    return Row(
        id="L1-size",
        what="what a fine-tune stores: adapter_model.safetensors vs the full model's safetensors",
        seekq=f"{adapter_bytes / 1e3:,.0f} KB (adapter)",
        peer=f"{full_bytes / 1e3:,.0f} KB (full state dict)",
        ratio=f"{adapter_bytes / full_bytes:.3f}x",
        target="report",
        passed=None,
    )


# ---------------------------------------------------------------- standalone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{L1_QUICK} instead of {L1_FULL}")
    parser.add_argument("--threads", type=int, default=0, help="default: torch's own count")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seekq-l1-") as tmp:
        rows = finetune_rows(Path(tmp), L1_QUICK if args.quick else L1_FULL, _settle)
    for row in rows:
        verdict = {True: "pass", False: "FAIL", None: "info"}[row.passed]
        print(f"{row.id}: {row.seekq} | {row.peer} | {row.ratio} (target {row.target}) {verdict}")
        print(f"    {row.what}")
    print(f"total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
