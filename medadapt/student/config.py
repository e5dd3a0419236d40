"""The ``distill.student:`` section: which MONAI network the specialist student is, and what it sees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..core.config import Ranges, check_fields, check_ranges
from ..core.errors import MedAdaptError

NETWORKS = ("unet", "segresnet", "dynunet")
TTA = ("none", "flip", "dihedral")


@dataclass
class StudentConfig:
    """A 2-D (or 2.5-D) segmentation network built from MONAI parts.

    ``network``: ``unet`` (MONAI ``UNet`` with residual units), ``segresnet``
    or ``dynunet``. ``channels`` are the feature widths from the top of the
    network to its bottom (UNet and DynUNet; SegResNet uses the first as its
    ``init_filters``). ``size``: slices are resized to ``size x size`` (a
    multiple of 16). ``context``: neighbouring slices on each side given as
    extra input channels (2.5-D; 0 is 2-D), read from the volume along
    ``data.axis``; a 2-D image repeats itself. ``res_units``: residual units
    per UNet level. ``tta``: how the student answers: ``flip`` (the default)
    averages its answer with that on the left-right mirrored slice;
    ``dihedral`` averages all 8 flips and quarter turns (the views it trained
    on; 4x the work); ``none`` reads the slice once.
    """

    network: str = "unet"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    res_units: int = 2
    size: int = 256
    context: int = 0
    dropout: float = 0.0
    tta: str = "flip"

    def __post_init__(self) -> None:
        check_fields(self, "distill.student")
        self.channels = [int(c) for c in self.channels]
        check_ranges(self, "distill.student", RANGES)
        levels = 2 ** (len(self.channels) - 1)  # each level below the first halves the slice
        if self.size % levels:
            raise MedAdaptError(
                f"distill.student.size {self.size} does not halve evenly through {len(self.channels)} levels "
                f"(channels {self.channels}): use a multiple of {levels}, e.g. {max(levels, self.size // levels * levels)}")

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict:
        return asdict(self)


RANGES: Ranges = {
    "network": (lambda v: v in NETWORKS, " | ".join(NETWORKS)),
    "channels": (lambda v: 2 <= len(v) <= 7 and all(1 <= c <= 1024 for c in v),
                 "2 to 7 feature widths, each 1..1024, e.g. [16, 32, 64, 128, 256]"),
    "res_units": (lambda v: 0 <= v <= 4, "a whole number in 0..4"),
    "size": (lambda v: 32 <= v <= 2048 and v % 16 == 0, "a multiple of 16 in 32..2048"),
    "context": (lambda v: 0 <= v <= 4, "neighbouring slices per side, 0..4"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "a probability in [0, 1)"),
    "tta": (lambda v: v in TTA, " | ".join(TTA)),
}

__all__ = ["NETWORKS", "TTA", "StudentConfig"]
