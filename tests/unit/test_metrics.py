"""Worker metrics: expert counters, the windowed activation rate, generation counters, /metrics."""

import urllib.request

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.metrics import GenerationMetrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: GenerationMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def step(active: list[tuple[int, int]], layers: int = 2, experts: int = 4) -> np.ndarray:
    counts = np.zeros((layers, experts), np.int64)
    for row, expert in active:
        counts[row, expert] = 3
    return counts


def test_expert_tokens_are_counted_per_layer_and_expert() -> None:
    metrics = GenerationMetrics()
    metrics.observe_experts("tiny", step([(0, 1), (1, 3)]), layer_ids=[1, 2])
    metrics.observe_experts("tiny", step([(0, 1)]), layer_ids=[1, 2])
    found = samples(metrics, "seekq_moe_expert_tokens_total")
    assert found[(("expert", "1"), ("layer", "1"), ("model", "tiny"))] == 6
    assert found[(("expert", "3"), ("layer", "2"), ("model", "tiny"))] == 3
    assert found[(("expert", "0"), ("layer", "1"), ("model", "tiny"))] == 0
    assert len(found) == 8


def test_activation_rate_covers_the_window_only() -> None:
    clock = FakeClock()
    metrics = GenerationMetrics(window_s=300, clock=clock)
    assert metrics.activation_rate("tiny") is None
    metrics.observe_experts("tiny", step([(0, 0), (0, 1), (1, 0), (1, 1)]), [1, 2])
    assert metrics.activation_rate("tiny") == 0.5
    clock.now += 200
    metrics.observe_experts("tiny", step([(0, 2)]), [1, 2])
    assert metrics.activation_rate("tiny") == 5 / 8
    clock.now += 150  # the first step has left the window
    assert metrics.activation_rate("tiny") == 1 / 8
    rate = samples(metrics, "seekq_moe_expert_activation_rate")
    assert rate == {(("model", "tiny"),): 1 / 8}


def test_an_idle_model_has_no_rate_rather_than_a_stale_one() -> None:
    clock = FakeClock()
    metrics = GenerationMetrics(window_s=300, clock=clock)
    metrics.observe_experts("tiny", step([(0, 0)]), [1, 2])
    clock.now += 301
    assert metrics.activation_rate("tiny") is None
    assert samples(metrics, "seekq_moe_expert_activation_rate") == {}
    assert samples(metrics, "seekq_moe_expert_tokens_total")  # the counter stays


def test_a_reshaped_model_starts_afresh_and_bad_shapes_are_refused() -> None:
    metrics = GenerationMetrics()
    metrics.observe_experts("tiny", step([(0, 0)]), [1, 2])
    metrics.observe_experts("tiny", step([(0, 0)], layers=3, experts=2), [1, 2, 3])
    assert metrics.activation_rate("tiny") == 1 / 6
    with pytest.raises(ValueError, match="do not match 2 layers"):
        metrics.observe_experts("tiny", np.zeros((3, 4)), [1, 2])


def test_generation_counters_and_histograms() -> None:
    metrics = GenerationMetrics()
    metrics.observe_step("tiny", 4)
    metrics.observe_request("tiny", 10, 5, 0.03, "stop")
    metrics.observe_request("tiny", 7, 0, None, "some free text")
    tokens = samples(metrics, "seekq_generate_tokens_total")
    assert tokens[(("model", "tiny"), ("phase", "prompt"))] == 17
    assert tokens[(("model", "tiny"), ("phase", "completion"))] == 5
    requests = samples(metrics, "seekq_generate_requests_total")
    assert requests == {
        (("finish_reason", "stop"), ("model", "tiny")): 1,
        (("finish_reason", "other"), ("model", "tiny")): 1,
    }
    assert samples(metrics, "seekq_generate_batch_size_sum") == {(("model", "tiny"),): 4}
    first = samples(metrics, "seekq_generate_time_to_first_token_seconds_count")
    assert first == {(("model", "tiny"),): 1}


def test_serve_exposes_this_registry_on_a_free_port() -> None:
    metrics, other = GenerationMetrics(), GenerationMetrics()
    metrics.observe_experts("tiny", step([(0, 0)]), [1, 2])
    other.observe_step("elsewhere", 1)
    port = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    assert 'seekq_moe_expert_activation_rate{model="tiny"} 0.125' in text
    assert "elsewhere" not in text


def test_finetune_metrics() -> None:
    metrics = GenerationMetrics()
    metrics.observe_finetune_step("tiny", None, 6.0)  # the first step: not timed
    metrics.observe_finetune_step("tiny", 0.02, 4.5)
    metrics.observe_checkpoint("tiny", 0.1)
    metrics.observe_finetune_end("tiny", "succeeded", resumed=True)
    metrics.observe_finetune_end("tiny", "weird", resumed=False)
    text = generate_latest(metrics.registry).decode()
    assert 'seekq_finetune_steps_total{model="tiny"} 2.0' in text
    assert 'seekq_finetune_step_seconds_count{model="tiny"} 1.0' in text
    assert 'seekq_finetune_train_loss{model="tiny"} 4.5' in text
    assert 'seekq_finetune_checkpoint_seconds_count{model="tiny"} 1.0' in text
    assert 'seekq_finetune_jobs_total{model="tiny",outcome="succeeded",resumed="true"} 1.0' in text
    assert 'seekq_finetune_jobs_total{model="tiny",outcome="failed",resumed="false"} 1.0' in text
