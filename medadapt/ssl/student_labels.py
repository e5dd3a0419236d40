"""Pseudo-labels from a trained student, for the next round of distillation, cached per case.

The student answers every slice of an unlabelled case (its neighbours as
context, averaged with the mirrored slice as :class:`~medadapt.student.Student`
does); a pixel's label is the most probable class (background included) and
its confidence that probability. Constant slices get confidence 0 and teach
nothing. Each case is written as one ``.npz`` in the layout of
:func:`~medadapt.ssl.foundation_labels.label_cases`, so
:func:`~medadapt.ssl.foundation_labels.load_pseudo_labels` reads both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.files import atomic_write
from ..student import Student


def student_label_stack(student: Student, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 N x H x W as class indices 0..K, confidence float32 in [0, 1]) of a grey stack."""
    label = np.zeros(images.shape, np.uint8)
    conf = np.zeros(images.shape, np.float32)
    probs = student.predict_planes(list(images))
    for k, (plane, p) in enumerate(zip(images, probs)):
        if not np.isfinite(plane).all() or plane.max() == plane.min():
            continue
        label[k] = p.argmax(0).astype(np.uint8)
        conf[k] = p.max(0)
    return label, conf


def relabel_cases(student: Student, sources: Sequence[str | os.PathLike], folder: str | os.PathLike) -> list[Path]:
    """Label the images of each pseudo-label file in ``sources`` with ``student`` into ``folder`` (same
    names); files already there are kept, so an interrupted relabelling resumes."""
    from .foundation_labels import load_pseudo_labels

    folder = Path(folder)
    out = []
    for src in map(Path, sources):
        path = folder / src.name
        if not path.is_file():
            images = load_pseudo_labels(src)["image"]
            label, conf = student_label_stack(student, images)
            conf8 = np.round(conf * 255).astype(np.uint8)
            atomic_write(path, lambda tmp: np.savez(tmp, image=images, label=label, confidence=conf8))
        out.append(path)
    return out


__all__ = ["relabel_cases", "student_label_stack"]
