"""Training samples for a depth adapter: each slice with its neighbours' cached embeddings.

A model with a depth adapter (``adapter.depth``, :mod:`medadapt.foundation.depth`)
decodes a slice of a volume from the embeddings of the slice and of its ``n``
neighbours on each side. To train it from a recipe, every training sample
names the cache keys of its neighbours (:attr:`ModelSample.neighbours`), and
the neighbours are encoded with the samples, including slices the
``data.slice_filter`` leaves out of training (a slice without the target
class is still the neighbour of one with it). An augmented view of a slice
applies one random transform to the slice and to each of its neighbours, so
the stack stays aligned. A slice missing at the end of a volume (or a blank
one, which the data loader drops) takes the nearest present slice towards the
centre, as at inference; a 2-D image stands in for its own neighbours.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..data import Slice2D
from ..foundation import Backbone
from .augment import random_view
from .samples import ModelSample, prepare


def link_neighbours(samples: Sequence[ModelSample], n: int) -> list[ModelSample]:
    """Samples whose neighbours are among ``samples`` themselves (every slice of their cases, as in
    validation): each gets the keys of slices ``index - n .. index + n`` of its case (None where absent)."""
    table = {(s.case_id, s.index): s.key for s in samples}
    out = []
    for s in samples:
        keys = tuple(s.key if d == 0 else (None if s.index is None else table.get((s.case_id, s.index + d)))
                     for d in range(-n, n + 1))
        out.append(replace(s, neighbours=keys))
    return out


def samples_with_neighbours(backbone: Backbone, slices: Sequence[Slice2D], context: Sequence[Slice2D], n: int,
                            views: int, seed: int) -> tuple[list[ModelSample], list[ModelSample]]:
    """(training samples, neighbour samples to encode) for a depth adapter reading ``n`` slices per side.

    The training samples are ``slices`` as they are, then ``views`` augmented copies of each (a random
    similarity transform and gamma, seeded; the same transform for the slice and its neighbours). Each names
    its neighbours' cache keys; the neighbours come from ``context``, every slice of the same cases.
    """
    table = {(s.case_id, s.index): s for s in context}
    rng = np.random.default_rng(seed + 7919)
    extra: dict[str, ModelSample] = {}
    out = []
    for v in range(views + 1):
        for s in slices:
            view_seed = None if v == 0 else int(rng.integers(2**63))

            def look(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                if view_seed is None:
                    return image, label
                return random_view(image, label, np.random.default_rng(view_seed))  # the same draws each time

            image, label = look(s.image, s.label)
            centre = prepare(backbone, [replace(s, image=image, label=label)])[0]
            keys: list[str | None] = []
            for d in range(-n, n + 1):
                other = None if d == 0 or s.index is None else table.get((s.case_id, s.index + d))
                if other is None:
                    keys.append(centre.key if d == 0 else None)
                    continue
                img, _ = look(other.image, np.zeros(np.shape(other.image)[:2], np.int64))
                sample = prepare(backbone, [replace(other, image=img, label=None)])[0]
                extra.setdefault(sample.key, sample)
                keys.append(sample.key)
            out.append(replace(centre, neighbours=tuple(keys)))
    return out, list(extra.values())


__all__ = ["link_neighbours", "samples_with_neighbours"]
