"""Training samples for a depth adapter: each slice with its neighbours' cached embeddings.

A model with a depth adapter (``adapter.depth``, :mod:`medadapt.foundation.depth`)
decodes a slice of a volume from the embeddings of the slice and of its ``n``
neighbours on each side. To train it from a recipe, every training and
validation sample names the cache keys of its neighbours
(:attr:`ModelSample.neighbours`), and the neighbours are encoded with the
samples: every plane of the case, including slices that ``data.slice_filter``
leaves out of training and constant ones, which inference encodes too. An
augmented view of a slice applies one random transform to the slice and to
each of its neighbours, so the stack stays aligned; the slice's own views are
the ones a model without a depth adapter trains on (the same draws), so the
two can be compared. Past the ends of a volume the nearest slice repeats, as
at inference; a 2-D image stands in for its own neighbours.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..data import DataConfig, Slice2D, load_volume_case
from ..data.cases import Case
from ..foundation import Backbone
from .augment import random_view
from .samples import ModelSample, prepare


def case_planes(cases: Sequence[Case], config: DataConfig) -> list[Slice2D]:
    """Every plane of each volume among ``cases`` (as :func:`load_volume_case` reads it), unlabelled: the
    neighbours a depth adapter reads. A 2-D case has none."""
    out = []
    for case in cases:
        images, _ = load_volume_case(case, config, with_labels=False)
        if images.shape[0] < 2:
            continue
        out += [Slice2D(np.asarray(images[k], np.float32), None, case.case_id, case.patient_id, k,
                        str(case.image_path)) for k in range(images.shape[0])]
    return out


def link_neighbours(samples: Sequence[ModelSample], planes: Sequence[ModelSample], n: int) -> list[ModelSample]:
    """``samples`` with the keys of their case's planes ``index - n .. index + n`` (None past the ends)."""
    table = {(p.case_id, p.index): p.key for p in planes}
    return [replace(s, neighbours=tuple(
        s.key if d == 0 else (None if s.index is None else table.get((s.case_id, s.index + d)))
        for d in range(-n, n + 1))) for s in samples]


def samples_with_neighbours(backbone: Backbone, slices: Sequence[Slice2D], planes: Sequence[Slice2D], n: int,
                            views: int, seed: int) -> tuple[list[ModelSample], list[ModelSample]]:
    """(training samples, neighbour samples to encode) for a depth adapter reading ``n`` slices per side.

    The training samples are ``slices`` as they are, then ``views`` augmented copies of each, drawn as a model
    without a depth adapter draws them (the trainer's ``cache_views``); each neighbour of a view goes through
    the same transform. Each sample names its neighbours' cache keys; the neighbours come from ``planes``
    (:func:`case_planes` of the same cases).
    """
    table = {(p.case_id, p.index): p for p in planes}
    plain = prepare(backbone, planes)
    extra: dict[str, ModelSample] = {p.key: p for p in plain}
    out = link_neighbours(prepare(backbone, slices), plain, n)
    rng = np.random.default_rng(seed + 7919)
    for _ in range(views):
        for s in slices:
            state = rng.bit_generator.state  # the neighbours replay the centre's draws
            image, label = random_view(s.image, s.label, rng)
            centre = prepare(backbone, [replace(s, image=image, label=label)])[0]
            keys: list[str | None] = []
            for d in range(-n, n + 1):
                other = None if d == 0 or s.index is None else table.get((s.case_id, s.index + d))
                if other is None:
                    keys.append(centre.key if d == 0 else None)
                    continue
                same = np.random.default_rng()
                same.bit_generator.state = state
                img, _ = random_view(other.image, np.zeros(np.shape(other.image)[:2], np.int64), same)
                sample = prepare(backbone, [replace(other, image=img)])[0]
                extra.setdefault(sample.key, sample)
                keys.append(sample.key)
            out.append(replace(centre, neighbours=tuple(keys)))
    return out, list(extra.values())


__all__ = ["case_planes", "link_neighbours", "samples_with_neighbours"]
