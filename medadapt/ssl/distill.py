"""Weak-to-strong distillation of a fine-tuned run into a specialist student (``RUN/student/``).

1. The run's adapted foundation model labels every slice of the unlabelled
   cases (:mod:`.foundation_labels`; self-prompted, mirrored views averaged,
   a confidence per pixel), cached in ``RUN/distill/pseudo/``.
2. A MONAI student learns from the labelled slices, the confident
   pseudo-labels and its own EMA teacher (:mod:`.student_training`); its
   state is checkpointed in ``RUN/distill/`` and a killed run resumes.
3. With ``rounds`` > 1, the student relabels the unlabelled slices
   (``RUN/distill/roundR/pseudo/``; with ``relabel: refined`` its masks
   self-prompted through the decoder) and a student starting from it trains
   again on those labels (``RUN/distill/roundR/``), round after round.
   With ``compare_peer``, the first round is also trained without the
   foundation's pseudo-labels (``RUN/distill/peer/``: the same student,
   seed and unlabelled slices, ``pseudo_weight: 0``), and the rounds go on
   from whichever EMA teacher scores higher on ``data.val`` at the last
   step; the choice is recorded in ``RUN/student/student.json``.
4. The last EMA teacher is written to ``RUN/student/``, where
   :class:`medadapt.inference.Segmenter` finds it and answers automatic
   predictions with it (prompts still go to the promptable decoder).

Validation Dice (every ``val_every`` steps, on ``data.val``) is logged in
``RUN/distill/log.csv`` for choices; nothing is selected by it: the last
step's teacher is the student.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..adapters.io import adapter_fingerprint
from ..core.errors import MedAdaptError
from ..core.files import atomic_write_json
from ..data import Case, DataConfig, discover_cases, load_volume_case, split_cases
from ..data.config import check_class_order
from ..inference import Segmenter
from ..student import Student, grey_stack, save_student
from .distill_config import DistillConfig
from .foundation_labels import label_cases, load_pseudo_labels
from .student_labels import relabel_cases
from .student_training import StudentTrainer, slice_bank


def volume_dice(pred: np.ndarray, target: np.ndarray, n_classes: int) -> list[float]:
    """3-D Dice of each class 1..n (MONAI's metric; a class absent from both counts 1)."""
    from monai.metrics import compute_dice

    p = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), n_classes + 1).movedim(-1, 0)[None]
    t = torch.nn.functional.one_hot(torch.from_numpy(target.astype(np.int64)), n_classes + 1).movedim(-1, 0)[None]
    d = compute_dice(p, t, include_background=False, ignore_empty=False)[0]
    return [float(v) for v in d]


