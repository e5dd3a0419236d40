"""Automatic answers from a run's specialist student (``RUN/student/``, see :mod:`medadapt.student`).

A run distilled with ``medadapt distill`` holds a student network trained on
the foundation model's pseudo-labels. :class:`~medadapt.inference.Segmenter`
answers prompt-free predictions with it, and keeps answering box, point, mask
and text prompts with the promptable decoder. On a volume the student reads
each slice with its neighbours (2.5-D students) and needs no image encoding.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..io.imaging import display_orientation, volume_slice
from ..prompts.regions import largest_component, mask_box
from ..student import Student, context_stack
from .prediction import Prediction


def check_student_classes(student: Student, class_names: Sequence[str], label_values: Sequence[int]) -> None:
    """A student answers for its run's adapter: refuse one trained for other classes."""
    if list(student.class_names) != list(class_names) or list(student.label_values) != list(label_values):
        raise MedAdaptError(
            f"the student answers classes {student.class_names} (values {student.label_values}) but the adapter "
            f"learned {list(class_names)} (values {list(label_values)}); load the student of the same run"
        )


def _scores(probs: np.ndarray, idx: Sequence[int], masks: np.ndarray) -> np.ndarray:
    """Each mask's mean probability of its class inside it (0 for an empty mask)."""
    return np.array([float(probs[i + 1][m].mean()) if m.any() else 0.0 for i, m in zip(idx, masks)], np.float32)


def _prediction(student: Student, probs: np.ndarray, idx: Sequence[int], low_res) -> Prediction:
    """Masks that do not overlap (each pixel to its most probable class), scores = mean probability inside."""
    winner = probs.argmax(0)
    masks = np.stack([winner == i + 1 for i in idx])
    scores = _scores(probs, idx, masks)
    return Prediction(masks=masks, scores=scores, logits=low_res(masks),
                      labels=[student.class_names[i] for i in idx], label_values=[student.label_values[i] for i in idx])


def student_prediction(seg, image: np.ndarray, idx: Sequence[int], refine: bool,
                       probs: np.ndarray | None = None) -> Prediction:
    """The student's answer for ``seg``'s current image (classes ``idx``), self-prompted if ``refine``.
    ``probs``: the student's (K + 1) x H x W probabilities for the image when already computed (e.g. with the
    image's neighbours in a volume); by default it reads the image alone."""
    student: Student = seg.student
    meta = seg._require_meta()
    if probs is None:
        probs = _probabilities(student, image, getattr(seg, "_plane_source", None))
    pred = _prediction(student, probs, idx, lambda m: seg.backbone.processor.mask_to_low_res(m, meta)[:, 0].numpy())
    return refine_student(seg, pred, probs, idx) if refine else pred


class Planes:
    """The display planes of a volume session, read as a sequence (only the neighbours asked for)."""

    def __init__(self, session) -> None:
        self.session = session

    def __len__(self) -> int:
        return len(self.session)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.session.plane(k)


def _probabilities(student: Student, image: np.ndarray, source) -> np.ndarray:
    """The student's probabilities for one image: a plane of a volume (``source``: its session and index, from
    ``show_plane``) with its real neighbours; a lone image as its own neighbours, with a warning where the
    student reads neighbours (a 2.5-D student)."""
    c = student.config.context
    if c and source is not None and hasattr(source[0], "__len__") and len(source[0]) > 1:
        return student.probabilities([context_stack(Planes(source[0]), source[1], c)])[0]
    if c:
        warnings.warn(f"this student reads {c} neighbouring slice(s) on each side; a lone image stands in for its "
                      "own neighbours here: predict_volume, or show_plane on a volume, gives it the real ones",
                      stacklevel=4)
    return student.predict_planes([image])[0]


def refine_student(seg, pred: Prediction, probs: np.ndarray, idx: Sequence[int], min_iou: float = 0.5) -> Prediction:
    """Self-prompting for a student's masks: the decoder answers a box around each class's largest
    component, and its answer replaces the mask where the two agree (IoU >= ``min_iou``)."""
    present = [j for j in range(len(idx)) if pred.masks[j].any()]
    if not present:
        return pred
    parts = [largest_component(pred.masks[j]) for j in present]
    answer = seg.predict(boxes=np.stack([mask_box(p, 0.0) for p in parts]))
    masks = pred.masks.copy()
    for a, (j, part) in enumerate(zip(present, parts)):
        union = np.logical_or(answer.masks[a], part).sum()
        if union and np.logical_and(answer.masks[a], part).sum() / union >= min_iou:
            masks[j] = answer.masks[a]
    # a pixel two classes claim goes to the one the student finds more probable
    claim = np.where(masks, probs[[i + 1 for i in idx]], -1.0)
    best = claim.argmax(0)
    masks = np.stack([(best == j) & masks[j] for j in range(len(idx))])
    scores = _scores(probs, idx, masks)
    meta = seg._require_meta()
    return Prediction(masks=masks, scores=scores, logits=seg.backbone.processor.mask_to_low_res(masks, meta)[:, 0].numpy(),
                      labels=list(pred.labels), label_values=list(pred.label_values))


def student_volume(seg, volume: np.ndarray, axis: int, idx: Sequence[int], dtype, planes=None) -> np.ndarray:
    """A label map of ``volume`` from the student alone: each plane with its neighbours, a few at a time.
    Each pixel goes to the student's most probable class, as in 2-D, and is kept where that is one of ``idx``
    (a class left out takes its pixels to the background, not to a neighbour); constant planes (padding)
    stay background. ``planes``: the planes as the model sees them (a volume session's, with its per-plane
    intensity clip), by default ``volume``'s own."""
    student: Student = seg.student
    if planes is None:
        planes = [volume_slice(volume, k, axis) for k in range(volume.shape[axis])]
    todo = [k for k in range(len(planes)) if np.isfinite(planes[k]).all() and planes[k].max() != planes[k].min()]
    values = np.zeros(len(student.class_names) + 1, dtype=dtype)  # the value each winning row writes
    values[[i + 1 for i in idx]] = [student.label_values[i] for i in idx]
    out = np.zeros(volume.shape, dtype=dtype)
    for s in range(0, len(todo), student.batch_size):
        ks = todo[s : s + student.batch_size]
        stacks = [context_stack(planes, k, student.config.context) for k in ks]
        for k, probs in zip(ks, student.probabilities(stacks)):
            index = [slice(None)] * 3
            index[axis] = k
            out[tuple(index)] = display_orientation(values[probs.argmax(0)])
    return out


__all__ = ["Planes", "check_student_classes", "refine_student", "student_prediction", "student_volume"]
