"""LoRA adapters loaded on demand onto one served base model, many of them in one batch.

A generate request may name a PEFT LoRA adapter. The first one wraps the base model in a
`PeftModel` (peft injects LoRA layers in place, so the base's modules and the hooks on them,
e.g. the ExpertCounter's, stay valid); later ones are added with `load_adapter`. A forward
pass given `adapter_names` (one per row, `BASE_ADAPTER` for none) applies each row's own
adapter, so requests for different adapters and for the base model share a batch.

Refused at load, with an `AdapterLoadError` for the one request that asked:
  - pickle weights (`adapter_model.bin`): loading them runs arbitrary code;
  - a config that is not LoRA, or a LoRA that changes the base model itself (trained
    biases, replicated layers), which the other requests share;
  - LoRA on anything but Linear layers: peft's ParamWrapper (which LoRA on DeepSeek-V3's
    routed experts becomes) and the other layer kinds raise on every mixed-adapter batch,
    the base rows' included;
  - weights that do not fit the base model.
A failed load removes whatever it had injected: a half-loaded adapter would otherwise break
every later batch. peft is imported on first use, so serving base models never pays for it.
"""

import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn

from jobs.errors import PermanentError, SpecError

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's adapter name for "no adapter on this row"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
ADAPTER_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
RESERVED_KEYS = frozenset({BASE_ADAPTER, "default"})
MIXED = "*mixed*"  # a batch whose rows name different adapters (never a valid key)


class AdapterLoadError(PermanentError):
    """An adapter cannot be served on this model: missing or unsafe files, not a LoRA of
    Linear layers, or weights that do not fit the base model."""


@dataclass(frozen=True)
class AdapterRef:
    """One adapter as the engine sees it: `key` is its PEFT adapter name (unique per
    registered adapter, e.g. `a_<32 hex>`), `path` a local PEFT adapter directory."""

    key: str
    path: Path

    def __post_init__(self) -> None:
        # The key becomes a module name inside the model: peft's own names are reserved.
        if not ADAPTER_KEY.fullmatch(self.key) or self.key in RESERVED_KEYS:
            raise SpecError(
                f"adapter key {self.key[:80]!r}: expected 1-64 letters, digits or underscores, "
                f"not {' or '.join(sorted(RESERVED_KEYS))}"
            )


