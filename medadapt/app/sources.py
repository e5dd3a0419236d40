"""What ``medadapt annotate DATA`` serves: the images of DATA, each with the file its labels go to.

DATA is one of:

* a folder of 2-D images (PNG, JPEG, TIFF, BMP, NPY, DICOM files) and/or
  NIfTI volumes, read flat (sub-folders are not searched); labels go to
  ``DATA/labels/NAME.png`` (``.nii.gz`` for a volume);
* a dataset in a layout :func:`medadapt.data.discover_cases` reads
  (``imagesTr/`` + ``labelsTr/``, or ``images/`` + ``masks/``): labels go to
  each case's existing label file, or to a new one in the dataset's label
  folder (``labelsTr/``, ``masks/``), so training reads them as they are;
* one NIfTI volume or 2-D image file: labels go to ``labels/`` beside it;
* a DICOM series folder: labels go to ``NAME-labels/`` beside the folder
  (a label file inside the series folder would sit among its slices).

``labels=DIR`` puts every label file (and the session file) in DIR instead.
Items are addressed by an opaque id (a hash of the path relative to DATA), so
a client never names a file.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MedAdaptError
from ..core.files import path_suffix
from ..data import DataConfig, detect_layout, discover_cases, label_table
from ..io.dicom import is_dicom
from ..io.imaging import IMAGE_EXTENSIONS, SAVE_MASK_EXTENSIONS, volume_shape

VOLUME_EXTENSIONS = (".nii", ".nii.gz")
SESSION_FILE = "annotate-session.json"


class UnknownItem(MedAdaptError):
    """An image id or slice that the listing does not hold (the server answers 404)."""


@dataclass(frozen=True)
class Item:
    """One image or volume of the data.

    ``key`` is its path relative to DATA (how the session file names it);
    ``id`` is the opaque id clients use; ``slices`` is 1 for a 2-D image.
    """

    id: str
    key: str
    name: str
    path: Path
    label_path: Path
    kind: str  # "image" or "volume"
    slices: int

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume"


@dataclass
class Source:
    """The items of DATA, where their labels go, and the classes the data names (``dataset.json``)."""

    root: Path
    items: list[Item]
    labels_dir: Path  # holds the session file
    classes: dict[str, int]
    layout: str  # "images", "dataset", "volume", "image" or "series"
    axis: int = 2

    @property
    def session_path(self) -> Path:
        return self.labels_dir / SESSION_FILE

    def item(self, item_id: str) -> Item:
        for it in self.items:
            if it.id == item_id:
                return it
        raise UnknownItem(f"unknown image id {item_id!r}: use an id from GET /api/state")


def item_id(key: str) -> str:
    """The opaque, stable id of the item at ``key`` (its path relative to DATA)."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def _volume_slices(path: Path, axis: int) -> int:
    return int(volume_shape(path)[axis])


def _item(key: str, path: Path, label_path: Path, axis: int) -> Item:
    volume = path.is_dir() or path_suffix(path) in VOLUME_EXTENSIONS
    slices = _volume_slices(path, axis) if volume else 1
    return Item(item_id(key), key, key, path, label_path, "volume" if volume else "image", slices)


def _label_name(stem: str, volume: bool) -> str:
    return stem + (".nii.gz" if volume else ".png")


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(path_suffix(path))] if path_suffix(path) else path.name


