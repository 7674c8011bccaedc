"""The GPU collector's arithmetic against stand-ins for torch.cuda and NVML (no GPU here:
the real ones are read on the H200 by scripts/gpu_check.sh); on this CPU box it yields
nothing at all."""

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.gpu_metrics import GpuCollector


class FakeCuda:
    def __init__(self, memory: list[tuple[int, int]]) -> None:
        self.memory = memory

    def is_available(self) -> bool:
        return bool(self.memory)

    def device_count(self) -> int:
        return len(self.memory)

    def memory_allocated(self, index: int) -> int:
        return self.memory[index][0]

    def memory_reserved(self, index: int) -> int:
        return self.memory[index][1]


class FakeNvml:
    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=[37, 90][handle])


def scrape(collector: GpuCollector) -> dict[str, dict[str, float]]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels["device"]] = sample.value
    return found


def test_memory_fragmentation_and_utilisation_per_device() -> None:
    cuda = FakeCuda([(3 * 2**30, 4 * 2**30), (0, 0)])
    found = scrape(GpuCollector(cuda, FakeNvml()))
    assert found["seekq_gpu_memory_allocated_bytes"] == {"0": 3 * 2**30, "1": 0}
    assert found["seekq_gpu_memory_reserved_bytes"] == {"0": 4 * 2**30, "1": 0}
    assert found["seekq_gpu_memory_fragmentation_ratio"] == {"0": 0.25, "1": 0.0}
    assert found["seekq_gpu_utilization_ratio"] == {"0": 0.37, "1": 0.9}


def test_no_gpu_no_series() -> None:
    assert scrape(GpuCollector(FakeCuda([]))) == {}
    assert scrape(GpuCollector()) == {}  # this machine: torch has no CUDA device
