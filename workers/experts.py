"""Per-expert token counts of MoE models, from forward hooks on the routers.

`generate(output_router_logits=True)` does not return router outputs, so each MoE layer's
router (`mlp.gate`, e.g. DeepseekV3TopkRouter, whose output is `(router_logits,
topk_weights, topk_indices)`) gets a forward hook that counts, per sequence of the batch,
the tokens sent to each expert. Padding is masked out.
"""

import re
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

ROUTER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.gate$")


class ExpertCounter:
    """Counts routed tokens per (sequence, MoE layer, expert) over one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.layer_ids: list[int] = []
        self.num_experts = 0
        self._valid: torch.Tensor | None = None
        self._counts: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for name, module in model.named_modules():
            match = ROUTER_NAME.search(name)
            experts = getattr(module, "num_experts", None)
            if match and isinstance(experts, int) and hasattr(module, "top_k"):
                layer = int(match.group(1))
                self.layer_ids.append(layer)
                self.num_experts = experts
                self._handles.append(module.register_forward_hook(self._hook(layer)))

    @property
    def enabled(self) -> bool:
        return bool(self.layer_ids)

    def begin(self, valid: torch.Tensor) -> None:
        """Before a forward pass: which (sequence, position) inputs are real tokens."""
        self._valid = valid
        self._counts = {}

    def collect(self) -> torch.Tensor | None:
        """After the pass: counts shaped (sequences, MoE layers, experts), on the CPU."""
        if not self.enabled or self._valid is None:
            return None
        rows = self._valid.shape[0]
        empty = torch.zeros(rows, self.num_experts, dtype=torch.long)
        per_layer = [self._counts.get(layer, empty).cpu() for layer in self.layer_ids]
        self._valid = None
        return torch.stack(per_layer, dim=1)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int) -> Any:
        def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._valid is None or not isinstance(output, tuple):
                return
            indices = output[-1]
            rows, positions = self._valid.shape
            top_k = indices.shape[-1]
            flat = indices.reshape(rows, positions * top_k)
            weights = self._valid.repeat_interleave(top_k, dim=1).to(torch.long)
            counts = torch.zeros(rows, self.num_experts, dtype=torch.long, device=flat.device)
            self._counts[layer] = counts.scatter_add_(1, flat, weights)

        return count