class ResidentAdapters:
    """The adapters loaded on one model, least recently used first.

    Used from the engine thread only, between forward passes. `ensure` loads an adapter if
    needed and then evicts least recently used ones beyond `max_resident` that no running
    or admitted request uses; adapters in use stay, so the bound is exceeded only while a
    batch needs more than `max_resident` distinct adapters at once.
    """

    def __init__(self, max_resident: int = 8) -> None:
        if max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, got {max_resident}")
        self.max_resident = max_resident
        self.loads = 0
        self.evictions = 0
        self.failures = 0
        self._lru: OrderedDict[str, AdapterRef] = OrderedDict()
        self._mode: str | None = None  # how the LoRA layers are set up; None: unknown

    @property
    def resident(self) -> list[str]:
        """Keys of the loaded adapters, least recently used first."""
        return list(self._lru)

    @property
    def wrapped(self) -> bool:
        """Whether the model is a PeftModel now (it is exactly while an adapter is loaded)."""
        return bool(self._lru)

    def forward(self, model: nn.Module, adapter_names: list[str], **inputs: Any) -> Any:
        """One forward pass of `model`, row i through adapter `adapter_names[i]`.

        Only a batch that mixes adapters passes peft its `adapter_names`: that costs a walk
        of the model and a hook on every LoRA layer per pass, and a gather per layer and
        adapter. A batch of one kind runs the base model with the LoRA layers switched off
        (base rows) or with its adapter the active one; the layers are set up again only
        when the kind changes. Measured on the tiny model, 16 rows, one pass: base 1.9 ms;
        LoRA layers off 2.0; all rows BASE_ADAPTER by name 2.8 (`disable_adapter()` is
        worse still: it walks the model twice a pass); 16 rows of one adapter by name 3.9,
        as the active adapter 2.5; 8 + 8 mixed 3.7."""
        if not self._lru:
            return model(**inputs)
        first = adapter_names[0]
        if any(name != first for name in adapter_names):
            self._set_mode(model, MIXED)
            return model(**inputs, adapter_names=adapter_names)
        self._set_mode(model, first)
        return model.get_base_model()(**inputs)  # type: ignore[operator]

    def _set_mode(self, model: nn.Module, mode: str) -> None:
        """LoRA layers off (BASE_ADAPTER), on with one active adapter (its key), or on for
        rows that name theirs (MIXED)."""
        if self._mode == mode:
            return
        tuner: Any = model.base_model
        if mode == BASE_ADAPTER:
            tuner.disable_adapter_layers()
        else:
            if self._mode in (None, BASE_ADAPTER):
                tuner.enable_adapter_layers()
            if mode != MIXED:
                model.set_adapter(mode, inference_mode=True)  # type: ignore[operator]
        self._mode = mode

    def ensure(self, model: nn.Module, refs_in_use: set[str], ref: AdapterRef) -> nn.Module:
        """`model` with `ref` loaded (the base model is wrapped on the first load), marked
        most recently used. Raises AdapterLoadError, leaving the model as it was, when `ref`
        cannot be served."""
        if ref.key in self._lru:
            self._lru.move_to_end(ref.key)
        else:
            self._mode = None  # new LoRA layers start switched on
            try:
                model = self._load(model, ref)
            except AdapterLoadError:
                self.failures += 1
                raise
            self._lru[ref.key] = ref
            self.loads += 1
            log.info("adapter loaded key=%s resident=%d", ref.key, len(self._lru))
        self._evict(model, refs_in_use | {ref.key})
        return model

    def _load(self, model: nn.Module, ref: AdapterRef) -> nn.Module:
        check_adapter_files(ref)
        try:
            loaded = _attach(model, ref, first=not self._lru)
            _require_linear_layers(loaded, ref.key)
        except Exception as exc:  # peft's errors vary: each becomes this request's own error
            self._discard(model, ref.key)
            if isinstance(exc, AdapterLoadError):
                raise
            detail = " ".join(str(exc).split())[:400]
            raise AdapterLoadError(f"adapter {ref.key} does not fit this model: {detail}") from exc
        return loaded

    def _evict(self, model: nn.Module, in_use: set[str]) -> None:
        """Delete least recently used adapters beyond `max_resident` that are not in use
        (also after a hit: a batch that needed more may have left extra ones behind)."""
        idle = [key for key in self._lru if key not in in_use]
        excess = idle[: max(0, len(self._lru) - self.max_resident)]
        if not excess:
            return
        # Rows name their adapter in each pass, so which one is active matters only here:
        # peft warns when it must pick another because the active one is deleted.
        newest = next(reversed(self._lru))  # in use, so never evicted
        if model.active_adapter != newest:
            model.set_adapter(newest, inference_mode=True)  # type: ignore[operator]
        for key in excess:
            model.delete_adapter(key)  # type: ignore[operator]
            del self._lru[key]
            self.evictions += 1
            log.info("adapter evicted key=%s resident=%d", key, len(self._lru))
        _unwrap_empty_layers(_base_of(model))
        self._mode = None  # the active adapter may have changed

    def _discard(self, model: nn.Module, key: str) -> None:
        """Remove every trace of the failed `key` from `model` (the base model itself when
        it was the first adapter: peft injected its layers before failing)."""
        from peft.tuners.tuners_utils import delete_adapter

        base = _base_of(model)
        if self._lru and key in getattr(model, "peft_config", {}):
            model.delete_adapter(key)  # type: ignore[operator]
        delete_adapter(base, key, prefix="lora_")  # layers injected before their config
        _unwrap_empty_layers(base)
        if not self._lru and hasattr(base, "peft_config"):
            del base.peft_config


