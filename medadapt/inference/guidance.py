"""Where the model is least sure: guidance for the next click.

Two signals, both from the model's own answers (no ground truth):

* the margin of one answer: a pixel whose probability is near 0.5 is one the
  decoder could tip either way (``1 - |2p - 1|``);
* disagreement between two answers for the same object: the automatic
  proposal of the learned class (the specialist's view) against the answer
  to the user's prompts, or an answer against the one before the last
  prompt (``|p_a - p_b|``).

:func:`uncertainty_map` takes the larger of the two at each pixel;
:func:`guidance` turns it into the region to look at and a point in it:
the most interior pixel of the largest connected region above a threshold,
weighted by how unsure the model is there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.errors import MedAdaptError
from ..prompts.simulate import most_interior

THRESHOLD = 0.5  # uncertainty above which a pixel is shown as unsure


def _probability(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float32), -30, 30)))


def uncertainty_map(logits: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """H x W uncertainty in [0, 1] from an answer's logits (and another answer's, for disagreement)."""
    p = _probability(logits)
    if p.ndim != 2:
        raise MedAdaptError(f"logits must be an H x W array; got shape {p.shape}")
    out = 1.0 - np.abs(2.0 * p - 1.0)
    if reference is not None:
        q = _probability(reference)
        if q.shape != p.shape:
            raise MedAdaptError(f"the reference logits have shape {q.shape}, the answer's {p.shape}: they must match")
        out = np.maximum(out, np.abs(p - q))
    return out.astype(np.float32)


@dataclass
class Guidance:
    """The region to look at (H x W bool), a point in it (``(x, y)``) and the mean uncertainty there."""

    region: np.ndarray
    point: np.ndarray
    uncertainty: float


def guidance(uncertainty: np.ndarray, threshold: float = THRESHOLD) -> Guidance | None:
    """The unsure region that matters most: the connected region above ``threshold`` with the largest summed
    uncertainty, and its most interior pixel. None when no pixel reaches ``threshold``."""
    u = np.asarray(uncertainty, np.float32)
    if u.ndim != 2:
        raise MedAdaptError(f"uncertainty must be an H x W array; got shape {u.shape}")
    if not 0 < threshold < 1:
        raise MedAdaptError(f"threshold must be in (0, 1); got {threshold}")
    components, n = ndimage.label(u >= threshold)
    if n == 0:
        return None
    mass = ndimage.sum_labels(u, components, index=np.arange(1, n + 1))
    k = 1 + int(np.argmax(mass))
    region = components == k
    return Guidance(region, most_interior(region), float(u[region].mean()))


__all__ = ["Guidance", "THRESHOLD", "guidance", "uncertainty_map"]
