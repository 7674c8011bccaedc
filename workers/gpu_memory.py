"""Will a model fit on this GPU? Asked before loading it, so a worker refuses with a clear
error instead of running out of memory halfway through a load.

The weights' size comes from the safetensors headers (shapes and dtypes; no tensor is
read), recomputed at the dtype the model loads in: floating-point tensors take the target
dtype's size, integer and boolean tensors keep their own (dtype "auto" keeps every stored
size). It is multiplied by a headroom factor (setting `SEEKQ_GPU_MEMORY_HEADROOM`) for
what loading adds, and a fixed reserve for activations and the KV cache is added on top.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from jobs.errors import ConfigError

GIB = 1 << 30
ACTIVATION_RESERVE_BYTES = GIB
# Bytes per element of each safetensors dtype.
STORED_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
INDEX_FILE = "model.safetensors.index.json"

# (free_bytes, total_bytes) of a CUDA device, as torch.cuda.mem_get_info answers.
FreeBytes = Callable[[str], tuple[int, int]]


def check_headroom(
    model_dir: Path,
    dtype: torch.dtype | str,
    device: str,
    *,
    name: str | None = None,
    free_bytes: FreeBytes | None = None,
    headroom: float = 1.2,
    spread: bool = False,
) -> None:
    """Raise ConfigError when the model in `model_dir` would not fit in `device`'s free
    memory at `dtype`; on a CPU device, do nothing. `spread`: the model is spread over
    every visible GPU (device_map "auto"), so their free memory counts together."""
    if not device.startswith("cuda"):
        return
    weights = weights_bytes(model_dir, dtype)
    needed = int(weights * headroom) + ACTIVATION_RESERVE_BYTES
    free, total = _free_on(device, spread, free_bytes or _cuda_free)
    if needed > free:
        raise ConfigError(
            f"model {name or model_dir.name} needs ~{_gib(needed)} at {_dtype_name(dtype)} "
            f"with {round((headroom - 1) * 100)}% headroom ({_gib(weights)} of weights, "
            f"{_gib(ACTIVATION_RESERVE_BYTES)} for activations); {_where(device, spread)} "
            f"has {_gib(free)} free of {_gib(total)}. Free the GPU, spread the model over "
            "several (device_map auto, `seekq worker --gpus ... --per-worker N`), or lower "
            "SEEKQ_GPU_MEMORY_HEADROOM"
        )


def weights_bytes(model_dir: Path, dtype: torch.dtype | str) -> int:
    """Bytes the model's safetensors weights take once loaded at `dtype`."""
    target = _element_size(dtype)
    total = 0
    for path in weight_files(model_dir):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = weights.get_slice(key)
                stored = tensor.get_dtype()
                size = target if target and stored in FLOATING else STORED_SIZES[stored]
                total += _numel(tensor.get_shape()) * size
    return total


def weight_files(model_dir: Path) -> list[Path]:
    """The shards the index names, or every safetensors file of the directory."""
    index = model_dir / INDEX_FILE
    if index.exists():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return [model_dir / shard for shard in sorted(shards)]
    return sorted(model_dir.glob("*.safetensors"))


def _element_size(dtype: torch.dtype | str) -> int | None:
    """Bytes per element at `dtype`; None for "auto" (keep each tensor's stored size)."""
    if dtype == "auto":
        return None
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(f"dtype {dtype!r} is not a torch dtype")
        dtype = resolved
    return dtype.itemsize


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _free_on(device: str, spread: bool, free_bytes: FreeBytes) -> tuple[int, int]:
    if not spread:
        return free_bytes(device)
    answers = [free_bytes(f"cuda:{index}") for index in range(torch.cuda.device_count())]
    return sum(free for free, _ in answers), sum(total for _, total in answers)


def _cuda_free(device: str) -> tuple[int, int]:
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def _where(device: str, spread: bool) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    pinned = f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""
    if spread:
        return f"the visible GPUs{pinned} together"
    index = device.partition(":")[2] or "0"
    return f"GPU {index}{pinned}"


def _dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def _gib(size_bytes: int) -> str:
    if size_bytes < GIB:
        return f"{size_bytes / (1 << 20):.1f} MiB"
    return f"{size_bytes / GIB:.1f} GiB"
