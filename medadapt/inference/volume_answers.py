"""The automatic label map ``Segmenter.predict_volume`` answers without prompts (prompts go to
:class:`~medadapt.inference.propagation.Propagation`).

Kept apart from :mod:`.predictor` so that the 2-D predictor stays one concept;
the :class:`~medadapt.inference.volume.VolumeSession` holds the planes and
their embeddings, :class:`~medadapt.inference.propagation.Propagation` one
object's prompts and answers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..student import context_stack
from .prediction import label_dtype, paint_labels
from .student_answers import Planes, student_prediction, student_volume
from .volume import VolumeSession


def automatic_volume(seg, session: VolumeSession, classes: Sequence[str | int] | None, refine: bool) -> np.ndarray:
    """The integer label map of the session's volume in automatic mode, slice by slice.

    Holds the training data's label values (0 = background); constant slices
    (padding) stay background. A student, when the segmenter has one and
    ``refine`` is off, reads the slices with their neighbours and nothing is
    encoded; with ``refine`` its masks (read the same way) are self-prompted
    through the decoder slice by slice. Otherwise each slice is decoded from
    its cached embedding.
    """
    seg._require_classes()
    values = seg.backbone.adapter_config.automatic.label_values
    dtype = label_dtype(values)
    if seg.student is not None and not refine:
        return student_volume(seg, session.data, session.axis, seg._class_indices(classes), dtype,
                              planes=Planes(session))  # as the session gives them (its intensity clip)
    out = np.zeros(session.data.shape, dtype=dtype)
    student = seg.student  # refining a student's masks: it reads each plane with its neighbours, as above
    planes = [session.plane(k) for k in range(len(session))] if student is not None else []
    for k in range(len(session)):
        if session.is_blank(k):
            continue
        seg.show_plane(session, k)
        if student is not None:
            probs = student.probabilities([context_stack(planes, k, student.config.context)])[0]
            pred = student_prediction(seg, planes[k], seg._class_indices(classes), True, probs=probs)
        else:
            pred = seg.predict(classes=classes, refine=refine)
        session.write_plane(out, k, paint_labels(pred.masks, pred.label_values, dtype))
    seg.reset_image()
    return out


__all__ = ["automatic_volume"]