def _is_series(folder: Path) -> bool:
    """A folder of DICOM files (``.dcm`` or sniffed) and no other image file."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    dicom = [p for p in files if path_suffix(p) in (".dcm", ".dicom") or (path_suffix(p) == "" and is_dicom(p))]
    others = [p for p in files if path_suffix(p) in IMAGE_EXTENSIONS and p not in dicom]
    return bool(dicom) and not others


def _image_folder(root: Path, labels: Path | None, axis: int) -> Source:
    labels_dir = labels or root / "labels"
    if labels_dir == root:
        raise MedAdaptError(f"--labels {labels_dir} is DATA itself: label files would be listed as images; "
                            "give another folder (the default is DATA/labels)")
    items, stems = [], {}
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_file() or path_suffix(p) not in IMAGE_EXTENSIONS:
            continue
        stem = _stem(p)
        if stem in stems:
            raise MedAdaptError(f"{stems[stem]} and {p} have the same name stem {stem!r}, so their labels would share "
                                "one file; rename one of them")
        stems[stem] = p
        volume = path_suffix(p) in VOLUME_EXTENSIONS
        items.append(_item(p.name, p, labels_dir / _label_name(stem, volume), axis))
    if not items:
        raise MedAdaptError(f"no images found in {root}: give a folder of 2-D images ({', '.join(IMAGE_EXTENSIONS)}), "
                            "a dataset folder (imagesTr/ + labelsTr/ or images/ + masks/), a NIfTI file or a DICOM "
                            "series folder")
    return Source(root, items, labels_dir, {}, "images", axis)


def _dataset(root: Path, labels: Path | None, axis: int) -> Source:
    config = DataConfig(root=str(root), classes=[1], axis=axis)  # classes: unused by discovery
    layout = detect_layout(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unlabeled cases are what an annotation tool is for
        cases = discover_cases(config)
    default = "labelsTr" if layout == "nnunet" else next((n for n in ("masks", "labels") if (root / n).is_dir()), "masks")
    labels_dir = labels or root / default
    items = []
    for case in cases:
        volume = case.image_path.is_dir() or path_suffix(case.image_path) in VOLUME_EXTENSIONS
        if labels is not None:
            target = labels / _label_name(case.case_id, volume)
        elif case.label_path is not None:
            target = case.label_path
            if path_suffix(target) not in SAVE_MASK_EXTENSIONS:  # accepting rewrites the file: PNG or NIfTI only
                raise MedAdaptError(f"the label file {target} is a {path_suffix(target) or 'extension-less'} file, "
                                    "which the app cannot write back (it writes PNG or NIfTI): convert the dataset's "
                                    "label files to PNG (NIfTI for volumes), or give --labels DIR to write new label "
                                    "files there")
        else:
            folder = root / (case.subset.replace("images", "labels", 1) if layout == "nnunet" else default)
            target = folder / _label_name(case.case_id, volume)
        key = case.image_path.relative_to(root).as_posix()
        items.append(Item(item_id(key), key, case.case_id, case.image_path, target,
                          "volume" if volume else "image", _volume_slices(case.image_path, axis) if volume else 1))
    classes = {name: value for name, value in label_table(config).items()
               if isinstance(value, int) and value > 0}
    return Source(root, items, labels_dir, classes, "dataset", axis)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_targets(source: Source) -> Source:
    """Refuse a listing in which accepting would write over an image (``--labels`` naming the images' own
    folder): a label file that is an item's image, by path, link or hard link."""
    images = {it.path.resolve(): it for it in source.items}
    for it in source.items:
        other = images.get(it.label_path.resolve())
        if other is None and _same_file(it.label_path, it.path):
            other = it
        if other is not None:
            whose = "the image itself" if other is it else f"the image of {other.name}"
            raise MedAdaptError(f"the label file of {it.name} would be {it.label_path}, {whose}: accepting would "
                                "overwrite the image; give another --labels folder")
    return source


def find_items(data: str | os.PathLike, labels: str | os.PathLike | None = None, axis: int = 2) -> Source:
    """The items of DATA and where each one's labels go (see the module docstring)."""
    return _check_targets(_find_items(data, labels, axis))


def _find_items(data: str | os.PathLike, labels: str | os.PathLike | None, axis: int) -> Source:
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise MedAdaptError(f"axis must be 0, 1 or 2 (the volume axis to slice along); got {axis!r}")
    root = Path(data).expanduser().resolve()
    if not root.exists():
        raise MedAdaptError(f"DATA not found: {root}")
    out = None if labels is None else Path(labels).expanduser().resolve()
    if out is not None and out.exists() and not out.is_dir():
        raise MedAdaptError(f"--labels {out} is a file: give a folder")
    if root.is_file():
        if path_suffix(root) not in IMAGE_EXTENSIONS:
            raise MedAdaptError(f"{root} is not an image or volume file ({', '.join(IMAGE_EXTENSIONS)})")
        volume = path_suffix(root) in VOLUME_EXTENSIONS
        labels_dir = out or root.parent / "labels"
        item = _item(root.name, root, labels_dir / _label_name(_stem(root), volume), axis)
        return Source(root.parent, [item], labels_dir, {}, "volume" if volume else "image", axis)
    if (root / "imagesTr").is_dir() or (root / "dataset.json").is_file() or (root / "images").is_dir():
        return _dataset(root, out, axis)
    if _is_series(root):
        labels_dir = out or root.parent / f"{root.name}-labels"
        item = _item(root.name, root, labels_dir / _label_name(root.name, True), axis)
        return Source(root.parent, [item], labels_dir, {}, "series", axis)
    return _image_folder(root, out, axis)


__all__ = ["Item", "SESSION_FILE", "Source", "UnknownItem", "find_items", "item_id"]
