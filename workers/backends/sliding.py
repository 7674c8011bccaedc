"""Sliding-window attention: set a registry entry's window on a transformers config.

A sliding layer attends to its last `window` positions only, so its KV cache stops growing
there (transformers' DynamicSlidingWindowLayer keeps `window - 1` positions between steps).
How a config says which layers slide differs by family (transformers 5.24):

- Mistral-style (`sliding_window`, no `layer_types`): every layer slides.
- Qwen2/Qwen3-style (`use_sliding_window`, `max_window_layers`): layers with an index of at
  least `max_window_layers` slide; `layer_types` is computed from that when the config is
  built, so it is recomputed here.
- Configs with `layer_types` that already name sliding layers (Gemma-style): those layers
  get the new width.

Anything else (DeepSeek-V3 has no sliding window) is refused with a ConfigError.
"""

from transformers import PretrainedConfig

from jobs.errors import ConfigError

SLIDING = "sliding_attention"
FULL = "full_attention"


def apply_sliding_window(config: PretrainedConfig, window: int | None) -> PretrainedConfig:
    """Set `window` on `config` (in place, also returned); None leaves the config as it is."""
    if window is None:
        return config
    if window < 1:
        raise ConfigError(f"sliding_window must be at least 1, not {window}")
    if declares(config, "use_sliding_window") and declares(config, "max_window_layers"):
        set_qwen_window(config, window)
    elif declares(config, "sliding_window") and has_sliding_layers(config):
        config.sliding_window = window
    else:
        raise ConfigError(f"{config.model_type} models have no sliding-window attention")
    return config


def set_qwen_window(config: PretrainedConfig, window: int) -> None:
    """Qwen2's rule: layers from `max_window_layers` on slide, the ones before stay full."""
    first = int(config.max_window_layers)
    layers = int(config.num_hidden_layers)
    if first >= layers:
        raise ConfigError(
            f"{config.model_type}: max_window_layers is {first} and the model has {layers} "
            "layers, so no layer would use the sliding window"
        )
    config.use_sliding_window = True
    config.sliding_window = window
    config.layer_types = [SLIDING if i >= first else FULL for i in range(layers)]


def has_sliding_layers(config: PretrainedConfig) -> bool:
    """Without `layer_types` (Mistral-style) every layer slides; with it, the named ones."""
    if not declares(config, "layer_types"):
        return True
    return SLIDING in (config.layer_types or ())


def declares(config: PretrainedConfig, name: str) -> bool:
    """Whether the config class has the field (not just an attribute read from a JSON file)."""
    return name in getattr(type(config), "__dataclass_fields__", {})
