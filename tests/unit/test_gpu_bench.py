"""The GPU bench's pure parts on the CPU: the decode-roofline byte count, the n/a rows."""

from dataclasses import replace

import pytest
import torch
from transformers import DeepseekV3ForCausalLM

from seekq.bench.gpu_rows import (
    active_experts,
    copy_bandwidth,
    decode_config,
    decode_step_bytes,
    guarded,
    step_bytes_from_config,
)
from seekq.bench.gpu_vector_rows import DRY_SIZES, faiss_row
from seekq.bench.report import Row


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # the configs, built on the meta device
@pytest.mark.parametrize("batch", [1, 32])
def test_step_bytes_from_the_config_match_the_model_parameters(device: str, batch: int) -> None:
    config = decode_config(device)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    assert decode_step_bytes(model, batch) == pytest.approx(
        step_bytes_from_config(config, batch, 2), rel=1e-12
    )


def test_a_batch_one_step_reads_top_k_experts_and_a_batch_reads_more() -> None:
    assert active_experts(32, 4, 1) == pytest.approx(4)
    assert 4 < active_experts(32, 4, 32) < 32
    config = decode_config("cpu")
    one, many = (step_bytes_from_config(config, b, 4) for b in (1, 32))
    assert one < many


def test_the_gpu_config_is_big_enough_for_the_roofline() -> None:
    config = decode_config("cuda")
    assert step_bytes_from_config(config, 1, 2) > 0.5e9  # a step reads > 0.5 GB


def test_a_row_that_raises_becomes_an_na_row() -> None:
    def broken() -> list[Row]:
        raise RuntimeError("no GPU\nhere")

    (row,) = guarded("GX1", "something", broken)
    assert row.id == "GX1"
    assert row.seekq == "n/a: RuntimeError: no GPU here"
    assert row.passed is None


def test_a_row_that_works_is_returned_as_is() -> None:
    rows = [Row("GX1", "w", "1", "2", "0.5x", "-", None)]
    assert guarded("GX1", "something", lambda: rows) == rows


def test_copy_bandwidth_is_measured_on_the_cpu() -> None:
    assert copy_bandwidth("cpu", 2**20) > 1e8


def test_faiss_on_the_cpu_reports_its_rate_and_no_gpu_side() -> None:
    pytest.importorskip("faiss")
    row = faiss_row("cpu", replace(DRY_SIZES, index_vectors=2000, queries=50))
    assert row.seekq.startswith("n/a: dry run")
    assert row.peer.endswith("q/s")
