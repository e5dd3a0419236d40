"""Finding a dataset's cases on disk, and splitting them by patient.

Users already have their data in one of two layouts, so medadapt reads those
as they are instead of asking for a conversion step:

* ``nnunet`` (nnU-Net / Medical Segmentation Decathlon): ``imagesTr/`` +
  ``labelsTr/`` (also ``imagesVal/labelsVal`` and ``imagesTs/labelsTs`` when
  present), image files ``ID_0000.nii.gz`` or ``ID.nii.gz``, label files
  ``ID.nii.gz``, an optional ``dataset.json`` naming the labels and splits.
* ``folder``: ``images/`` + ``masks/`` (or ``labels/``) of 2-D files (PNG,
  JPEG, TIFF, ...) paired by file stem; ``NAME_mask.png`` etc. also pair.

Splits are by *patient*, never by file: two frames of one ACDC patient, or two
HC18 images of one exam, in different splits would leak the answer into the
validation score. Every mistake raises :class:`MedAdaptError` naming the key
or file to fix.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MedAdaptError
from ..core.files import path_suffix
from ..io.imaging import IMAGE_EXTENSIONS, MASK_EXTENSIONS
from .config import SPLITS, DataConfig, natural_key, read_dataset_json

#: Extra nnU-Net image/label folder pairs read (when present) if ``images`` is not set.
NNUNET_FOLDERS = (("imagesTr", "labelsTr"), ("imagesVal", "labelsVal"), ("imagesTs", "labelsTs"))
#: Mask stems that pair with image ``NAME`` in the folder layout, tried in this order after ``NAME`` itself.
MASK_SUFFIXES = ("_mask", "_seg", "_segmentation", "_label", "_gt")
_LABEL_EXTENSIONS = (*MASK_EXTENSIONS, ".jpg", ".jpeg")  # found so that load_mask can explain why JPEG is refused
_QUIET_EXTENSIONS = (".json", ".txt", ".md", ".csv", ".yaml", ".yml", ".pkl")
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


# --------------------------------------------------------------------------- discovery
@dataclass
class Case:
    """One image (a volume or a 2-D file) and its label file, if any.

    ``subset`` is the image folder it came from (``imagesTr``, ``imagesVal``...),
    so a split can be named after the folder.
    """

    case_id: str
    patient_id: str
    image_path: Path
    label_path: Path | None
    subset: str = ""


def detect_layout(config: DataConfig) -> str:
    """``config.layout``, or for ``auto`` the layout the root folder looks like."""
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise MedAdaptError(f"data.root {root} is not a folder; point it at the dataset folder")
    if config.layout != "auto":
        return config.layout
    if (root / "imagesTr").is_dir() or (root / "dataset.json").is_file():
        return "nnunet"
    if (root / "images").is_dir() or config.images is not None:
        return "folder"
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise MedAdaptError(
        f"cannot tell the layout of {root}: expected imagesTr/ + labelsTr/ (nnU-Net/MSD) or images/ + masks/ "
        f"(folder of 2-D files); found sub-folders {found}. Set data.layout and data.images/data.labels"
    )


def _folder_pairs(config: DataConfig, layout: str) -> list[tuple[Path, Path | None]]:
    root = Path(config.root).expanduser()
    if config.images is not None:
        image_names = [config.images]
    elif layout == "nnunet":
        image_names = [i for i, _ in NNUNET_FOLDERS if i == "imagesTr" or (root / i).is_dir()]
    else:
        image_names = ["images"]
    pairs: list[tuple[Path, Path | None]] = []
    for name in image_names:
        images = root / name
        if not images.is_dir():
            raise MedAdaptError(
                f"image folder {images} not found (data.layout={layout}); set data.images to the folder holding the images"
            )
        # in the nnU-Net layout data.labels names imagesTr's labels; imagesTs and the others keep labelsX beside them
        if config.labels is not None and (layout != "nnunet" or config.images is not None or name == "imagesTr"):
            labels: Path | None = root / config.labels
            if not labels.is_dir():
                raise MedAdaptError(f"label folder {labels} (data.labels) not found; fix data.labels")
        else:
            if layout == "nnunet":  # imagesX pairs with labelsX beside it; another name pairs with nothing, not
                # labelsTr, whose files belong to imagesTr's cases (a stem in both would pair with the wrong scan)
                guesses = [images.parent / images.name.replace("images", "labels", 1)] \
                    if images.name.startswith("images") else []
            else:
                guesses = [root / "masks", root / "labels"]
            labels = next((g for g in guesses if g.is_dir()), None)
            if labels is None and not guesses:
                warnings.warn(
                    f"{images} is not an nnU-Net images* folder, so no label folder is paired with it: its cases are "
                    "unlabeled; set data.labels to the folder that holds its labels",
                    stacklevel=3,
                )
            elif labels is None and name not in ("imagesTs", "imagesVal"):
                warnings.warn(
                    f"no label folder ({' or '.join(g.name for g in guesses)}) next to {images}: its cases are "
                    "unlabeled; set data.labels if the labels live elsewhere",
                    stacklevel=3,
                )
        pairs.append((images, labels))
    return pairs


def _scan(folder: Path, extensions: tuple[str, ...], *, series: bool) -> dict[str, Path]:
    """Files (and, for images, DICOM-series sub-folders) of ``folder`` by stem; hidden files ignored."""
    found: dict[str, Path] = {}
    ignored: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue  # macOS '._x.nii.gz' twins in MSD tarballs, .DS_Store...
        if p.is_dir():
            if not series:
                ignored.append(p.name + "/")
                continue
            _check_series_folder(p)
            stem = p.name
        elif path_suffix(p) in extensions:
            stem = p.name[: len(p.name) - len(path_suffix(p))]
        else:
            if path_suffix(p) not in _QUIET_EXTENSIONS:
                ignored.append(p.name)
            continue
        if stem in found:
            raise MedAdaptError(f"{found[stem]} and {p} have the same name stem {stem!r}; keep one of them")
        found[stem] = p
    if ignored:
        more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        warnings.warn(
            f"ignored {len(ignored)} entries of {folder} that are not supported files: {ignored[:5]}{more} "
            f"(supported: {', '.join(extensions)})",
            stacklevel=4,
        )
    return found


def _check_series_folder(folder: Path) -> None:
    """A sub-folder of an image folder is read as one DICOM series; one that holds only other image files
    (PNG, JPEG, ...) is refused now, not when its first slice fails to read as DICOM."""
    first = None
    for f in folder.iterdir():  # stops at the first file that could be DICOM: a series is not listed whole
        if f.name.startswith(".") or not f.is_file():
            continue
        if path_suffix(f) not in IMAGE_EXTENSIONS or path_suffix(f) in (".dcm", ".dicom"):
            return
        first = first or f
    if first is not None:
        raise MedAdaptError(
            f"{folder} holds {first.suffix} images, but a sub-folder of the image folder is read as one DICOM "
            f"series: put the images in {folder.parent} itself, or set data.images (and data.labels) to the "
            "sub-folder")


def _strip_channels(images: dict[str, Path], labels: dict[str, Path], folder: Path,
                    channels: int | None = None) -> dict[str, Path]:
    """nnU-Net names images ``ID_0000``; strip that channel suffix when the folder follows it.

    Only when every file has a 4-digit suffix and every case has a ``_0000``
    file, and the labels (if any) pair better with the stripped names - so that
    MSD-style ``case_0001.nii.gz`` files keep their full id. A folder without
    labels must look like nnU-Net's in itself: ``channels`` files a case where
    ``dataset.json`` says how many, else the same channels in every case and
    one channel or several cases (``scan_0000`` ... ``scan_0005`` alone are
    six scans, not one case of six channels).
    """
    groups: dict[str, dict[str, Path]] = {}
    for stem, path in images.items():
        m = _CHANNEL.match(stem)
        if m is None:
            return images
        groups.setdefault(m.group(1), {})[m.group(2)] = path
    if not all("0000" in g for g in groups.values()):
        return images
    if labels and sum(s in labels for s in groups) < sum(s in labels for s in images):
        return images
    if not labels:
        kinds = {frozenset(g) for g in groups.values()}
        if channels is not None:
            if any(len(g) != channels for g in groups.values()):
                return images
        elif len(kinds) > 1 or (len(groups) == 1 and len(next(iter(kinds))) > 1):
            return images
    extra = sorted({c for g in groups.values() for c in g} - {"0000"})
    if extra:
        warnings.warn(
            f"cases in {folder} have {len(extra) + 1} channels (_0000, _{', _'.join(extra)}); medadapt trains on "
            "channel _0000 only",
            stacklevel=4,
        )
    return {case_id: g["0000"] for case_id, g in groups.items()}


def _label_for(stem: str, labels: dict[str, Path], layout: str, images: dict[str, Path]) -> Path | None:
    """The label file of image ``stem``: the same stem, or in the folder layout the stem with a mask suffix
    (``x_seg``), unless that is the exact-stem label of another image (image ``x_seg``'s own mask)."""
    if stem in labels:
        return labels[stem]
    if layout == "folder":
        return next((labels[stem + s] for s in MASK_SUFFIXES if stem + s in labels and stem + s not in images), None)
    return None


def _listed_ids(spec: object) -> list[str]:
    """The ids a split spec lists: a list's entries, a selection's ``split`` list and ``exclude`` entries."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict):
        return [*_listed_ids(spec.get("split")), *spec.get("exclude", [])]
    return []


def _known_patients(config: DataConfig) -> set[str]:
    """Ids named by the config's split lists and dataset.json's splits: these define patients."""
    known = {e for key in SPLITS for e in _listed_ids(getattr(config, key))}
    splits = (read_dataset_json(config) or {}).get("splits") or {}
    if isinstance(splits, dict):
        known |= {e for v in splits.values() if isinstance(v, list) for e in v if isinstance(e, str)}
    return known


def patient_of(case_id: str, config: DataConfig, known: set[str] | None = None) -> str:
    """The patient a case belongs to: ``case_pattern``'s first group, else the shortest
    ``_``-separated prefix of the case id that a split names (``patient003`` for
    ``patient003_frame01``), else the case id itself."""
    if config.case_pattern is not None:
        m = re.search(config.case_pattern, case_id)
        if m is None or m.group(1) is None:
            raise MedAdaptError(
                f"data.case_pattern {config.case_pattern!r} does not match case {case_id!r}; "
                "fix the pattern so its first group captures the patient id of every file"
            )
        return m.group(1)
    known = _known_patients(config) if known is None else known
    parts = case_id.split("_")
    return next(("_".join(parts[:i]) for i in range(1, len(parts)) if "_".join(parts[:i]) in known), case_id)


def discover_cases(config: DataConfig) -> list[Case]:
    """Every case of the dataset, sorted by case id (deterministic on every machine)."""
    layout = detect_layout(config)
    known = _known_patients(config)
    declared = (read_dataset_json(config) or {}) if layout == "nnunet" else {}
    declared = declared.get("channel_names", declared.get("modality")) if isinstance(declared, dict) else None
    channels = len(declared) if isinstance(declared, dict) and declared else None
    cases: dict[str, Case] = {}
    for image_dir, label_dir in _folder_pairs(config, layout):
        images = _scan(image_dir, IMAGE_EXTENSIONS, series=True)
        labels = _scan(label_dir, _LABEL_EXTENSIONS, series=False) if label_dir is not None else {}
        if not images and layout == "nnunet" and config.images is None and image_dir.name != "imagesTr":
            warnings.warn(f"{image_dir} is empty (its images withheld or not copied); the dataset's other folders are "
                          "read", stacklevel=2)
            continue
        if not images:
            raise MedAdaptError(
                f"no images found in {image_dir}; supported: {', '.join(IMAGE_EXTENSIONS)} files or DICOM-series folders"
            )
        if layout == "nnunet":
            images = _strip_channels(images, labels, image_dir, channels)
        used: set[Path] = set()
        for case_id, path in images.items():
            if case_id in cases:
                raise MedAdaptError(
                    f"case id {case_id!r} appears twice: {cases[case_id].image_path} and {path}; rename one of them"
                )
            label = _label_for(case_id, labels, layout, images)
            if label is not None:
                used.add(label)
            cases[case_id] = Case(case_id, patient_of(case_id, config, known), path, label, image_dir.name)
        orphans = sorted(p.name for p in labels.values() if p not in used)
        if orphans:
            warnings.warn(
                f"{len(orphans)} label files in {label_dir} have no image in {image_dir}: {orphans[:5]}; they are unused",
                stacklevel=2,
            )
    return [cases[k] for k in sorted(cases)]


# --------------------------------------------------------------------------- splits
def _matches(case: Case, entry: str) -> bool:
    return case.case_id == entry or case.case_id.startswith(entry + "_") or case.patient_id == entry


def _select(key: str, entries: list[str], cases: list[Case]) -> list[Case]:
    unmatched = [e for e in entries if not any(_matches(c, e) for c in cases)]
    if unmatched:
        examples = ", ".join(repr(c.case_id) for c in cases[:3])
        raise MedAdaptError(
            f"data.{key}: no case matches {unmatched} (an entry matches a case id equal to it or starting with "
            f"it + '_', or a patient id; case ids look like {examples})"
        )
    return [c for c in cases if any(_matches(c, e) for e in entries)]


def _named(key: str, name: str, cases: list[Case], config: DataConfig) -> list[Case]:
    splits = (read_dataset_json(config) or {}).get("splits") or {}
    if isinstance(splits, dict) and name in splits:
        entries = splits[name]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise MedAdaptError(f"dataset.json splits[{name!r}] must be a list of case/patient ids")
        return _select(f"{key} (dataset.json split {name!r})", entries, cases)
    subsets = sorted({c.subset for c in cases})
    if name in subsets:
        return [c for c in cases if c.subset == name]
    if name == "all":
        return list(cases)
    options = [*(sorted(splits) if isinstance(splits, dict) else []), *subsets, "all"]
    raise MedAdaptError(f"data.{key}: unknown split {name!r}; choose a list of ids or one of {options}")


def _in_range(patient: str, first: str, last: str) -> bool:
    """``first <= patient <= last`` with digit runs compared as numbers; ``last_...`` counts as ``last``."""
    key = natural_key(patient)
    return natural_key(first) <= key and (key <= natural_key(last) or patient.startswith(last + "_"))


def _excluded(key: str, entries: list[str], cases: list[Case], config: DataConfig) -> set[str]:
    """Patients of ``exclude``'s entries: each a dataset.json split or image folder name, else an id."""
    splits = (read_dataset_json(config) or {}).get("splits") or {}
    subsets = {c.subset for c in cases}
    out: set[str] = set()
    for entry in entries:
        if (isinstance(splits, dict) and entry in splits) or entry in subsets:
            out |= {c.patient_id for c in _named(f"{key}.exclude", entry, cases, config)}
        else:
            out |= {c.patient_id for c in _select(f"{key}.exclude", [entry], cases)}
    return out


def _selected(key: str, spec: dict, cases: list[Case], config: DataConfig, taken: set[str]) -> list[Case]:
    """A selection mapping's cases: ``split``, then ``range``, ``pattern``, ``exclude``, ``every`` in turn."""
    picked = _spec_cases(key, spec.get("split", "all"), cases, config, taken)
    steps = [f"split {spec.get('split', 'all')!r}: {len(picked)} cases"]
    if "range" in spec:
        first, last = spec["range"]
        picked = [c for c in picked if _in_range(c.patient_id, first, last)]
        steps.append(f"range: {len(picked)}")
    if "pattern" in spec:
        rx = re.compile(spec["pattern"])
        picked = [c for c in picked if rx.fullmatch(c.case_id) or rx.fullmatch(c.patient_id)]
        steps.append(f"pattern: {len(picked)}")
    if "exclude" in spec:
        drop = _excluded(key, spec["exclude"], cases, config)
        picked = [c for c in picked if c.patient_id not in drop]
        steps.append(f"exclude: {len(picked)}")
    if "every" in spec:
        patients = sorted({c.patient_id for c in picked}, key=lambda p: (natural_key(p), p))  # p9 before p09
        keep = set(patients[:: spec["every"]])
        picked = [c for c in picked if c.patient_id in keep]
    if not picked:
        examples = ", ".join(repr(c.patient_id) for c in cases[:3])
        raise MedAdaptError(
            f"data.{key}: the selection {spec} keeps no case ({'; '.join(steps)}); patient ids look like {examples}"
        )
    return picked


def _spec_cases(key: str, spec: object, cases: list[Case], config: DataConfig, taken: set[str]) -> list[Case]:
    """The cases a split spec names (``taken``: patients of labeled/val/test, for ``rest:``)."""
    if spec is None:
        return []
    if isinstance(spec, dict):
        return _selected(key, spec, cases, config, taken)
    if isinstance(spec, list):
        return _select(key, spec, cases)
    if spec.startswith("rest:"):
        return [c for c in _named(key, spec[5:], cases, config) if c.patient_id not in taken]
    return _named(key, spec, cases, config)


def _warn_unnamed_patients(cases: list[Case], config: DataConfig) -> None:
    """Warn when cases counted as patients of their own look like frames or exams of one patient: their ids
    share a prefix with a digit in it (``patient003`` of ``patient003_frame01`` and ``patient003_frame12``;
    ``amos_0004`` of ``amos_0004_75``), and no split or ``case_pattern`` names that prefix a patient."""
    if config.case_pattern is not None:
        return
    groups: dict[str, set[str]] = {}
    for c in cases:
        if c.patient_id != c.case_id:
            continue
        parts = c.case_id.split("_")
        for i in range(1, len(parts)):
            prefix = "_".join(parts[:i])
            if any(ch.isdigit() for ch in prefix):
                groups.setdefault(prefix, set()).add(c.case_id)
    # a prefix shared by most cases is the dataset's name (BraTS2021_...), not a patient
    shared = sorted((p for p, ids in groups.items() if 2 <= len(ids) <= max(2, len(cases) // 4)), key=natural_key)
    if len(shared) >= 2:
        warnings.warn(
            f"{len(shared)} case-id prefixes ({', '.join(map(repr, shared[:3]))}, ...) each hold several cases that "
            "are split as different patients; if each is one patient (frames, exams, slices), set data.case_pattern "
            "(e.g. '^([^_]+)_' or '^(.+?_\\d+)_') so that a patient's cases stay in one split",
            stacklevel=3,
        )


def split_cases(config: DataConfig, cases: list[Case]) -> dict[str, list[Case]]:
    """Cases of each split (``labeled``, ``unlabeled``, ``val``, ``test``), sorted by case id.

    A split is a list of ids, a split name, or a selection mapping
    (``split``/``range``/``pattern``/``exclude``/``every``; see
    :class:`~medadapt.data.DataConfig`). Raises if one patient is in two of
    labeled/val/test, if an unlabeled patient is in val/test (training on
    evaluation images, even without their labels, inflates the score), or if a
    labeled/val/test case has no label file.
    """
    _warn_unnamed_patients(cases, config)
    out: dict[str, list[Case]] = {}
    for key in ("labeled", "val", "test"):
        out[key] = _spec_cases(key, getattr(config, key), cases, config, set())
    patients = {key: {c.patient_id for c in out[key]} for key in out}
    for a, b in (("labeled", "val"), ("labeled", "test"), ("val", "test")):
        both = sorted(patients[a] & patients[b])
        if both:
            raise MedAdaptError(f"patients {both} are in both data.{a} and data.{b}; a patient must be in one split only")
    taken = patients["labeled"] | patients["val"] | patients["test"]
    unlabeled = _spec_cases("unlabeled", config.unlabeled, cases, config, taken)
    both = sorted({c.patient_id for c in unlabeled} & (patients["val"] | patients["test"]))
    if both:
        raise MedAdaptError(
            f"patients {both} are in data.unlabeled and in data.val/test; training on evaluation images leaks them "
            "(use unlabeled: 'rest:<split>' to exclude them automatically)"
        )
    out["unlabeled"] = unlabeled[: config.limit_unlabeled] if config.limit_unlabeled else unlabeled
    for key in ("labeled", "val", "test"):
        missing = [c.case_id for c in out[key] if c.label_path is None]
        if missing:
            raise MedAdaptError(f"data.{key} cases {missing} have no label file; add their labels or move them to unlabeled")
    return {key: out[key] for key in SPLITS}


__all__ = ["Case", "MASK_SUFFIXES", "NNUNET_FOLDERS", "detect_layout", "discover_cases", "patient_of", "split_cases"]