def check_adapter_files(ref: AdapterRef) -> None:
    """Refuse, before the model is touched, a directory that peft could not load safely."""
    if not ref.path.is_dir():
        raise AdapterLoadError(f"adapter {ref.key}: directory {ref.path.name!r} not found")
    if not (ref.path / WEIGHTS_FILE).is_file():
        pickled = [name for name in PICKLE_FILES if (ref.path / name).exists()]
        found = f" (found {pickled[0]}: pickle runs arbitrary code on load)" if pickled else ""
        raise AdapterLoadError(
            f"adapter {ref.key} has no {WEIGHTS_FILE}{found}; seekq loads safetensors only"
        )
    _check_config(ref)
    _check_weights(ref)


def _check_config(ref: AdapterRef) -> None:
    try:
        config = json.loads((ref.path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterLoadError(f"adapter {ref.key} has no {CONFIG_FILE}") from None
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(f"adapter {ref.key}: {CONFIG_FILE} is not JSON ({exc})") from exc
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type != "LORA":
        raise AdapterLoadError(
            f"adapter {ref.key} is of PEFT type {peft_type!r}; only LORA adapters are served"
        )
    if config.get("bias", "none") != "none" or config.get("layer_replication"):
        raise AdapterLoadError(
            f"adapter {ref.key} changes the base model itself (LoRA bias or layer "
            "replication), which every other request shares"
        )
    if config.get("target_parameters"):
        raise AdapterLoadError(
            f"adapter {ref.key} puts LoRA on parameters {config['target_parameters']} (MoE "
            "experts): only LoRA on Linear layers can share a batch with other adapters"
        )


def _check_weights(ref: AdapterRef) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(ref.path / WEIGHTS_FILE), framework="pt") as weights:
            names = list(weights.keys())
    except (SafetensorError, OSError) as exc:
        raise AdapterLoadError(
            f"adapter {ref.key}: {WEIGHTS_FILE} is not a readable safetensors file ({exc})"
        ) from exc
    if not names:
        raise AdapterLoadError(f"adapter {ref.key}: {WEIGHTS_FILE} holds no tensors")


def _attach(model: nn.Module, ref: AdapterRef, first: bool) -> nn.Module:
    from peft import PeftModel

    if first:
        wrapped = PeftModel.from_pretrained(
            model, str(ref.path), adapter_name=ref.key, is_trainable=False
        )
        return wrapped.eval()
    model.load_adapter(str(ref.path), adapter_name=ref.key, is_trainable=False)  # type: ignore[operator]
    return model


def _require_linear_layers(model: nn.Module, key: str) -> None:
    """Only lora.Linear supports mixed-adapter batches; others raise on every such batch."""
    from peft.tuners.lora import Linear
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        held = isinstance(module, BaseTunerLayer) and key in _adapters_of(module)
        if held and type(module) is not Linear:
            raise AdapterLoadError(
                f"adapter {key} puts LoRA on {name.removeprefix('base_model.model.')} "
                f"({type(module).__name__}, e.g. MoE experts): only LoRA on Linear layers "
                "can share a batch with other adapters"
            )


def _adapters_of(layer: Any) -> set[str]:
    """The adapters a peft layer holds weights for."""
    return {key for name in layer.adapter_layer_names for key in getattr(layer, name)}


def _unwrap_empty_layers(module: nn.Module) -> None:
    """Put back the original module wherever a peft layer holds no adapter any more: an
    empty ParamWrapper still refuses mixed batches, an empty lora.Linear still costs."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, child in list(module.named_children()):
        inner = child
        while isinstance(inner, BaseTunerLayer) and not _adapters_of(inner):
            inner = cast(nn.Module, inner.base_layer)
        if inner is not child:
            setattr(module, name, inner)
        _unwrap_empty_layers(inner)


def _base_of(model: nn.Module) -> nn.Module:
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model
