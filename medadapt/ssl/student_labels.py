"""Pseudo-labels from a trained student, for the next round of distillation, cached per case.

The student answers every slice of an unlabelled case (its neighbours as
context, averaged with the mirrored slice as :class:`~medadapt.student.Student`
does); a pixel's label is the most probable class (background included) and
its confidence that probability. Constant slices get confidence 0 and teach
nothing. With ``relabel: refined`` the student's masks are self-prompted
through the run's decoder first (:func:`refined_label_stack`). Each case is
written as one ``.npz`` in the layout of
:func:`~medadapt.ssl.foundation_labels.label_cases`, so
:func:`~medadapt.ssl.foundation_labels.load_pseudo_labels` reads both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..core.files import atomic_write
from ..data import DataConfig, load_volume_case
from ..data.cases import Case
from ..inference import Segmenter
from ..inference.student_answers import student_prediction
from ..student import Student
from .foundation_labels import load_pseudo_labels


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


def refined_label_stack(seg: Segmenter, images: np.ndarray, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The student of ``seg`` (a :class:`~medadapt.inference.Segmenter` with a student set) self-prompted through
    its decoder, for a case's display planes ``images`` (``grey``: the same planes as the student reads them).

    The student answers each plane with its neighbours, as :func:`student_label_stack` does; its masks are then
    refined as ``predict(refine=True)`` refines them (the decoder's answer to a box around each class's largest
    component replaces the student's mask where the two agree). A pixel's label is the refined answer. Its
    confidence is the student's probability where that keeps the student's own label, and 1 where the decoder's
    answer changed it. Constant planes teach nothing."""
    student = seg.student
    probs = student.predict_planes(list(grey))
    label = np.zeros(grey.shape, np.uint8)
    conf = np.zeros(grey.shape, np.float32)
    idx = list(range(len(student.class_names)))
    depth = seg.backbone.depth_slices > 1 and images.shape[0] > 1  # each plane with its neighbours
    if depth:
        seg.set_planes(images)
    try:
        for k, (plane, p) in enumerate(zip(grey, probs)):
            if not np.isfinite(plane).all() or plane.max() == plane.min():
                continue
            if depth:
                seg.show_plane(seg.volume, k)
            else:
                seg.set_image(images[k])
            answer = student_prediction(seg, images[k], idx, refine=True, probs=p)
            for mask, value in zip(answer.masks, answer.label_values):
                label[k][np.asarray(mask, bool)] = student.label_values.index(value) + 1
            own = p.argmax(0)
            conf[k] = np.where(label[k] == own, p.max(0), 1.0)
    finally:
        if depth:
            seg.reset_volume()
    return label, conf


def relabel_cases(student: Student, sources: Sequence[str | os.PathLike], folder: str | os.PathLike, *,
                  refiner: Callable[[], Segmenter] | None = None, cases: Sequence[Case] = (),
                  data: DataConfig | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Label the images of each pseudo-label file in ``sources`` with ``student`` into ``folder`` (same
    names); files already there are kept, so an interrupted relabelling resumes. With ``refiner`` (a
    function returning the run's Segmenter with ``student`` set on it, called only when a file is missing),
    the student's masks are refined by the decoder (:func:`refined_label_stack`); the decoder reads each
    case of ``cases`` (the file ``CASE_ID.npz``) as ``data`` loads it."""
    by_id = {c.case_id: c for c in cases}
    if refiner is not None and (data is None or any(Path(src).stem not in by_id for src in sources)):
        raise MedAdaptError("relabelling through the decoder needs the data config and the case of every "
                            "pseudo-label file (named CASE_ID.npz)")
    folder = Path(folder)
    out = []
    todo = sum(not (folder / Path(src).name).is_file() for src in sources)
    seg = refiner() if refiner is not None and todo else None
    if seg is not None:
        log(f"relabelling {todo} cases: the student's masks self-prompted through the decoder")
    for src in map(Path, sources):
        path = folder / src.name
        if not path.is_file():
            images = load_pseudo_labels(src)["image"]
            if seg is None:
                label, conf = student_label_stack(student, images)
            else:
                planes, _ = load_volume_case(by_id[src.stem], data, with_labels=False)
                if planes.shape[:3] != images.shape:
                    raise MedAdaptError(
                        f"case {src.stem} loads as {planes.shape[:3]} planes but {src} holds {images.shape}: the "
                        f"data changed since it was pseudo-labelled; delete {src.parent} to label it again")
                label, conf = refined_label_stack(seg, planes, images)
            conf8 = np.round(conf * 255).astype(np.uint8)
            atomic_write(path, lambda tmp: np.savez(tmp, image=images, label=label, confidence=conf8))
        out.append(path)
    if seg is not None:
        seg.reset_image()
    return out


__all__ = ["refined_label_stack", "relabel_cases", "student_label_stack"]
