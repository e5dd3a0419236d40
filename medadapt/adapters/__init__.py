"""Adapters around frozen backbones: LoRA (through peft), spatial bottleneck adapters, a context adapter,
a depth adapter across slices.

    from medadapt.adapters import AdapterConfig, LoraConfig, apply
    model, summary = apply(backbone, AdapterConfig(lora=LoraConfig(rank=4), train=["mask_decoder"]))
    print(summary)
"""

from .apply import (
    AdapterSummary,
    add_text_head,
    apply,
    keeps_base_encoder,
    merge_lora,
    set_train_mode,
    summarize,
    trainable_state,
)
from .config import (
    AdapterConfig,
    AutomaticConfig,
    ContextAdapterConfig,
    DepthAdapterConfig,
    LearnedTextConfig,
    LoraConfig,
    SpatialAdapterConfig,
)
from .io import load_adapted, load_adapter, read_adapter_info, save_adapter
from .targets import TARGETS, resolve_targets

__all__ = [
    "AdapterConfig", "AdapterSummary", "AutomaticConfig", "ContextAdapterConfig", "DepthAdapterConfig", "LearnedTextConfig", "LoraConfig",
    "SpatialAdapterConfig", "TARGETS",
    "add_text_head", "apply", "keeps_base_encoder", "load_adapted", "load_adapter", "merge_lora", "read_adapter_info", "resolve_targets",
    "save_adapter", "set_train_mode", "summarize", "trainable_state",
]
