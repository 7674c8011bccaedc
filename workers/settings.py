"""Worker settings, read from SEEKQ_* environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEEKQ_", extra="ignore")

    # "cpu", or "cuda" once `--gpu N` has pinned the process to one device.
    device: str = "cpu"
    # One forward pass holds at most this many (padded) tokens, and this many texts.
    embed_batch_tokens: int = Field(default=8192, ge=256)
    embed_max_batch: int = Field(default=128, ge=1, le=4096)
    # Loaded in worker_process_init so the first job does not pay for it.
    # Embed jobs that arrive together are claimed, embedded and recorded together
    # (workers.embed_batch): at most embed_collect_max_jobs jobs at once, waiting at most
    # embed_collect_ms for more once the first has arrived. Jobs sharing one embedder
    # call hold at most embed_collect_max_texts texts together; a larger job runs alone.
    # 0 ms by default: under load, batches fill while the previous one runs (512 jobs
    # at once: same throughput with 0 and 2 ms, measured), and a lone job waits for none.
    # 64 texts: on 2 CPU cores, two 64-text jobs joined into one 128-text call ran ~8%
    # slower than run apart (bench E1: 243 vs 267 docs/s).
    embed_collect_max_jobs: int = Field(default=64, ge=1, le=1024)
    embed_collect_ms: float = Field(default=0.0, ge=0, le=1000)
    embed_collect_max_texts: int = Field(default=64, ge=1, le=4096)
    preload_models: list[str] = ["all-MiniLM-L6-v2"]
    # The backend of embedding models registered with backend "auto" (the built-in
    # MiniLM): "auto" picks tensorrt on a GPU (hf when TensorRT cannot run) and onnx on
    # the CPU; or one of hf, onnx, onnx-int8, tensorrt for every such model.
    embed_backend: Literal["auto", "hf", "onnx", "onnx-int8", "tensorrt"] = "auto"
    # Pad every batch to a multiple of this many tokens ("auto": 8 on a GPU, for fp16
    # Tensor Cores; 1, no extra padding, on the CPU, where padding only costs).
    pad_to_multiple_of: Literal["auto"] | int = Field(default="auto")
    # transformers' attention implementation (e.g. "sdpa", "flash_attention_2"); unset:
    # transformers' own choice, SDPA where the architecture has it.
    attn_implementation: str | None = Field(default=None, max_length=64)
    # torch.compile the HF embedding models (slow first batches of each new shape).
    torch_compile: bool = False
    # Exported ONNX graphs and TensorRT engines; unset: <data dir>/cache/onnx.
    model_cache_dir: Path | None = None
    torch_threads: int | None = Field(default=None, ge=1)
    # Generate jobs: sequences decoded together by one model's engine (the threads pool
    # runs this many generate tasks at once), and continuous (iteration-level) admission.
    generate_max_batch: int = Field(default=32, ge=1, le=1024)
    generate_continuous: bool = True
    # torch intra-op threads of each model's engine thread on the CPU. 1: from a second
    # Python thread, 2 threads ran the tiny MoE ~2.5x slower than 1 on 2 cores (measured).
    generate_threads: int = Field(default=1, ge=1, le=256)
    # Fine-tuned LoRA adapters each model's engine keeps loaded (least recently used go
    # first; one a running request uses is never evicted).
    generate_max_adapters: int = Field(default=8, ge=1, le=1024)
    # Prometheus metrics of this worker process (generation, MoE experts) on this port of
    # metrics_addr; unset: not served.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"
    # A model loads on a GPU only when its weights (at the load dtype) times this factor,
    # plus a reserve for activations, fit in the device's free memory (workers.gpu_memory).
    gpu_memory_headroom: float = Field(default=1.2, ge=1.0, le=10.0)

    def padding_multiple(self) -> int | None:
        """The multiple each batch is padded to; None: no extra padding."""
        if self.pad_to_multiple_of == "auto":
            return 8 if self.device.startswith("cuda") else None
        return self.pad_to_multiple_of if self.pad_to_multiple_of > 1 else None


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
