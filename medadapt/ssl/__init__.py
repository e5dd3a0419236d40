"""The weak-to-strong semi-supervised loop (mean teacher, promptable pseudo-labels).

* :mod:`.config` -- :class:`SSLConfig`, the ``ssl:`` section of a fine-tuning config.
* :mod:`.teacher` -- the EMA teacher.
* :mod:`.pseudo` -- confident automatic labels, refined by re-prompting the decoder with boxes.
* :mod:`.perturb` -- intensity, CutMix, bidirectional copy-paste (BCP), feature dropout.
* :mod:`.geometry` -- the 8 flips and quarter turns of the model's frame, for images, labels, boxes, points.
* :mod:`.loop` -- :class:`SemiSupervised`, the unsupervised loss the trainer adds.
* :mod:`.distill` -- :func:`distill_run`: weak-to-strong distillation into a MONAI student
  (:mod:`.distill_config`, :mod:`.foundation_labels`, :mod:`.student_training`,
  :mod:`.student_labels` for later rounds).

``medadapt finetune`` runs it when a config names ``data.unlabeled`` cases and
has an ``ssl:`` section. (This is ``medadapt.ssl``; a top-level ``ssl`` would
shadow the standard library.)
"""

from __future__ import annotations

from .config import SSLConfig
from .distill import distill_run, distillation_splits, score_student
from .distill_config import DistillConfig
from .foundation_labels import label_cases, label_slice, load_pseudo_labels
from .geometry import dihedral, dihedral_boxes, dihedral_each, dihedral_points
from .loop import SemiSupervised, rampup
from .perturb import box_masks, feature_dropout, intensity, paste, random_boxes
from .pseudo import (
    boxes_from_labels,
    confident_labels,
    drop_small_classes,
    refine_with_prompts,
)
from .student_labels import relabel_cases, student_label_stack
from .student_training import SliceBank, StudentTrainer, slice_bank
from .teacher import EMATeacher

__all__ = [
    "DistillConfig", "EMATeacher", "SSLConfig", "SliceBank", "StudentTrainer", "distill_run", "distillation_splits",
    "label_cases",
    "label_slice", "load_pseudo_labels", "score_student", "slice_bank", "SemiSupervised", "box_masks", "boxes_from_labels",
    "confident_labels", "dihedral", "dihedral_boxes", "dihedral_each", "dihedral_points", "drop_small_classes",
    "feature_dropout", "intensity",
    "paste", "rampup", "random_boxes", "refine_with_prompts",
    "relabel_cases", "student_label_stack",
]
