"""What a batch is made of: its inputs (a folder, a dataset, a list) and the prompts file that goes with them.

:func:`find_inputs` turns what ``medadapt segment IN`` names into items with
deterministic output paths; :func:`read_prompts` checks a prompts file against
them, so a typo fails before the model loads. :mod:`.batch` runs them.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..core.files import path_suffix
from ..data import DataConfig, discover_cases
from ..io.dicom import separate_images
from ..io.imaging import IMAGE_EXTENSIONS

PathLike = str | os.PathLike
_VOLUME = (".nii", ".nii.gz")
_PROMPT_KEYS = ("boxes", "points", "point_labels")


@dataclass
class BatchItem:
    """One input: ``name`` is its path relative to the input root (the manifest's ``file``, the prompts key)."""

    name: str
    path: Path
    volume: bool  # a NIfTI file or a DICOM-series folder; otherwise one 2-D image
    out: Path
    error: str = ""  # known before reading (an output name two inputs share)


# --------------------------------------------------------------------------- inputs
def _is_dicom(path: Path) -> bool:
    """A DICOM file by its extension or, without one, by its signature (an unreadable file raises OSError)."""
    ext = path_suffix(path)
    if ext in (".dcm", ".dicom"):
        return True
    if ext or path.name.upper() == "DICOMDIR" or not _is_file(path):  # DICOMDIR: a CD's index, no image
        return False
    with path.open("rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where it may not be looked at (a folder without search permission)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _scan_folder(root: Path, skip: Path) -> list[tuple[str, Path, str]]:
    """(name, path, error) of the image files under ``root`` and its DICOM-series folders (a folder holding DICOM
    files is one series, unless each file is a series of its own: then each is a 2-D image); the output folders of ``medadapt segment`` runs inside it are left out. A folder that
    cannot be listed, and an extension-less file that cannot be read to tell whether it is DICOM, come back with
    an error, to be recorded as failed rather than left out unseen."""
    found: list[tuple[str, Path, str]] = []

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        if where == root:
            raise MedAdaptError(f"cannot list the input folder {root} ({exc.strerror or exc}); make it readable")
        found.append((where.relative_to(root).as_posix(), where,
                      f"cannot list this folder ({exc.strerror or exc}), so its files were not segmented; make it "
                      "readable (chmod) and run again"))

    seen = {root.resolve()}  # linked folders are followed, each real folder once (a link back up is no loop)

    def first_visit(d: Path) -> bool:
        real = d.resolve()
        if real in seen:
            return False
        seen.add(real)
        return True

    for folder, dirs, files in os.walk(root, onerror=unlisted, followlinks=True):
        here = Path(folder)
        # the output folder, and earlier ones (they hold a segment.json): masks are not inputs
        kept = sorted((d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip
                       and not _is_file(here / d / "segment.json")), key=lambda d: ((here / d).is_symlink(), d))
        dirs[:] = [d for d in kept if first_visit(here / d)]  # a real folder before a link to it, whatever the order
        files = sorted(f for f in files if not f.startswith("."))
        dicom, unreadable = [], []
        for f in files:
            try:
                dicom.append(_is_dicom(here / f))
            except OSError as exc:
                dicom.append(False)
                unreadable.append((f, exc))
        singles = separate_images([here / f for f, d in zip(files, dicom) if d]) if any(dicom) else []
        if singles:  # DICOM images that are each a series of their own (radiographs): one 2-D image each
            found += [(p.relative_to(root).as_posix(), p, "") for p in singles]
        elif any(dicom):  # a series: an unreadable file in it fails the series when it is read
            found.append((here.relative_to(root).as_posix(), here, ""))
        if singles or not any(dicom):
            found += [((here / f).relative_to(root).as_posix(), here / f,
                       f"cannot read it to tell whether it is a DICOM image ({exc.strerror or exc}); make it "
                       "readable, or move it out of the input folder") for f, exc in unreadable]
        found += [((here / f).relative_to(root).as_posix(), here / f, "") for f, d in zip(files, dicom)
                  if path_suffix(here / f) in IMAGE_EXTENSIONS and not d]
    return found


SERIES_FORMATS = ("nifti", "dicom-seg")


def case_blind(folder: Path) -> bool:
    """Whether ``folder`` (or its nearest existing parent) is on a file system that does not tell upper from
    lower case (macOS and Windows by default): a file made there is found under its name in capitals. Where
    that cannot be tried (a read-only folder), it is taken to be so."""
    here = folder
    while not here.is_dir() and here.parent != here:
        here = here.parent
    try:
        with tempfile.NamedTemporaryFile(prefix=".medadapt-case-", dir=here) as fh:
            made = Path(fh.name)
            return (made.parent / made.name.upper()).exists()
    except OSError:
        return True


def _output_key(out: Path, targets: Sequence[Path]):
    """How outputs are told apart: by their names, or by their names whatever the case where two differ in
    case only and ``out`` is on a file system that cannot keep both."""
    names = {str(t) for t in targets}
    if len({n.lower() for n in names}) < len(names) and case_blind(out):
        return lambda p: str(p).lower()
    return str


def _is_dataset(root: Path) -> bool:
    """A dataset medadapt.data reads: nnU-Net's ``imagesTr/``, or ``images/`` with ``masks/`` or ``labels/`` beside
    it (a folder that merely holds a sub-folder named ``images`` is an ordinary folder)."""
    try:
        return (root / "imagesTr").is_dir() or (
            (root / "images").is_dir() and ((root / "masks").is_dir() or (root / "labels").is_dir()))
    except OSError as exc:
        raise MedAdaptError(f"cannot look into the input folder {root} ({exc.strerror or exc}); make it "
                            "readable") from None


def _output_name(name: str, path: Path, volume: bool, series_format: str = "nifti") -> str:
    base = (Path(path).resolve().name or "input") if name == "." else name  # "." names the input folder itself
    if path.is_dir():  # a DICOM series -> a NIfTI label volume with the series' geometry, or a DICOM-SEG on it
        return base + (".seg.dcm" if series_format == "dicom-seg" else ".nii.gz")
    ext = path_suffix(path)
    if volume or ext == ".npy":
        return base
    return base[: len(base) - len(ext)] + ".png"  # JPEG, TIFF, BMP and 2-D DICOM -> a lossless PNG label map


def find_inputs(inputs: PathLike | Sequence[PathLike], out_dir: PathLike,
                series_format: str = "nifti", recorded: Mapping[str, str] | None = None) -> list[BatchItem]:
    """The items of a batch: a folder (searched recursively), a dataset (nnU-Net ``imagesTr/...`` or
    ``images/`` + ``masks/``: its images only), a list file (``.txt``, one path a line, relative to the
    list's folder), a list of paths, or one file. Names are relative to the folder, or to the deepest folder
    holding every listed file. A DICOM series' output is ``NAME.nii.gz``, or ``NAME.seg.dcm`` with
    ``series_format="dicom-seg"``. Where two inputs would write one output, the first by name writes it, unless
    ``recorded`` (output path -> input name, from an earlier run's manifest) says the other one wrote it."""
    recorded = recorded or {}
    if series_format not in SERIES_FORMATS:
        raise MedAdaptError(f"series_format must be one of {', '.join(SERIES_FORMATS)}; got {series_format!r}")
    out = Path(out_dir).expanduser().resolve()
    if isinstance(inputs, (str, os.PathLike)) and path_suffix(inputs) == ".txt" and Path(inputs).expanduser().is_file():
        listed = Path(inputs).expanduser()
        lines = listed.read_text(encoding="utf-8-sig").splitlines()  # utf-8-sig: a byte-order mark is no name
        inputs = [listed.parent / Path(s.strip()).expanduser() for s in lines
                  if s.strip() and not s.lstrip().startswith("#")]
    if isinstance(inputs, (str, os.PathLike)):
        root = Path(inputs).expanduser()
        if not root.exists():
            raise MedAdaptError(f"input {root} not found; give a folder, a dataset, a .txt list of files or a file")
        if root.resolve() == out:
            raise MedAdaptError(f"the output folder {out} is the input folder: write the masks to another folder")
        if root.is_file():
            pairs = [(root.name, root, "")]
        elif _is_dataset(root):
            with warnings.catch_warnings():  # missing label folders do not matter here
                warnings.simplefilter("ignore")
                layout = "nnunet" if (root / "imagesTr").is_dir() else "folder"
                cases = discover_cases(DataConfig(root=str(root), classes=[1], layout=layout))
            pairs = [(c.image_path.relative_to(root).as_posix(), c.image_path, "") for c in cases]
        else:
            pairs = _scan_folder(root, out)
    else:
        # names as listed (a link keeps its own name, not its target's), relative to the deepest common folder
        paths = [Path(os.path.abspath(Path(p).expanduser())) for p in inputs]
        if not paths:
            raise MedAdaptError("the list of inputs is empty")
        exists = [os.path.lexists(p) for p in paths]
        if not any(exists):
            raise MedAdaptError(f"none of the {len(paths)} listed inputs exists, e.g. {paths[0]}; paths in a .txt "
                                "list are relative to the list's folder")
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        pairs = [(p.relative_to(common).as_posix(), p, "" if found else
                  "not found: it is listed but no such file exists") for p, found in zip(paths, exists)]
    if not pairs:
        raise MedAdaptError(f"no images found in {inputs}; supported: {', '.join(IMAGE_EXTENSIONS)} files and "
                            "DICOM-series folders")
    items, owner, itself = [], {}, set()
    for name, path, error in pairs:
        try:
            volume = path.is_dir() or path_suffix(path) in _VOLUME
            target = out / _output_name(name, path, volume, series_format)
            if path.resolve() == target:
                itself.add(name)
        except OSError as exc:  # e.g. in a folder that can be listed but not entered
            error = error or f"cannot look at it ({exc.strerror or exc}); make it and its folder readable"
            volume, target = False, out / name
        items.append(BatchItem(name, path, volume, target, error))
    key = _output_key(out, [item.out for item in items if not item.error])
    for item in items:  # an output some input already wrote, by the manifest, stays that input's
        if not item.error and recorded.get(str(item.out)) == item.name:
            owner[key(item.out)] = item.name
    first: dict[str, BatchItem] = {}
    for item in items:
        first.setdefault(item.name, item)
    if len(first) < len(items):  # one file listed twice (in/a.png, in/./a.png): segmented once
        twice = sorted({item.name for item in items if first[item.name] is not item})
        warnings.warn(f"{len(twice)} inputs are listed more than once and are segmented once: "
                      f"{', '.join(twice[:5])}{', ...' if len(twice) > 5 else ''}", stacklevel=2)
        items = list(first.values())
    for item in items:
        if item.error:  # found but not readable: it has no output to claim
            continue
        if owner.setdefault(key(item.out), item.name) != item.name:
            blind = " (this file system does not tell names apart by case)" if key is not str else ""
            item.error = f"its output {item.out.name} is also the output of {owner[key(item.out)]}{blind}; rename one of them"
        elif item.name in itself:
            item.error = f"its output would replace the input {item.path}; choose another output folder"
    return items


# --------------------------------------------------------------------------- prompts
def _numbers(value: Any, where: str, width: int | None) -> list:
    rows = value if isinstance(value, list) else None
    ok = rows is not None and all(
        isinstance(r, list) and (width is None or len(r) == width)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in r) for r in rows)
    if not ok or not rows:
        shape = "[[x0, y0, x1, y1], ...]" if width == 4 else "[[x, y], ...]"
        raise MedAdaptError(f"{where} must be a non-empty list like {shape} of numbers; got {json.dumps(value)[:80]}")
    return rows


def _check_prompt(entry: Any, where: str) -> dict:
    if not isinstance(entry, dict) or not entry:
        raise MedAdaptError(f"{where} must be an object with boxes / points / point_labels")
    unknown = sorted(set(entry) - set(_PROMPT_KEYS))
    if unknown:
        raise MedAdaptError(f"{where} has unknown key(s) {unknown}; allowed: {list(_PROMPT_KEYS)}")
    out = {k: None for k in _PROMPT_KEYS}
    if "boxes" in entry:
        out["boxes"] = _numbers(entry["boxes"], f"{where}.boxes", 4)
    if "points" in entry:
        points = entry["points"]
        nested = isinstance(points, list) and all(isinstance(s, list) and s and isinstance(s[0], list) for s in points)
        _numbers([p for s in points for p in s] if nested and points else points, f"{where}.points", 2)
        out["points"] = points  # K x 2, or N x K x 2: one point set per box
    labels = entry.get("point_labels")
    if labels is not None:
        flat = [v for s in labels for v in (s if isinstance(s, list) else [s])] if isinstance(labels, list) else None
        if out["points"] is None or not flat or not all(v in (0, 1) and not isinstance(v, float) for v in flat):
            raise MedAdaptError(f"{where}.point_labels must go with points and hold 1 (foreground) or 0 (background)")
        out["point_labels"] = labels
    if out["boxes"] is None and out["points"] is None:
        raise MedAdaptError(f"{where} needs boxes or points")
    return out


def read_prompts(source: PathLike | Mapping[str, Any], items: Sequence[BatchItem]) -> dict[str, Any]:
    """Check a prompts file (or its parsed mapping): input name -> ``{"boxes": ..., "points": ...,
    "point_labels": ...}`` for a 2-D image, ``{"slices": {"K": {...}}}`` for a volume. Returns
    name -> prompts (volumes: slice index -> prompts)."""
    where = "prompts"
    if not isinstance(source, Mapping):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise MedAdaptError(f"cannot read the prompts file {where}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise MedAdaptError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(source, dict):
            raise MedAdaptError(f"{where} must hold a JSON object mapping input files to prompts")
    by_name = {i.name: i for i in items}
    out: dict[str, Any] = {}
    for name, entry in source.items():
        if name not in by_name:
            raise MedAdaptError(f"{where} names {name!r}, which is not an input; keys are paths relative to the "
                                f"input folder, e.g. {next(iter(by_name))!r}")
        if not by_name[name].volume:
            out[name] = _check_prompt(entry, f"{where}[{name!r}]")
            continue
        if not isinstance(entry, dict) or set(entry) != {"slices"} or not isinstance(entry["slices"], dict):
            raise MedAdaptError(f"{where}[{name!r}] is a volume: give prompts per slice as "
                                '{"slices": {"K": {"boxes": [[x0, y0, x1, y1]]}}}')
        slices = {}
        for k, e in entry["slices"].items():
            if not str(k).isdigit():
                raise MedAdaptError(f"{where}[{name!r}].slices key {k!r} is not a slice index (0, 1, ...)")
            slices[int(k)] = _check_prompt(e, f"{where}[{name!r}].slices[{k!r}]")
        if not slices:
            raise MedAdaptError(f"{where}[{name!r}].slices is empty: give prompts on at least one slice, or leave "
                                f"{name!r} out of the prompts file (the adapter's classes then segment it)")
        out[name] = slices
    return out


__all__ = ["BatchItem", "find_inputs", "read_prompts"]
