"""GPU metrics of a worker process, read when Prometheus scrapes (nothing on a CPU box):

- `seekq_gpu_memory_allocated_bytes{device}`, `seekq_gpu_memory_reserved_bytes{device}`:
  torch's caching allocator (`torch.cuda.memory_allocated` / `memory_reserved`).
- `seekq_gpu_memory_fragmentation_ratio{device}`: 1 - allocated / reserved, the share of
  memory torch holds but no tensor uses (high: `PYTORCH_CUDA_ALLOC_CONF=expandable_segments`).
- `seekq_gpu_utilization_ratio{device}`: NVML's busy share over the last sample period,
  when `nvidia-ml-py` is installed.

`device` is the index inside this process (0 when the worker is pinned with --gpu N);
torch is never imported here (the collector only looks at a torch already loaded).
"""

import sys
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class GpuCollector(Collector):
    def __init__(self, cuda: Any = None, nvml: Any = None) -> None:
        self._cuda = cuda  # torch.cuda; looked up at scrape time unless given (tests)
        self._nvml = nvml

    def collect(self) -> Iterator[Metric]:
        cuda = self._cuda or _loaded_cuda()
        if cuda is None or not cuda.is_available():
            return
        devices = range(cuda.device_count())
        allocated = _family("allocated_bytes", "Bytes in use by tensors (torch allocator).")
        reserved = _family("reserved_bytes", "Bytes held by torch's caching allocator.")
        fragmentation = GaugeMetricFamily(
            "seekq_gpu_memory_fragmentation_ratio",
            "1 - allocated / reserved: memory torch holds that no tensor uses.",
            labels=["device"],
        )
        for index in devices:
            used, held = cuda.memory_allocated(index), cuda.memory_reserved(index)
            allocated.add_metric([str(index)], float(used))
            reserved.add_metric([str(index)], float(held))
            fragmentation.add_metric([str(index)], 1.0 - used / held if held else 0.0)
        yield from (allocated, reserved, fragmentation)
        utilization = self._utilization(list(devices))
        if utilization is not None:
            yield utilization

    def _utilization(self, devices: list[int]) -> GaugeMetricFamily | None:
        nvml = self._nvml or _nvml()
        if nvml is None:
            return None
        family = GaugeMetricFamily(
            "seekq_gpu_utilization_ratio",
            "Share of the last NVML sample period the GPU was busy.",
            labels=["device"],
        )
        try:
            for index in devices:
                rates = nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(index))
                family.add_metric([str(index)], rates.gpu / 100.0)
        except Exception:
            return None
        return family


def _family(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"seekq_gpu_memory_{name}", documentation, labels=["device"])


def _loaded_cuda() -> Any:
    torch = sys.modules.get("torch")
    return getattr(torch, "cuda", None) if torch is not None else None


def _nvml() -> Any:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml
