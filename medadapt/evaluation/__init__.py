"""Evaluation: per-case, per-class Dice, HD95 and normalised surface Dice (via MONAI) and their reports.

``metrics`` scores one prediction against one label map (2D or 3D); ``report``
collects those scores per case, prompt mode and class and summarises them for
the terminal, JSON and CSV; ``predict`` yields a split's predictions case by
case, for scoring them several ways. See :mod:`medadapt.evaluation.metrics` for the
empty-mask conventions.
"""

from __future__ import annotations

from .metrics import binary_dice, dice_per_class, hd95_per_class, surface_dice_per_class
from .predict import CasePrediction, predict_split
from .report import CSV_HEADER, CaseResult, EvaluationReport

__all__ = [
    "CSV_HEADER",
    "CasePrediction",
    "CaseResult",
    "EvaluationReport",
    "binary_dice",
    "dice_per_class",
    "hd95_per_class",
    "predict_split",
    "surface_dice_per_class",
]
