"""The specialist student: a MONAI network with its own pre- and post-processing.

:class:`Student` owns every step between an image (or a volume's slices) and
a label map: grey levels, robust intensity normalisation, resizing to the
network's square input, 2.5-D context channels, test-time augmentation
(``config.tta``: none, the mirrored slice, or all 8 flips and quarter
turns), and resizing the class probabilities back to the slice.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.dihedral import NUM_VIEWS, dihedral, undo_dihedral
from ..core.errors import MedAdaptError
from ..core.resample import resize_labels
from .config import TTA, StudentConfig


def build_network(config: StudentConfig, num_classes: int) -> nn.Module:
    """The MONAI network ``config`` names, with ``num_classes`` + 1 outputs (background first)."""
    out = num_classes + 1
    ch = list(config.channels)
    if config.network == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=2, in_channels=config.in_channels, out_channels=out, channels=ch,
                    strides=[2] * (len(ch) - 1), num_res_units=config.res_units, dropout=config.dropout)
    if config.network == "segresnet":
        from monai.networks.nets import SegResNet

        blocks = tuple([1] + [2] * (len(ch) - 2) + [4])[: len(ch)]
        groups = math.gcd(8, ch[0])  # group norm over at most 8 groups that divide the first width
        return SegResNet(spatial_dims=2, in_channels=config.in_channels, out_channels=out, init_filters=ch[0],
                         blocks_down=blocks, blocks_up=tuple([1] * (len(ch) - 1)), dropout_prob=config.dropout or None,
                         norm=("GROUP", {"num_groups": groups}))
    from monai.networks.nets import DynUNet

    n = len(ch)
    return DynUNet(spatial_dims=2, in_channels=config.in_channels, out_channels=out, kernel_size=[3] * n,
                   strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1), filters=ch,
                   dropout=config.dropout or None, res_block=config.res_units > 0)


def grey(image: np.ndarray) -> np.ndarray:
    """An H x W float32 slice: colour images are averaged over their channels."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    if a.ndim != 2:
        raise MedAdaptError(f"the student segments 2-D slices (H x W or H x W x 3); got shape {a.shape}")
    return a


def grey_stack(images: np.ndarray) -> np.ndarray:
    """A stack of slices (N x H x W, or N x H x W x 3 colour images) as N x H x W float32 grey levels."""
    a = np.asarray(images, dtype=np.float32)
    return a.mean(axis=-1) if a.ndim == 4 else a


def context_stack(planes: Sequence[np.ndarray], k: int, context: int) -> np.ndarray:
    """Slice ``k`` with ``context`` neighbours on each side (edges repeat): (2 context + 1) x H x W."""
    n = len(planes)
    return np.stack([grey(planes[min(max(k + d, 0), n - 1)]) for d in range(-context, context + 1)])


def normalise(stack: np.ndarray) -> np.ndarray:
    """Clip to the centre slice's 0.5-99.5 percentiles and scale to [0, 1] (the same for every channel)."""
    centre = stack[stack.shape[0] // 2]
    finite = centre[np.isfinite(centre)]
    if finite.size == 0:
        return np.zeros_like(stack, dtype=np.float32)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    out = (np.nan_to_num(stack, nan=lo) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def to_input(stack: np.ndarray, size: int) -> torch.Tensor:
    """A C x H x W stack -> the network's C x size x size input."""
    x = torch.from_numpy(normalise(stack))
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def to_target(label: np.ndarray, size: int) -> torch.Tensor:
    """An H x W label map -> size x size, on the grid :func:`to_input` puts the image on (each pixel the label
    covering most of it; see :mod:`medadapt.core.resample`)."""
    return resize_labels(torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)), (size, size))


class Student:
    """A trained student and the classes it answers (``class_names``, ``label_values``)."""

    def __init__(self, config: StudentConfig, class_names: Sequence[str], label_values: Sequence[int],
                 network: nn.Module | None = None, flip_tta: bool | None = None) -> None:
        self.config = config
        self.class_names = list(class_names)
        self.label_values = [int(v) for v in label_values]
        self.network = network if network is not None else build_network(config, len(self.class_names))
        self.batch_size = 8
        if flip_tta is not None:
            self.flip_tta = flip_tta

    @property
    def flip_tta(self) -> bool:
        """Whether the answer is averaged with the mirrored slice's (older name: ``tta`` says more)."""
        return self.tta != "none"

    @flip_tta.setter
    def flip_tta(self, value: bool) -> None:
        warnings.warn("Student.flip_tta is Student.tta now: 'flip' (True), 'none' (False) or 'dihedral'",
                      DeprecationWarning, stacklevel=2)
        self.tta = "flip" if value else "none"

    @property
    def tta(self) -> str:
        """Test-time augmentation: ``"none"``, ``"flip"`` (the answer averaged with that on the left-right
        mirrored slice) or ``"dihedral"`` (averaged over all 8 flips and quarter turns; 4x the work of flip)."""
        return self.config.tta

    @tta.setter
    def tta(self, value: str) -> None:
        if value not in TTA:
            raise MedAdaptError(f"student tta {value!r}: choose {' | '.join(TTA)}")
        self.config.tta = value

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of the batch ``x`` (square slices), averaged over the test-time views, each
        turned back."""
        ks = {"none": (0,), "flip": (0, 4), "dihedral": range(NUM_VIEWS)}[self.tta]
        total = sum(undo_dihedral(self.network(dihedral(x, k)).float().softmax(1), k) for k in ks)
        return total / len(ks)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device) -> "Student":
        self.network.to(device)
        return self

    @torch.inference_mode()
    def probabilities(self, stacks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(K + 1) x H x W class probabilities (background first) of each C x H x W stack, at its own size."""
        self.network.eval()
        out: list[np.ndarray] = []
        size = self.config.size
        for s in range(0, len(stacks), self.batch_size):
            chunk = stacks[s : s + self.batch_size]
            x = torch.stack([to_input(st, size) for st in chunk]).to(self.device)
            p = self._views(x)
            for st, pi in zip(chunk, p):
                full = F.interpolate(pi[None], size=st.shape[-2:], mode="bilinear", align_corners=False)[0]
                out.append(full.cpu().numpy())
        return out

    def predict_planes(self, planes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probabilities for every plane of a volume (neighbours as context), or for one 2-D image."""
        c = self.config.context
        return self.probabilities([context_stack(planes, k, c) for k in range(len(planes))])

    def metadata(self) -> dict:
        return {"config": self.config.to_dict(), "class_names": self.class_names, "label_values": self.label_values}


__all__ = ["Student", "build_network", "context_stack", "grey", "grey_stack", "normalise", "to_input", "to_target"]
