"""``medadapt evaluate``: score an adapted model per case and class, automatic and prompted.

Modes:

* ``automatic``: no prompts at all (learned class tokens); volumes are
  segmented slice by slice and scored in 3-D.
* ``self-prompted``: automatic, then each class re-prompted with a box around
  its own largest component (:func:`medadapt.inference.refine_automatic`); no
  ground truth enters, so this is an automatic result too.
* ``box``: each class on each slice where it is present is prompted with the
  tight box of its ground truth (an upper bound on what a user's box gives).
* ``1-click``: one positive click at the most interior point of the largest
  ground-truth component of each class on each slice.

The prompted modes use the ground truth to make prompts and are reported as
such, never as automatic results.

Metrics: Dice always; HD95 and the normalised surface Dice at ``tolerance``
(NSD, default 2.0) unless ``metrics`` leaves them out (``("dice",)``,
``("dice", "hd95")``, ``("dice", "nsd")``) -- each costs about a second per large
volume, Dice next to nothing. A report without one says so
(``EvaluationReport.metrics``) and its table has no columns for it.

Units (``units="auto"``, the default): HD95 and the NSD tolerance are in mm
when every scored case is a volume (NIfTI file or DICOM series), whose affine
gives the voxel size (:func:`medadapt.data.case_spacing`, in the slice-stack
axis order); 2-D image files (PNG, JPEG, TIFF...) store none, and then both are
in pixels. A data set mixing the two is scored in pixels throughout, with a
warning, so that one mean never adds mm to pixels. The unit is in the report
(``hd95_unit``: ``"mm"`` or ``"px"``), the table headers and ``evaluation.json``.
The spacing is what the files say, and a placeholder cannot be told from a real
one: data stored with a made-up spacing (ACDC here stores its unknown in-plane
spacing as 1 mm) should be scored with ``units="px"``, which ignores the
spacing. ``units="mm"`` refuses data without a spacing instead of falling back
to pixels.

Data: by default the run's own data config (``RUN/config.yaml``) and its split
lists (``data.val``, ``data.test``). ``data=`` scores something else: a dataset
folder is read with the run's data settings (classes, layout, window, split
lists) -- ``split="all"`` scores every labelled case in it -- and a data YAML
describes another dataset completely.

``texts`` adds one mode per text (``text:LV cavity``) for adapters with learned
text prompts: the text's mask on every slice, scored against the class the
caller says it names. No ground truth enters the prediction.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..adapters import read_adapter_info
from ..core.errors import MedAdaptError
from ..data import DataConfig, case_spacing, discover_cases, load_volume_case, split_cases
from ..data.config import check_class_order
from ..inference.cleanup import check_cleanup, clean_labels
from ..inference.predictor import Segmenter
from ..inference.student_answers import student_prediction
from ..io.imaging import is_volume_path as _is_volume  # the tests replace _is_volume
from ..prompts.regions import mask_box
from ..prompts.simulate import prompts_from_prediction
from ..student import TTA, has_student, read_student_info
from ..training.config import read_config
from ..training.run_folder import recorded_root
from .metrics import _check_tolerance, dice_per_class, hd95_per_class, surface_dice_per_class
from .report import EvaluationReport

MODES = ("automatic", "self-prompted", "box", "1-click")
METRICS = ("dice", "hd95", "nsd")  # all of them, the default; Dice is always computed
SPLITS = ("val", "test", "all", "labeled")
UNITS = ("auto", "mm", "px")  # of HD95 and the NSD tolerance; see the module docstring
LABEL_MODES = ("automatic", "self-prompted")  # modes that give one label map per slice, not one mask per class


def _run_paths(run: str | os.PathLike) -> tuple[Path, Path | None]:
    """(adapter path, run folder or None) for a run folder, an adapter folder or file."""
    p = Path(run)
    if (p / "adapter" / "adapter.json").exists():
        return p / "adapter", p
    if (p / "adapter.json").exists():
        parent = p.parent if (p.parent / "config.yaml").exists() else None
        return p, parent
    if p.suffix in (".safetensors", ".json") and p.exists():
        return p, p.parent.parent if (p.parent.parent / "config.yaml").exists() else None
    raise MedAdaptError(f"no adapter found at {p}: give a run folder (with adapter/) or an adapter file")


def _data_config(data: str | os.PathLike | None, run_dir: Path | None) -> DataConfig:
    base = {}
    if run_dir is not None and (run_dir / "config.yaml").exists():
        saved = read_config(run_dir / "config.yaml")  # one-line errors for a missing, broken or non-mapping file
        if not isinstance(saved.get("data"), dict):
            raise MedAdaptError(f"{run_dir / 'config.yaml'} has no data: section; pass --data to say what to score")
        base = dict(saved["data"])
        if "root" in base:  # a relative root, from wherever this runs
            base["root"] = recorded_root(run_dir, saved)
    if data is not None:
        d = Path(data).expanduser()
        if d.suffix in (".yaml", ".yml") and d.is_file():
            raw = read_config(d)
            raw = raw.get("data", raw)
            if not isinstance(raw, dict):
                raise MedAdaptError(f"--data {d} must hold a data: section (root, classes, val/test ids)")
            base = dict(raw)
        elif d.is_dir():
            if not base:
                raise MedAdaptError(
                    f"--data {d} is a folder but the run has no config.yaml to take classes and layout from; "
                    "pass a data YAML (root, classes, layout, val/test ids) instead"
                )
            base = {**base, "root": str(d)}
        else:
            raise MedAdaptError(f"--data must be a dataset folder or a data YAML file; {d} is neither")
    if not base:
        raise MedAdaptError("no data to evaluate on: pass --data (a dataset folder or a data YAML)")
    return DataConfig.from_dict(base)


def _cases(config: DataConfig, split: str, data: str | os.PathLike | None):
    if split not in SPLITS:
        raise MedAdaptError(f"unknown split {split!r}; choose val, test or all (or labeled: the training cases)")
    cases = discover_cases(config)
    if split == "all":  # every labelled case; unlabelled ones are not scored
        labelled = [c for c in cases if c.label_path is not None]
        if not labelled:
            raise MedAdaptError(f"--split all: none of the {len(cases)} cases found has a label file; evaluation "
                                "needs labels (check data.labels or the --data folder)")
        return labelled
    folder = data is not None and Path(data).suffix not in (".yaml", ".yml")
    try:
        splits = split_cases(config, cases)
    except MedAdaptError as exc:
        if not folder:
            raise
        raise MedAdaptError(
            f"{exc} (--data {data} is read with the run's split lists; --split all scores every labelled case "
            "in the folder)"
        ) from exc
    if not splits.get(split):
        hint = (
            "--split all scores every labelled case in the --data folder" if folder else
            f"list its case ids under data.{split} in a data YAML (e.g. a copy of the run's config.yaml) and pass "
            "it with --data, or put the held-out images in a folder and pass --data FOLDER --split all"
        )
        raise MedAdaptError(f"split {split!r} has no cases in this data config (data.{split} is empty or not set); {hint}")
    return splits[split]


def _check_request(modes: Sequence[str], limit: int | None) -> None:
    """Refuse unknown modes and a ``limit`` that is not a case count, before anything is read."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise MedAdaptError(f"unknown evaluation mode(s) {bad or list(modes)}; choose from {list(MODES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MedAdaptError(f"--limit must be a number of cases >= 1 (score the first N cases); got {limit!r}")


def _load_model(adapter: Path, info: dict, config: DataConfig, device: str | None,
                student: bool) -> tuple[Segmenter, list[str]]:
    """The run's model and its class names, refused when the data config names other classes."""
    seg = Segmenter.from_pretrained(info["backbone"], adapter=adapter, device=device, student=student)
    names = list(info.get("metadata", {}).get("class_names") or seg.classes)
    if not names:
        raise MedAdaptError(f"adapter {adapter} has no class names in its metadata")
    check_class_order(config, names)  # the same classes in another order would be scored under wrong names
    return seg, names


def _predict_slices(seg, image_slices, label_slices, values, modes, texts=()) -> dict[str, np.ndarray]:
    """Every mode for every slice, encoding each slice once.

    Automatic modes give a label map; prompted modes give one binary map per
    class (prompts from that class's ground truth on the slice), so they are
    scored per class. Returns {mode: S x H x W labels} for automatic modes and
    {mode: C x S x H x W bool} for prompted modes.
    """
    shape = (len(image_slices), *label_slices[0].shape)
    out = {m: (np.zeros(shape, np.int64) if m in LABEL_MODES else np.zeros((len(values), *shape), bool)) for m in modes}
    out.update({f"text:{t}": np.zeros(shape, bool) for t in texts})
    # a run's student answers automatic mode from the slices and their neighbours (no encoding); the
    # self-prompted mode refines those same answers
    by_student = seg.student is not None and "automatic" in modes
    student_probs = (seg.student.predict_planes(list(image_slices))
                     if seg.student is not None and any(m in LABEL_MODES for m in modes) else None)
    if by_student:
        usable = [np.ptp(img) != 0 for img in image_slices]
        for z, probs in enumerate(student_probs):
            if usable[z]:
                out["automatic"][z] = np.asarray(values)[probs[1:].argmax(0)] * (probs.argmax(0) > 0)
    # a depth adapter decodes each slice of a volume with its neighbours, as predict_volume does
    stacked = seg.backbone.depth_slices > 1 and len(image_slices) > 1
    if stacked:  # the slices are display planes already: the session's planes must be these same planes
        seg.set_planes(image_slices)
    try:
        _slice_answers(seg, image_slices, label_slices, values, modes, texts, by_student, stacked, out, student_probs)
    finally:
        if stacked:
            seg.reset_volume()
    return out


def _slice_answers(seg, image_slices, label_slices, values, modes, texts, by_student, stacked, out,
                   student_probs=None) -> None:
    for z, (img, lab) in enumerate(zip(image_slices, label_slices)):
        present = [(k, v) for k, v in enumerate(values) if (lab == v).any()]
        label_modes = [m for m in LABEL_MODES if m in modes and not (by_student and m == "automatic")]
        needs_image = label_modes or texts or (present and any(m in modes for m in ("box", "1-click")))
        if not needs_image or np.ptp(img) == 0:
            continue
        if stacked:
            seg.show_plane(seg.volume, z)
        else:
            seg.set_image(img)
        if texts:
            for t, m in zip(texts, seg.predict(text=list(texts)).masks):
                out[f"text:{t}"][z] = m
        for mode in label_modes:  # the second reuses the first's decode (Segmenter caches it per image)
            if student_probs is not None:  # only self-prompted is left: the student's answer, refined
                p = student_prediction(seg, img, list(range(len(values))), True, probs=student_probs[z])
            else:
                p = seg.predict(refine=mode == "self-prompted")
            for m, v in zip(p.masks, values):
                out[mode][z][m] = v
        if not present:
            continue
        masks = [lab == v for _, v in present]
        if "box" in modes:
            boxes = [mask_box(m).tolist() for m in masks]  # at least a pixel wide, inside the image
            for (k, _), p in zip(present, seg.predict(boxes=boxes).masks):
                out["box"][k, z] = p
        if "1-click" in modes:
            # the most interior pixel of the largest component, as prompts_from_prediction picks it
            pts = [prompts_from_prediction(m, min_size=1).points[0, :1] for m in masks]
            for (k, _), p in zip(present, seg.predict(points=pts, point_labels=[[1]] * len(pts)).masks):
                out["1-click"][k, z] = p


# settings that do not make another evaluation: the number of cases follows from the others
_SAME_EVALUATION_WHATEVER = {"cases", "out", "student_weights"}  # more training replaces its scores


def _check_replacing(path: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to replace ``path``, an evaluation made with other settings, unless ``overwrite``."""
    if overwrite or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        before = None
    if not isinstance(before, dict):  # an evaluation that recorded no settings: as before, it is replaced
        return
    if isinstance(before.get("prompts_from_ground_truth"), list):  # text prompts were listed there once
        before = {**before, "prompts_from_ground_truth": [m for m in before["prompts_from_ground_truth"]
                                                          if not str(m).startswith("text:")]}
    # a setting the earlier evaluation did not record (it predates it) is not counted as changed
    changed = [k for k in settings if k not in _SAME_EVALUATION_WHATEVER and k in before and before[k] != settings[k]]
    if changed:
        detail = "; ".join(f"{k}: {before.get(k)!r} there, {settings[k]!r} now" for k in changed[:3])
        raise MedAdaptError(f"{path.parent} holds an evaluation made with other settings ({detail}); give --out DIR "
                            "to keep both, or --overwrite to replace it")


def describe_evaluation(settings: dict) -> str:
    """One line on what an evaluation scored: split, data, who answered automatic mode, which modes were
    prompted from the ground truth, and where the files are."""
    if not settings:
        return ""
    parts = [f"split {settings.get('split')} ({settings.get('cases')} cases) of {settings.get('data')}"]
    if settings.get("split") == "val":
        parts.append("val is where a run makes its choices (epochs, levers): report a held-out test split")
    if "automatic" in settings.get("modes", []) or "self-prompted" in settings.get("modes", []):
        tta = f" ({settings['student_tta']} test-time augmentation)" if settings.get("student_tta") else ""
        parts.append("automatic mode answered by " + (f"the distilled student{tta}" if settings.get("student")
                                                      else "the adapted decoder"))
    prompted = settings.get("prompts_from_ground_truth") or []
    if prompted:
        parts.append(f"{', '.join(prompted)}: prompts drawn from the ground truth")
    return "; ".join(parts) + (f"; written to {settings['out']}" if settings.get("out") else "")


def evaluate_run(
    run: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    split: str = "val",
    modes: Sequence[str] = MODES,
    out_dir: str | os.PathLike | None = None,
    device: str | None = None,
    limit: int | None = None,
    texts: dict[str, str] | None = None,
    metrics: Sequence[str] = METRICS,
    tolerance: float = 2.0,
    units: str = "auto",
    student: bool = True,
    cleanup: Sequence[str] | None = None,
    overwrite: bool = False,
    student_tta: str | None = None,
) -> EvaluationReport:
    """Evaluate a fine-tuned run on a split; writes ``evaluation.json`` and ``.csv``.

    Args:
        run: run folder from :func:`medadapt.recipes.finetune` (or its adapter folder/file).
        data: what to score; ``None`` (default) is the run's own data config
            (``RUN/config.yaml``). A dataset *folder* -- e.g. a separate folder of
            ``images/`` + ``masks/`` -- is read with the run's data settings
            (classes, layout, window) and its split lists: ``split="all"`` scores
            every labelled case in it. A *data YAML* (a ``data:`` section, or a
            whole config holding one) describes another dataset completely; its
            ``classes`` must be the adapter's classes, in the same order.
        split: ``"val"`` or ``"test"`` (the cases the data config lists under
            ``data.val`` / ``data.test``; ``"test"`` scores a held-out test split),
            or ``"all"`` (every case).
        modes: any of :data:`MODES`.
        out_dir: folder for the files (default ``RUN/eval_<split>``).
        limit: score only the first ``limit`` cases (>= 1).
        texts: maps a text prompt to the class name it should find, e.g.
            ``{"LV cavity": "left ventricle"}`` (needs an adapter with learned text prompts).
        metrics: ``"dice"`` and any of ``"hd95"``, ``"nsd"`` (default all three).
        tolerance: NSD tolerance in the report's unit (mm or pixels, see ``units``); default 2.0.
        units: ``"auto"`` (default): mm when every case has a voxel spacing, else
            pixels; ``"px"``: pixels whatever the files say (for placeholder
            spacings); ``"mm"``: mm, refusing cases without a spacing.
        student: a run distilled by ``medadapt distill`` answers automatic mode with its
            student; ``False`` scores the adapted decoder instead.
        student_tta: the student's test-time augmentation (``"none"``, ``"flip"``,
            ``"dihedral"``; see :class:`medadapt.student.StudentConfig`); ``None`` (default)
            keeps the one the student was saved with.
        cleanup: clean-ups of each case's automatic and self-prompted label maps before
            scoring: any of ``"largest"`` (each class's largest 3-D component) and
            ``"holes"`` (holes filled slice by slice); see :mod:`medadapt.inference.cleanup`.
        overwrite: replace an evaluation in the output folder made with other settings
            (another split, data, ``limit``, modes...); without it that is refused, so a quick
            check never silently replaces a full evaluation. One made with the same settings
            (after more training, say) is always replaced.

    The settings are recorded in ``evaluation.json`` (``settings``): the split and data
    scored, the adapter, whether a distilled student answered automatic mode, and which
    modes took their prompts from the ground truth.
    """
    try:
        cleanup = check_cleanup(cleanup)
    except MedAdaptError as exc:
        raise MedAdaptError(f"--cleanup: {exc}") from exc
    _check_request(modes, limit)
    if student_tta is not None and student_tta not in TTA:
        raise MedAdaptError(f"--student-tta {student_tta!r}: choose {' | '.join(TTA)}")
    metrics = list(dict.fromkeys(metrics))
    if any(m not in METRICS for m in metrics) or "dice" not in metrics:
        raise MedAdaptError(
            f"--metrics {','.join(metrics) or '(none)'}: choose dice or dice,hd95,nsd or a part that keeps dice "
            "(dice,hd95 or dice,nsd); Dice is always computed"
        )
    try:
        tolerance = _check_tolerance(tolerance)
    except MedAdaptError as exc:
        raise MedAdaptError(f"--nsd-tolerance (tolerance=): {exc} (the NSD tolerance, in mm, or pixels for 2-D images)") from exc
    if units not in UNITS:
        raise MedAdaptError(f"--units {units!r}: choose auto (mm where the data has a voxel spacing), mm or px")
    adapter, run_dir = _run_paths(run)
    # another dataset's scores get a folder of their own, so they never replace the run's own
    # (named and told apart by where the data is: two folders named held/ do not share one)
    where = "" if data is None else re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).stem).strip("._") + "-" + \
        hashlib.sha256(str(Path(data).expanduser().resolve()).encode()).hexdigest()[:6] + "_"
    out = Path(out_dir) if out_dir else (run_dir or Path(adapter).parent) / f"eval_{where}{split}"
    if out.exists() and not out.is_dir():
        raise MedAdaptError(f"--out {out} is a file: give a folder for evaluation.json and evaluation.csv")
    info = read_adapter_info(adapter)
    config = _data_config(data, run_dir)
    cases = _cases(config, split, data)[:limit]  # found before the model loads: a wrong split fails fast
    settings = {"split": split, "data": str(Path(config.root).expanduser().resolve()),
                "data_config": "the run's" if data is None else str(Path(data).expanduser().resolve()),
                "adapter": str(Path(adapter).resolve()), "limit": limit, "cases": len(cases), "modes": list(modes),
                "texts": dict(texts or {}), "metrics": metrics, "units": units, "cleanup": list(cleanup),
                "student": bool(student) and run_dir is not None and has_student(run_dir),
                # a text prompt is the user's phrase: no ground truth makes it (only which class it is scored on)
                "prompts_from_ground_truth": [m for m in modes if m not in LABEL_MODES]}
    # the student's test-time augmentation (the one asked for, else the one it was saved with; students saved
    # without one flip), and which student answers (its weights' hash): one round's scores are never another's
    saved = read_student_info(run_dir) if settings["student"] else {}
    saved_config = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    settings["student_tta"] = (student_tta or saved_config.get("tta", "flip")) if settings["student"] else None
    settings["student_weights"] = saved.get("weights_sha256")
    settings["out"] = str(out.expanduser().resolve())
    _check_replacing(out / "evaluation.json", settings, overwrite)
    with_hd95, with_nsd = "hd95" in metrics, "nsd" in metrics
    spaced = [_is_volume(case.image_path) for case in cases]  # volumes carry a voxel size, 2-D files none
    in_mm = units != "px" and bool(spaced) and all(spaced)
    if units == "mm" and not in_mm and (with_hd95 or with_nsd):
        flat = [c.case_id for c, s in zip(cases, spaced) if not s]
        raise MedAdaptError(
            f"--units mm: {len(flat)} of {len(cases)} cases are 2-D image files, which store no voxel spacing "
            f"({', '.join(flat[:3])}{', ...' if len(flat) > 3 else ''}); use --units px (or auto) to score in pixels"
        )
    if units == "auto" and (with_hd95 or with_nsd) and any(spaced) and not in_mm:
        warnings.warn(
            f"{spaced.count(False)} of {len(cases)} cases are 2-D image files without a voxel spacing: HD95 and "
            "NSD are in pixels for every case, the volumes' spacing unused",
            stacklevel=2,
        )
    seg, names = _load_model(adapter, info, config, device, student)
    values = list(range(1, len(names) + 1))  # labels are remapped to 1..C in class order by the data loader
    texts = dict(texts or {})
    wrong = {t: c for t, c in texts.items() if c not in names}
    if wrong:
        raise MedAdaptError(f"texts name classes {sorted(set(wrong.values()))} this adapter does not have; it has {names}")
    if seg.student is not None and student_tta is not None:
        seg.student.tta = student_tta
    elif student_tta is not None:
        warnings.warn(f"--student-tta {student_tta}: no distilled student answers here (the run has none, or "
                      "--no-student), so it changes nothing", stacklevel=2)
    # who answered, as loaded (the guess above reads the run folder; a copied run without its config differs)
    settings.update(student=seg.student is not None, student_tta=None if seg.student is None else seg.student.tta,
                    student_weights=None if seg.student is None else
                    (getattr(seg.student, "info", None) or {}).get("weights_sha256"))
    _check_replacing(out / "evaluation.json", settings, overwrite)
    report = EvaluationReport(hd95_unit="mm" if in_mm else "px", metrics=metrics,
                              nsd_tolerance=tolerance if with_nsd else None, cleanup=cleanup, settings=settings)
    from tqdm import tqdm

    def plane(pred: np.ndarray, target: np.ndarray, spacing):
        """A 2-D case (a stack of one slice) as the image it is: its surface is its contour, where a one-slice
        volume would count every pixel as surface (the slices above and below it being empty)."""
        if pred.ndim == 3 and pred.shape[0] == 1:
            return pred[0], target[0], None if spacing is None else tuple(spacing)[1:]
        return pred, target, spacing

    def hd95(pred: np.ndarray, target: np.ndarray, classes: list[int], spacing) -> dict[int, float]:
        if not with_hd95:
            return {v: math.nan for v in classes}
        p, t, sp = plane(pred, target, spacing)
        return hd95_per_class(p, t, classes, sp)

    def nsd(pred: np.ndarray, target: np.ndarray, classes: list[int], spacing) -> dict[int, float] | None:
        if not with_nsd:
            return None
        p, t, sp = plane(pred, target, spacing)
        return surface_dice_per_class(p, t, classes, tolerance, sp)

    for case in tqdm(cases, desc="evaluating", unit="case"):
        volume, label = load_volume_case(case, config)
        if label is None:
            raise MedAdaptError(f"case {case.case_id} has no label file; evaluation needs labels")
        # (N, H, W) stacks, slice k as training saw it; a 2-D case is N = 1
        image_slices, label_slices = list(volume), list(label)
        gt = np.asarray(label)
        # voxel size in mm in the (N, H, W) order of the stacks; None: pixel units
        spacing = case_spacing(case, config) if in_mm and (with_hd95 or with_nsd) else None
        try:
            preds = _predict_slices(seg, image_slices, label_slices, values, modes, tuple(texts))
        except MedAdaptError as exc:  # a bad image (NaN voxels...) is named, so the user knows which file to fix
            raise MedAdaptError(f"case {case.case_id} ({case.image_path}): {exc}") from exc
        for mode in (m for m in modes if m in LABEL_MODES):
            preds[mode] = clean_labels(preds[mode], cleanup, axis=0)  # the stacks' slices run along axis 0
        for mode in modes:
            if mode in LABEL_MODES:
                dice = dice_per_class(preds[mode], gt, values)
                hd = hd95(preds[mode], gt, values, spacing)
                sd = nsd(preds[mode], gt, values, spacing)
                scored = dict(zip(values, names))
            else:  # prompts come from the ground truth: a class absent from the case gets none and is not scored
                scored = {v: n for v, n in zip(values, names) if (gt == v).any()}
                dice, hd, sd = {}, {}, ({} if with_nsd else None)
                for k, v in enumerate(values):
                    if v not in scored:
                        continue
                    pk, gk = preds[mode][k].astype(np.int64) * v, gt * (gt == v)
                    dice.update(dice_per_class(pk, gk, [v]))
                    hd.update(hd95(pk, gk, [v], spacing))
                    if sd is not None:
                        sd.update(nsd(pk, gk, [v], spacing))
            if scored:
                report.add_case(case.case_id, mode, scored, dice, hd, sd)
        for t, c in texts.items():
            v = values[names.index(c)]
            pk, gk = preds[f"text:{t}"].astype(np.int64) * v, gt * (gt == v)
            report.add_case(case.case_id, f"text:{t}", {v: c}, dice_per_class(pk, gk, [v]),
                            hd95(pk, gk, [v], spacing), nsd(pk, gk, [v], spacing))
    report.to_json(out / "evaluation.json")
    report.to_csv(out / "evaluation.csv")
    return report


__all__ = ["LABEL_MODES", "METRICS", "MODES", "SPLITS", "UNITS", "describe_evaluation", "evaluate_run"]
