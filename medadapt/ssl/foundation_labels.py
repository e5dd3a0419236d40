"""Pseudo-labels from the adapted foundation model, with a per-pixel confidence, cached per case.

Each slice of an unlabelled case is segmented in automatic mode (a model with
a depth adapter reads each slice of a volume with its neighbours), self-prompted
(each class's mask becomes a box the decoder answers) and, with ``tta``, also
mirrored left-right and mirrored back; the per-class probabilities of the
views are averaged. A pixel's label is the most probable class where some
class is more likely than not, else background; its confidence is that
probability (for background, one minus the best class's). No ground truth
is read.

Every case is written as one ``.npz`` (``image``, ``label``, ``confidence``)
as soon as it is done, so an interrupted run resumes at the next case.
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
from ..student import grey_stack


def _from_probabilities(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    best = probs.max(0)
    label = np.where(best > 0.5, probs.argmax(0) + 1, 0).astype(np.uint8)
    confidence = np.where(label > 0, best, 1.0 - best).astype(np.float32)
    return label, confidence


def label_slice(seg, image: np.ndarray, *, refine: bool = True, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(label uint8 H x W, confidence float32 H x W in [0.5, 1]) for one 2-D slice."""
    views = [False, True] if tta else [False]
    probs = None
    for mirror in views:
        seg.set_image(np.ascontiguousarray(image[:, ::-1]) if mirror else image)
        pred = seg.predict(refine=refine)
        p = seg.probabilities(pred)
        p = p[:, :, ::-1] if mirror else p
        probs = p if probs is None else probs + p
    if tta:
        return _from_probabilities(probs / len(views))
    # one view: the answer's own masks (decided on the logits; two classes whose probabilities round to one float
    # are told apart there), the confidence from its probabilities
    label = np.zeros(probs.shape[1:], np.uint8)
    for k, m in enumerate(np.asarray(pred.masks, bool)):
        label[m] = k + 1
    best = probs.max(0)
    return label, np.where(label > 0, best, 1.0 - best).astype(np.float32)


def label_volume(seg, images: np.ndarray, *, refine: bool = True, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_slice` for every non-constant plane of an N x H x W stack of display planes, each decoded
    with its neighbours (for a model with a depth adapter, as ``predict_volume`` decodes them); labels
    uint8 and confidences float32, N x H x W (0 on constant planes)."""
    label = np.zeros(images.shape, np.uint8)
    conf = np.zeros(images.shape, np.float32)
    usable = [bool(np.isfinite(p).all() and p.max() != p.min()) for p in images]
    probs: dict[int, np.ndarray] = {}
    views = [False, True] if tta else [False]
    for mirror in views:
        planes = images[:, :, ::-1] if mirror else images
        seg.set_planes(planes)
        try:
            for k in (k for k, ok in enumerate(usable) if ok):
                seg.show_plane(seg.volume, k)
                p = seg.probabilities(seg.predict(refine=refine))
                p = p[:, :, ::-1] if mirror else p
                probs[k] = p if k not in probs else probs[k] + p
        finally:
            seg.reset_volume()
    for k, p in probs.items():
        label[k], conf[k] = _from_probabilities(p / len(views))
    return label, conf


def _path(folder: Path, case: Case) -> Path:
    return folder / f"{case.case_id}.npz"


def load_pseudo_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A case written by :func:`label_cases`: ``image`` (N x H x W float32), ``label`` (uint8),
    ``confidence`` (float32 in [0, 1]; 0 on constant slices, which teach nothing)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"image": z["image"], "label": z["label"], "confidence": z["confidence"].astype(np.float32) / 255}
    except (OSError, KeyError, ValueError) as exc:
        raise MedAdaptError(f"cannot read pseudo-labels {path}: {exc}; delete it to label the case again") from exc


def label_cases(seg, cases: Sequence[Case], config: DataConfig, folder: str | os.PathLike, *,
                refine: bool = True, tta: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    """Label every slice of ``cases`` with ``seg`` into ``folder``; cases already there are kept."""
    folder = Path(folder)
    out = []
    todo = [c for c in cases if not _path(folder, c).is_file()]
    if len(todo) < len(cases):
        log(f"pseudo-labels: {len(cases) - len(todo)} of {len(cases)} cases already labelled in {folder}")
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="pseudo-labelling", unit="case", disable=not todo)
    for case in cases:
        path = _path(folder, case)
        if path.is_file():
            out.append(path)
            continue
        images, _ = load_volume_case(case, config, with_labels=False)
        if seg.backbone.depth_slices > 1 and images.shape[0] > 1:  # each plane with its neighbours
            label, c = label_volume(seg, images, refine=refine, tta=tta)
            conf = np.round(c * 255).astype(np.uint8)
        else:
            label = np.zeros(images.shape[:3], np.uint8)
            conf = np.zeros(images.shape[:3], np.uint8)
            for k, plane in enumerate(images):
                if not np.isfinite(plane).all() or plane.max() == plane.min():
                    continue
                lab, c = label_slice(seg, plane, refine=refine, tta=tta)
                label[k], conf[k] = lab, np.round(c * 255).astype(np.uint8)
        images = grey_stack(images)  # colour 2-D images: the student reads grey levels
        atomic_write(path, lambda tmp: np.savez(tmp, image=images, label=label, confidence=conf))
        out.append(path)
        bar.update()
    bar.close()
    seg.reset_image()
    return out


__all__ = ["label_cases", "label_slice", "label_volume", "load_pseudo_labels"]
