"""The ``ssl:`` section of a fine-tuning config: every weight and threshold of the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.config import Ranges, check_fields, check_ranges


@dataclass
class SSLConfig:
    """Weak-to-strong semi-supervised training on the config's ``data.unlabeled`` cases.

    Teacher: ``ema`` (mean teacher, an exponential moving average of the
    student) or ``student`` (FixMatch style: the student itself, without
    gradients, on the weak view). Pseudo-labels are the teacher's automatic
    prediction, refined by prompting the decoder with a box around each
    class's coarse mask (``refine``); pixels where the refined and coarse
    masks disagree, or whose confidence is under ``threshold``, do not count.

    With ``stream``, unlabelled cases are read ``stream_cases`` at a time
    (:class:`medadapt.data.CaseStream`) and their embeddings are cached on
    disk only, so the unlabelled set may be far larger than memory.
    """

    teacher: str = "ema"  # ema | student
    ema_decay: float = 0.99
    threshold: float = 0.9  # softmax confidence over [background, classes]
    adaptive_threshold: bool = False  # per class: threshold x (class mean confidence / best class's)
    refine: str | bool = "agree"  # (true / false: the earlier form of agree / none) re-prompt the decoder with boxes from the coarse pseudo-label: agree | replace | none
    refine_decoder: str = "teacher"  # which decoder answers the boxes: teacher | pretrained (frozen at the start)
    refine_iou: float = 0.5  # replace: a class's refined mask is used when its IoU with the coarse mask is this high
    refine_margin: float = 0.0  # each side of a refinement box moves out by this share of the box's width / height
    refine_box: str = "largest"  # the box is drawn around: largest (connected component of the class) | all (pixels)
    refine_iterations: int = 1  # >1: a new box around each answer, asked again (grows boxes around partial masks)
    min_component: int = 20  # pixels on the decoder grid; smaller class masks are dropped
    unlabeled_batch_size: int = 8
    weight: float = 1.0  # unsupervised loss weight after ramp-up (mixed strong view)
    feature_weight: float = 0.5  # weight of the feature-perturbation stream (UniMatch)
    start_epoch: float = 0.0  # supervised-only warm-up; the teacher starts as the warmed-up student
    warmup_ema_decay: float = 0.0  # during the warm-up the teacher tracks the student with this decay (0: copies it)
    rampup_epochs: float = 5.0  # sigmoid ramp-up of both weights, from start_epoch
    feature_dropout: float = 0.5  # channel dropout on the image embedding (feature stream)
    cutmix: float = 0.5  # probability of CutMix between two unlabelled images
    copy_paste: float = 0.5  # probability of bidirectional copy-paste with a labelled image (BCP)
    mix_area: tuple[float, float] = (0.25, 0.5)  # share of the image a pasted box covers
    intensity: float = 0.3  # strength of gamma / contrast / noise / blur when the encoder runs
    geometric: float = 0.0  # probability that a strong view is turned / flipped (its pseudo-label with it)
    geometric_views: int = 2  # cached embeddings: turned copies of each unlabelled slice encoded (1..7)
    stream: bool = False  # read unlabelled cases a few at a time (data larger than memory)
    stream_cases: int = 8  # cases held in memory at once when streaming

    def __post_init__(self) -> None:
        if self.refine is True or self.refine is False:  # the earlier boolean form
            self.refine = "agree" if self.refine else "none"
        check_fields(self, "ssl")
        self.mix_area = tuple(float(v) for v in self.mix_area)
        check_ranges(self, "ssl", RANGES)


def _probability(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _decay(v: float) -> bool:
    return 0.0 <= v < 1.0


#: What each key of ``ssl:`` allows beyond its type.
RANGES: Ranges = {
    "teacher": (lambda v: v in ("ema", "student"), "ema or student"),
    "ema_decay": (_decay, "a number in [0, 1)"),
    "warmup_ema_decay": (_decay, "a number in [0, 1)"),
    "threshold": (_decay, "a confidence in [0, 1)"),
    "refine": (lambda v: v in ("agree", "replace", "none"), "agree, replace or none"),
    "refine_decoder": (lambda v: v in ("teacher", "pretrained"), "teacher or pretrained"),
    "refine_box": (lambda v: v in ("largest", "all"), "largest or all"),
    "refine_margin": (lambda v: 0.0 <= v <= 0.5, "a share of the box per side in [0, 0.5]"),
    "refine_iterations": (lambda v: 1 <= v <= 10, "a whole number of decoder passes in 1..10"),
    "refine_iou": (lambda v: 0.0 < v <= 1.0, "an IoU in (0, 1]"),
    "min_component": (lambda v: v >= 0, "a number of pixels >= 0"),
    "unlabeled_batch_size": (lambda v: v >= 1, "a whole number >= 1"),
    "weight": (lambda v: v >= 0, "a loss weight >= 0"),
    "feature_weight": (lambda v: v >= 0, "a loss weight >= 0"),
    "start_epoch": (lambda v: v >= 0, "a number of epochs >= 0"),
    "rampup_epochs": (lambda v: v >= 0, "a number of epochs >= 0"),
    "feature_dropout": (_probability, "a probability in [0, 1]"),
    "cutmix": (_probability, "a probability in [0, 1]"),
    "copy_paste": (_probability, "a probability in [0, 1]"),
    "geometric": (_probability, "a probability in [0, 1]"),
    "mix_area": (lambda v: 0.0 < v[0] <= v[1] < 1.0 and all(math.isfinite(x) for x in v),
                 "[lo, hi] with 0 < lo <= hi < 1"),
    "intensity": (_probability, "a strength in [0, 1]"),
    "geometric_views": (lambda v: 1 <= v <= 7, "how many of the 7 turned / flipped copies of each unlabelled "
                        "slice are encoded, 1..7"),
    "stream_cases": (lambda v: v >= 1, "a whole number of cases >= 1"),
}


__all__ = ["SSLConfig"]
