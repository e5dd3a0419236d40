"""What an adapted model trains: one dataclass that YAML configs map onto.

Targets are data, not code: named groups (``encoder_attention``,
``encoder_mlp``, ``decoder_attention``) resolve to module-name patterns per
backbone family in :mod:`medadapt.adapters.targets`, and users may give their
own regular expressions instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import MedAdaptError

BASE_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass
class LoraConfig:
    """Low-rank adaptation (Hu et al., ICLR 2022) injected with peft."""

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["encoder_attention"])


@dataclass
class SpatialAdapterConfig:
    """Bottleneck adapters in the spirit of Med-SA (Wu et al., 2023) / SAM-Adapter (Chen et al., 2023).

    One adapter after the attention of each chosen encoder block (serial) and
    one beside its MLP (parallel, scaled). ``blocks`` indexes the encoder's
    transformer blocks in order (``None`` = all).
    """

    bottleneck: float = 0.25  # hidden width as a fraction of the block width (or an int width if > 1)
    depthwise_conv: bool = True  # 3x3 depthwise conv over the token grid inside the bottleneck
    scale: float = 0.5  # weight of the parallel (MLP) adapter
    blocks: list[int] | None = None
    positions: list[str] = field(default_factory=lambda: ["attention", "mlp"])


@dataclass
class AdapterConfig:
    """Which adapters are added and which base parts are trained outright."""

    lora: LoraConfig | None = None
    spatial: SpatialAdapterConfig | None = None
    train: list[str] = field(default_factory=lambda: ["mask_decoder"])

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = _build(LoraConfig, self.lora, "lora")
        if isinstance(self.spatial, dict):
            self.spatial = _build(SpatialAdapterConfig, self.spatial, "spatial")
        unknown = [p for p in self.train if p not in BASE_PARTS]
        if unknown:
            raise MedAdaptError(f"adapter 'train' names unknown parts {unknown}; choose from {list(BASE_PARTS)}")
        if self.lora is not None:
            if self.lora.rank < 1:
                raise MedAdaptError(f"lora.rank must be >= 1; got {self.lora.rank}")
            if not 0 <= self.lora.dropout < 1:
                raise MedAdaptError(f"lora.dropout must be in [0, 1); got {self.lora.dropout}")
            if not self.lora.targets:
                raise MedAdaptError("lora.targets is empty: name groups (encoder_attention, ...) or module patterns")
        if self.spatial is not None:
            bad = [p for p in self.spatial.positions if p not in ("attention", "mlp")]
            if bad or not self.spatial.positions:
                raise MedAdaptError(f"spatial.positions must be a non-empty subset of ['attention', 'mlp']; got {self.spatial.positions}")
            if self.spatial.bottleneck <= 0:
                raise MedAdaptError(f"spatial.bottleneck must be > 0; got {self.spatial.bottleneck}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        """Build from a plain dict (a YAML ``adapter:`` section), rejecting unknown keys."""
        return _build(cls, dict(data or {}), "adapter")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, data: dict[str, Any], where: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MedAdaptError(f"unknown key(s) {unknown} in {where} config; allowed: {sorted(names)}")
    return cls(**data)


__all__ = ["AdapterConfig", "LoraConfig", "SpatialAdapterConfig", "BASE_PARTS"]
