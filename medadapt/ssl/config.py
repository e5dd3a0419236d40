"""The ``ssl:`` section of a fine-tuning config: every weight and threshold of the loop."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import MedAdaptError


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
        if self.teacher not in ("ema", "student"):
            raise MedAdaptError(f"ssl.teacher must be 'ema' or 'student'; got {self.teacher!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise MedAdaptError(f"ssl.ema_decay must be in [0, 1); got {self.ema_decay}")
        if not 0.0 <= self.warmup_ema_decay < 1.0:
            raise MedAdaptError(f"ssl.warmup_ema_decay must be in [0, 1); got {self.warmup_ema_decay}")
        if not 0.0 <= self.threshold < 1.0:
            raise MedAdaptError(f"ssl.threshold must be in [0, 1); got {self.threshold}")
        for key in ("cutmix", "copy_paste", "feature_dropout", "geometric"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise MedAdaptError(f"ssl.{key} is a probability in [0, 1]; got {v}")
        lo, hi = self.mix_area = tuple(float(v) for v in self.mix_area)
        if not 0.0 < lo <= hi < 1.0:
            raise MedAdaptError(f"ssl.mix_area must be [lo, hi] with 0 < lo <= hi < 1; got {self.mix_area}")
        if self.refine is True or self.refine is False:  # the earlier boolean form
            self.refine = "agree" if self.refine else "none"
        if self.refine not in ("agree", "replace", "none"):
            raise MedAdaptError(f"ssl.refine must be agree, replace or none; got {self.refine!r}")
        if self.refine_decoder not in ("teacher", "pretrained"):
            raise MedAdaptError(f"ssl.refine_decoder must be teacher or pretrained; got {self.refine_decoder!r}")
        if self.refine_box not in ("largest", "all"):
            raise MedAdaptError(f"ssl.refine_box must be largest or all; got {self.refine_box!r}")
        if not 0.0 <= self.refine_margin <= 0.5:
            raise MedAdaptError(f"ssl.refine_margin is a share of the box per side in [0, 0.5]; got {self.refine_margin}")
        _check_whole(self.refine_iterations, 1, 10, "ssl.refine_iterations is a whole number of decoder passes in 1..10")
        if not 0.0 < self.refine_iou <= 1.0:
            raise MedAdaptError(f"ssl.refine_iou must be in (0, 1]; got {self.refine_iou}")
        _check_whole(self.geometric_views, 1, 7, "ssl.geometric_views is how many of the 7 turned / flipped copies "
                     "of each unlabelled slice are encoded, 1..7")
        if not isinstance(self.stream, bool):
            raise MedAdaptError(f"ssl.stream must be true or false; got {self.stream!r}")
        if self.start_epoch < 0:
            raise MedAdaptError(f"ssl.start_epoch must be >= 0; got {self.start_epoch}")
        if self.stream_cases < 1:
            raise MedAdaptError(f"ssl.stream_cases must be >= 1; got {self.stream_cases}")
        if self.unlabeled_batch_size < 1:
            raise MedAdaptError("ssl.unlabeled_batch_size must be >= 1")


def _check_whole(value, lo: int, hi: int, what: str) -> None:
    """A whole number in lo..hi (YAML's true / false are not numbers here), else an error saying ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MedAdaptError(f"{what}; got {value!r}")


__all__ = ["SSLConfig"]