def score_student(student: Student, volumes: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over volumes and classes of the 3-D Dice of the student's label maps."""
    n = len(student.class_names)
    per_volume = []
    for images, labels in volumes:
        probs = student.predict_planes(list(images))
        pred = np.stack([p.argmax(0) for p in probs])
        const = np.array([np.ptp(im) == 0 for im in images])
        pred[const] = 0
        per_volume.append(np.mean(volume_dice(pred, labels, n)))
    return float(np.mean(per_volume)) if per_volume else float("nan")


# what a distillation recorded before a setting existed ran with: one round, float32
_RECORDED_DEFAULTS = {"rounds": 1, "amp": "off", "affine": 0.0, "rotate": 20.0, "zoom": [0.85, 1.15],
                      "relabel": "student", "agreement": 0.0, "pseudo_decay": 0.0, "compare_peer": False}


def recorded_settings(distill: dict | None) -> dict:
    """A recorded ``distill`` section (``RUN/distill/settings.json``, ``RUN/student/student.json``) with the
    settings it predates filled in as they ran, so it compares with a config of today."""
    return {**_RECORDED_DEFAULTS, **(distill or {})}


def distillation_splits(data: DataConfig, config: DistillConfig) -> dict[str, list[Case]]:
    """The run's splits with ``distill.unlabeled``'s cases as the unlabelled ones (all of them: the run's
    ``limit_unlabeled`` sized its semi-supervised loop, not them). Patients are those the run's own config
    makes: the ids ``distill.unlabeled`` lists do not regroup cases into other patients, so the test split
    carved here is the one the run is scored on."""
    if config.unlabeled is None:
        return split_cases(data, discover_cases(data))
    unl_data = DataConfig.from_dict({**asdict(data), "unlabeled": config.unlabeled, "limit_unlabeled": None})
    try:
        return split_cases(unl_data, discover_cases(data))
    except MedAdaptError as exc:
        raise MedAdaptError(f"{exc} (the unlabelled cases are distill.unlabeled here: {config.unlabeled!r})") from exc


def distill_run(run: str | os.PathLike, data: DataConfig, config: DistillConfig, *, seed: int,
                backbone: str, checkpoint: str | None = None, resume: bool = False,
                log: Callable[[str], None] = print) -> Path:
    """Distil run folder ``run`` (data as its ``data:`` section says); returns ``RUN/student``."""
    run = Path(run)
    work, out = run / "distill", run / "student"
    if not (run / "adapter" / "adapter.json").is_file():
        raise MedAdaptError(f"{run} is not a finished fine-tuning run (no adapter/adapter.json): run medadapt finetune first")
    if data.scribbles != "none":
        raise MedAdaptError(f"{run} was trained from scribbles (data.scribbles: {data.scribbles}); the student "
                            "trains on full label maps, so distil a run trained on full masks")
    # the adapter's weights are part of what the pseudo-labels came from: a fine-tuning that went on refuses
    settings = {"distill": _plain(asdict(config)), "seed": seed, "adapter": adapter_fingerprint(run)}
    saved = work / "settings.json"
    if saved.is_file() and not resume:
        raise MedAdaptError(f"{work} holds a distillation already: add --resume to continue it, or delete {work}")
    if resume and saved.is_file():
        _check_resumable(json.loads(saved.read_text()), settings, config, saved)
    splits = distillation_splits(data, config)
    if not splits["unlabeled"]:
        raise MedAdaptError("distillation needs unlabelled cases: set data.unlabeled or distill.unlabeled")
    if config.compare_peer and not splits["val"]:
        raise MedAdaptError("distill.compare_peer chooses on the validation split, and this run has none: set data.val, "
                            "or set distill.compare_peer: false")
    log(f"distillation: {len(splits['labeled'])} labelled, {len(splits['unlabeled'])} unlabelled, "
        f"{len(splits['val'])} validation cases")
    seg = Segmenter.from_pretrained(backbone, checkpoint=checkpoint, adapter=run, student=False)
    if seg.backbone.adapter_config.automatic is None:
        raise MedAdaptError(f"{run} was trained without automatic mode (prompts.automatic: false), and the student "
                            "learns from its automatic answers: fine-tune with prompts.automatic: true, then distil")
    names, values = seg.classes, seg.backbone.adapter_config.automatic.label_values
    check_class_order(data, names)  # the labelled targets follow the config, the pseudo-labels the adapter
    atomic_write_json(saved, settings)  # recorded once the run is known to start: a failed check locks nothing
    files = label_cases(seg, splits["unlabeled"], data, work / "pseudo", refine=config.refine, tta=config.tta, log=log)
    del seg
    pseudo = []
    for f in files:
        z = load_pseudo_labels(f)
        pseudo.append((z["image"], z["label"], z["confidence"]))
    labeled = [(grey_stack(im), lab, None) for im, lab in (load_volume_case(c, data) for c in splits["labeled"])]
    val = [(grey_stack(im), lab) for im, lab in (load_volume_case(c, data) for c in splits["val"])]
    labeled_bank = slice_bank(labeled, config.student)
    validate = (lambda s: score_student(s, val)) if val else None
    student, previous, first_round = None, None, None
    for r in range(1, config.rounds + 1):
        folder = work if r == 1 else work / f"round{r}"
        if r > 1:  # the previous round's student labels the unlabelled slices again
            def refiner(student=student):  # ... with refined: its masks self-prompted through the run's decoder
                seg = Segmenter.from_pretrained(backbone, checkpoint=checkpoint, adapter=run, student=False)
                seg.set_student(student)
                return seg

            files = relabel_cases(student, files, folder / "pseudo", cases=splits["unlabeled"], data=data, log=log,
                                  refiner=refiner if config.relabel == "refined" else None)
            pseudo = [(z["image"], z["label"], z["confidence"]) for z in map(load_pseudo_labels, files)]
        trainer = StudentTrainer(config, names, values, labeled_bank, slice_bank(pseudo, config.student), folder,
                                 seed + r - 1, validate=validate, log=log)
        if previous is not None:
            trainer.start_from(previous)
        if config.rounds > 1:
            log(f"round {r} of {config.rounds}")
        log(f"student: {config.student.network}, {len(trainer.labeled)} labelled and {len(trainer.pseudo)} "
            f"pseudo-labelled slices, {config.iterations} steps")
        student, last = _train(trainer, resume, log)
        if r == 1 and config.compare_peer:  # the same round without the foundation's labels; val keeps the better
            (work / "peer").mkdir(parents=True, exist_ok=True)
            peer = StudentTrainer(replace(config, pseudo_weight=0.0), names, values, labeled_bank, trainer.pseudo,
                                  work / "peer", seed, validate=validate, log=log)
            log("the same round without the foundation pseudo-labels (distill.compare_peer)")
            peer_student, peer_last = _train(peer, resume, log)
            first_round = {"foundation": last.get("val_dice_ema"), "peer": peer_last.get("val_dice_ema")}
            first_round["chosen"] = "peer" if first_round["peer"] > first_round["foundation"] else "foundation"
            log(f"first round, val Dice of the EMA teacher: with the foundation pseudo-labels "
                f"{first_round['foundation']:.4f}, without {first_round['peer']:.4f}; the rounds go on from the "
                + ("student without them" if first_round["chosen"] == "peer" else "student with them"))
            if first_round["chosen"] == "peer":  # later rounds give pseudo-labels no weight either, so relabel cheaply
                student, last, trainer, config = peer_student, peer_last, peer, replace(
                    config, pseudo_weight=0.0, relabel="student")
            del peer, peer_student
        previous, steps = student.network, trainer.step
        del pseudo, trainer  # the next round builds its own from the relabelled slices
    save_student(student, out, metadata={"run": run.name, "adapter": settings["adapter"], "steps": steps,
                                         "rounds": config.rounds,
                                         "seed": seed, "val_dice": last.get("val_dice_ema"),
                                         "distill": settings["distill"],
                                         **({"first_round": first_round} if first_round else {})})
    log(f"student written to {out}" + (f" (val Dice {last['val_dice_ema']:.4f})" if "val_dice_ema" in last else ""))
    return out


def _train(trainer: StudentTrainer, resume: bool, log: Callable[[str], None]) -> tuple[Student, dict]:
    """Run ``trainer`` to its last step, from its saved state when resuming: the student and the last log row."""
    if resume and trainer.state_path.is_file():
        trainer.load_state()
        log(f"resumed at step {trainer.step}")
    student = trainer.run()
    return student, (trainer.history[-1] if trainer.history else {})


def _check_resumable(before: dict, settings: dict, config: DistillConfig, saved: Path) -> None:
    """A distillation resumes only with the settings, seed and adapter it began with (more rounds are allowed,
    and ``relabel`` may change while it has one round)."""
    work = saved.parent
    if before.get("adapter", settings["adapter"]) != settings["adapter"]:  # runs that predate it recorded none
        raise MedAdaptError(f"the adapter in {work.parent / 'adapter'} changed after this distillation began (the "
                            f"fine-tuning went on), so its pseudo-labels are stale: delete {work} to distil the "
                            "new adapter")
    recorded = recorded_settings(before["distill"])
    changed = sorted(k for k in set(recorded) | set(settings["distill"])
                     if recorded.get(k) != settings["distill"].get(k) and k != "val_every"
                     and not (k == "rounds" and config.rounds > recorded["rounds"])  # more rounds: on
                     and not (k == "relabel" and recorded["rounds"] == 1))  # it acts from round 2
    if changed or before.get("seed") != settings["seed"]:
        raise MedAdaptError(f"--resume with other distill settings ({', '.join(changed) or 'seed'}); "
                            f"use the settings of {saved}, or delete {work} to start again")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["distill_run", "distillation_splits", "recorded_settings", "score_student", "volume_dice"]
