"""The ``distill:`` section of a fine-tuning config: weak-to-strong distillation into a specialist student."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.config import Ranges, check_fields, check_ranges
from ..student import StudentConfig


@dataclass
class DistillConfig:
    """How the adapted foundation model teaches a MONAI student (``medadapt distill RUN``).

    Pseudo-labels: the run's adapter answers every slice of the ``unlabeled``
    cases (default: the run's ``data.unlabeled``) in automatic mode,
    self-prompted (``refine``), averaged with its answer on the mirrored
    slice (``tta``). A pixel teaches the student where that answer's
    confidence reaches ``threshold``.

    Student: trained for ``iterations`` steps of ``batch_size`` labelled
    slices (Dice + cross-entropy on the ground truth) and
    ``unlabeled_batch_size`` pseudo-labelled slices seen through a strong view
    (intensity, CutMix): cross-entropy against the foundation pseudo-label
    (``pseudo_weight``, falling linearly over a round to ``1 - pseudo_decay``
    of itself at the round's end) and against the student's own EMA teacher
    on the weak view where that teacher is at least ``consistency_threshold``
    sure (``consistency_weight``, ramped up over the first ``rampup`` share of
    the steps). ``agreement`` in [0, 1]: a pseudo-labelled pixel whose class
    differs from the EMA teacher's (weak view) has its weight cut by this
    share, ramped in with the consistency loss; 1 trusts the foundation only
    where the student's teacher agrees with it. The EMA teacher is what is
    saved as the student. Both batches are flipped and turned by quarter
    turns at random; ``affine`` (a share of the slices) adds a rotation of up
    to ``rotate`` degrees and a zoom drawn from ``zoom``. On the ACDC recipe's first round, ``affine: 0.5`` reached
    a validation Dice of 0.847 after 2000 steps against 0.851 without (same
    pseudo-labels and seed; ``benchmarks/results/acdc/student_affine_3labeled``),
    so it is off by default.

    ``amp``: the student's forward passes under bfloat16 autocast (weights,
    optimiser and losses stay float32). ``"off"`` (the default) never;
    ``"bf16"`` always; ``"auto"`` where bf16 is fast (CUDA, CPUs with AMX or
    AVX512-BF16). On the 2-core AVX512-BF16 benchmark CPU the ACDC recipe's
    student trained 1.5x faster under bf16, and its validation Dice after
    2000 steps was 0.841 against 0.851 in float32 (one pair, same seed and
    pseudo-labels): not shown to be as good, so it is not the default.

    Rounds: with ``rounds`` > 1, each later round relabels the unlabelled
    slices with the previous round's student, and a student starting from
    the previous one trains for another ``iterations`` steps on those labels;
    the last round's student is saved. ``relabel``: ``"student"`` (the
    default) labels with the student's flip-averaged answer, its probability
    as the confidence; ``"refined"`` self-prompts the student's masks through
    the run's decoder first, as ``predict(refine=True)`` does (each slice is
    encoded once), and trusts the decoder where it changed them.

    ``compare_peer``: the first round is trained a second time with
    ``pseudo_weight: 0`` (the same student, seed and unlabelled slices: a
    semi-supervised UNet that never sees the foundation's labels), and the
    rounds go on from whichever of the two scores higher on the validation
    split at the round's last step; when it is the one without them, later
    rounds give pseudo-labels no weight either (and relabel with the student
    alone). It costs one round more and needs ``data.val``. On HC18 (5
    labelled exams) the student without the foundation's labels is far
    better (0.934 against 0.846 on val after one round); on ACDC (3
    labelled patients) the one with them (0.861 against 0.793 on val after
    two rounds; ``docs/distill.md``).
    """

    student: StudentConfig = field(default_factory=StudentConfig)
    unlabeled: Any = None  # a data split spec (as data.unlabeled); None: the run's data.unlabeled
    refine: bool = True
    tta: bool = True
    threshold: float = 0.8
    iterations: int = 3000
    batch_size: int = 8
    unlabeled_batch_size: int = 8
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    pseudo_weight: float = 1.0
    pseudo_decay: float = 0.0
    consistency_weight: float = 1.0
    consistency_threshold: float = 0.95
    agreement: float = 0.0
    rampup: float = 0.2
    ema_decay: float = 0.99
    intensity: float = 0.5
    cutmix: float = 0.5
    mix_area: tuple[float, float] = (0.25, 0.5)
    affine: float = 0.0
    rotate: float = 20.0
    zoom: tuple[float, float] = (0.85, 1.15)
    rounds: int = 1
    relabel: str = "student"
    compare_peer: bool = False
    amp: str = "off"
    val_every: int = 250
    seed: int | None = None  # None: the run's train.seed

    def __post_init__(self) -> None:
        if isinstance(self.student, dict):
            from ..core.config import build_dataclass

            self.student = build_dataclass(StudentConfig, self.student, "distill.student")
        check_fields(self, "distill")
        self.mix_area = tuple(float(v) for v in self.mix_area)
        self.zoom = tuple(float(v) for v in self.zoom)
        check_ranges(self, "distill", RANGES)


def _unit(v: float) -> bool:
    return 0.0 <= v <= 1.0


RANGES: Ranges = {
    "threshold": (lambda v: 0.0 <= v < 1.0, "a confidence in [0, 1)"),
    "consistency_threshold": (lambda v: 0.0 <= v < 1.0, "a confidence in [0, 1)"),
    "iterations": (lambda v: 1 <= v <= 10_000_000, "a number of steps >= 1"),
    "batch_size": (lambda v: 1 <= v <= 4096, "a whole number in 1..4096"),
    "unlabeled_batch_size": (lambda v: 0 <= v <= 4096, "a whole number in 0..4096 (0: labelled slices only)"),
    "lr": (lambda v: 0.0 < v <= 1.0, "a learning rate in (0, 1]"),
    "weight_decay": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "pseudo_weight": (lambda v: 0.0 <= v <= 100.0, "a loss weight in [0, 100]"),
    "pseudo_decay": (_unit, "a share in [0, 1] (1: the pseudo-label weight falls to 0 over each round)"),
    "consistency_weight": (lambda v: 0.0 <= v <= 100.0, "a loss weight in [0, 100]"),
    "agreement": (_unit, "a share in [0, 1] (0: the foundation label counts wherever it is confident)"),
    "rampup": (_unit, "a share of the steps in [0, 1]"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "intensity": (lambda v: 0.0 <= v <= 1.0, "a strength in [0, 1]"),
    "cutmix": (_unit, "a probability in [0, 1]"),
    "mix_area": (lambda v: len(v) == 2 and 0.0 < v[0] <= v[1] < 1.0, "[low, high] shares of the image in (0, 1)"),
    "affine": (_unit, "a share of the slices in [0, 1]"),
    "rotate": (lambda v: 0.0 <= v <= 180.0, "an angle in degrees in [0, 180]"),
    "zoom": (lambda v: len(v) == 2 and 0.25 <= v[0] <= v[1] <= 4.0, "[low, high] zoom factors in [0.25, 4]"),
    "rounds": (lambda v: 1 <= v <= 100, "a whole number of rounds in 1..100"),
    "relabel": (lambda v: v in ("student", "refined"), "student | refined"),
    "amp": (lambda v: v in ("auto", "bf16", "off"), "auto | bf16 | off"),
    "val_every": (lambda v: 1 <= v, "a number of steps >= 1"),
    "seed": (lambda v: v is None or 0 <= v < 2**32, "a whole number in 0..2^32-1"),
}

__all__ = ["DistillConfig"]
