"""What an adapted model trains: one dataclass that YAML configs map onto.

Targets are data, not code: named groups (``encoder_attention``,
``encoder_mlp``, ``decoder_attention``) resolve to module-name patterns per
backbone family in :mod:`medadapt.adapters.targets`, and users may give their
own regular expressions instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.config import Ranges, build_dataclass, check_fields, check_phrase_map, check_ranges, check_templates
from ..core.errors import MedAdaptError

BASE_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass
class LoraConfig:
    """Low-rank adaptation (Hu et al., ICLR 2022) injected with peft."""

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["encoder_attention"])

    def __post_init__(self) -> None:
        _check(self, "adapter.lora", {
            "rank": (lambda v: v >= 1, "a whole number >= 1"),
            "alpha": (lambda v: v > 0, "a number > 0"),
            "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
            "targets": (_names, "a non-empty list of group names (encoder_attention, ...) or module patterns"),
        })


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

    def __post_init__(self) -> None:
        _check(self, "adapter.spatial", {
            "bottleneck": (lambda v: 0 < v <= 1 or float(v).is_integer(),
                           "a share of the block width in (0, 1], or a whole width > 1"),
            "scale": (lambda v: v >= 0, "a number >= 0"),
            "blocks": (lambda v: v is None or (len(v) > 0 and all(b >= 0 for b in v) and len(set(v)) == len(v)),
                       "a non-empty list of distinct block indices >= 0, or null for all"),
            "positions": (lambda v: len(v) > 0 and set(v) <= {"attention", "mlp"},
                          "a non-empty subset of [attention, mlp]"),
        })


@dataclass
class ContextAdapterConfig:
    """A residual dilated-convolution adapter on the image embedding (see :mod:`medadapt.foundation.context`).

    It trains on cached embeddings, so it adds spatial capacity without
    running the encoder per step (CPU-friendly).
    """

    hidden: int = 64  # bottleneck channels
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])

    def __post_init__(self) -> None:
        _check(self, "adapter.context", {
            "hidden": (lambda v: v >= 1, "a whole number of channels >= 1"),
            "dilations": (lambda v: len(v) > 0 and all(d >= 1 for d in v), "a non-empty list of whole numbers >= 1"),
        })


@dataclass
class DepthAdapterConfig:
    """Mixes each slice's cached embedding with its ``neighbours`` on each side (see
    :mod:`medadapt.foundation.depth`); volumes give the neighbours, a 2-D image stands in for its own."""

    hidden: int = 64  # bottleneck channels
    neighbours: int = 1  # slices on each side

    def __post_init__(self) -> None:
        _check(self, "adapter.depth", {
            "hidden": (lambda v: v >= 1, "a whole number of channels >= 1"),
            "neighbours": (lambda v: 1 <= v <= 4, "a whole number of slices on each side, 1 to 4"),
        })


@dataclass
class AutomaticConfig:
    """Learned per-class prompt tokens for prompt-free segmentation.

    ``class_names`` / ``label_values`` name the target classes and their values
    in the training labels, so predictions come back with the user's labels.
    """

    class_names: list[str] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)
    tokens_per_class: int = 2

    def __post_init__(self) -> None:
        _check(self, "adapter.automatic", {
            "class_names": (_names, "a non-empty list of class names"),
            "label_values": (lambda v: len(v) > 0 and all(x >= 1 for x in v), "a non-empty list of label values >= 1"),
            "tokens_per_class": (lambda v: v >= 1, "a whole number >= 1"),
        })


@dataclass
class LearnedTextConfig:
    """Learned text prompts (see :mod:`medadapt.prompts.text.learned`): texts select learned classes.

    ``aliases`` adds names per class to the training phrases (e.g. the
    abbreviations the data's own documentation uses); ``templates`` put every
    name in context; a text less similar than ``min_similarity`` (cosine, in
    the encoder's space) to every training phrase is refused. ``embed_dim`` is
    filled in from the encoder when the head is trained.
    """

    encoder: str = "all-MiniLM-L6-v2"
    aliases: dict[str, list[str]] = field(default_factory=dict)
    templates: list[str] = field(default_factory=lambda: ["{}", "the {}", "{} in a medical image", "segment the {}"])
    min_similarity: float = 0.55
    steps: int = 300
    embed_dim: int = 0

    def __post_init__(self) -> None:
        self.templates = list(check_templates(self.templates, "text.templates"))
        self.aliases = check_phrase_map(self.aliases, "text.aliases", "{'left ventricle': ['LV']}")
        _check(self, "text", {
            "encoder": (lambda v: bool(v.strip()), "the name of a sentence encoder, e.g. all-MiniLM-L6-v2"),
            "min_similarity": (lambda v: -1.0 <= v < 1.0, "a cosine similarity in [-1, 1)"),
            "steps": (lambda v: v >= 1, "a whole number >= 1"),
            "embed_dim": (lambda v: v >= 0, "a whole number >= 0 (filled in when the head is trained)"),
        })


@dataclass
class AdapterConfig:
    """Which adapters are added and which base parts are trained outright."""

    lora: LoraConfig | None = None
    spatial: SpatialAdapterConfig | None = None
    context: ContextAdapterConfig | None = None
    depth: DepthAdapterConfig | None = None
    train: list[str] = field(default_factory=lambda: ["mask_decoder"])
    automatic: AutomaticConfig | None = None
    text: LearnedTextConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = build_dataclass(LoraConfig, self.lora, "adapter.lora")
        if isinstance(self.spatial, dict):
            self.spatial = build_dataclass(SpatialAdapterConfig, self.spatial, "adapter.spatial")
        if isinstance(self.context, dict):
            self.context = build_dataclass(ContextAdapterConfig, self.context, "adapter.context")
        if isinstance(self.depth, dict):
            self.depth = build_dataclass(DepthAdapterConfig, self.depth, "adapter.depth")
        if isinstance(self.automatic, dict):
            self.automatic = build_dataclass(AutomaticConfig, self.automatic, "adapter.automatic")
        if isinstance(self.text, dict):
            self.text = build_dataclass(LearnedTextConfig, self.text, "adapter.text")
        if self.text is not None and self.automatic is None:
            raise MedAdaptError("learned text prompts (text:) select learned classes; they need automatic mode")
        if self.automatic is not None:
            a = self.automatic
            if len(a.class_names) != len(a.label_values):
                raise MedAdaptError(
                    f"adapter.automatic.class_names ({a.class_names}) and label_values ({a.label_values}) "
                    "must be of equal length"
                )
        check_fields(self, "adapter")
        unknown = [p for p in self.train if p not in BASE_PARTS]
        if unknown:
            raise MedAdaptError(f"adapter 'train' names unknown parts {unknown}; choose from {list(BASE_PARTS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        """Build from a plain dict (a YAML ``adapter:`` section), rejecting unknown keys."""
        return build_dataclass(cls, dict(data or {}), "adapter")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _names(value: list[str]) -> bool:
    return len(value) > 0 and all(v.strip() for v in value)


def _check(section: Any, where: str, ranges: Ranges) -> None:
    """Types from the annotations, then the ranges, of one adapter section (built in Python or from YAML)."""
    check_fields(section, where)
    check_ranges(section, where, ranges)


__all__ = ["AdapterConfig", "AutomaticConfig", "ContextAdapterConfig", "LearnedTextConfig", "LoraConfig", "SpatialAdapterConfig", "BASE_PARTS"]
