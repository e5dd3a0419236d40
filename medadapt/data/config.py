"""The ``data:`` section of a config, and the target classes it names.

:class:`DataConfig` is what YAML maps onto; it checks every value up front so
that a typo fails at start-up with the key named, not an hour into training.
Class names come from ``dataset.json`` (both the MSD/nnU-Net v1 ``{value:
name}`` and the nnU-Net v2 ``{name: value}`` spelling) or are label values.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.config import check_fields, check_ranges, short_repr
from ..core.errors import MedAdaptError
from ..core.files import expand_path
from ..io.imaging import Window, apply_window

LAYOUTS = ("auto", "nnunet", "folder")
SPLITS = ("labeled", "unlabeled", "val", "test")
ON_ERROR = ("stop", "skip")
SLICE_FILTERS = ("labeled", "all")
SCRIBBLES = ("none", "files", "simulate")
FOREGROUND = "foreground"

#: Keys of a split selection mapping (``labeled: {range: ["000", "004"]}``), applied in this order.
SELECTION_KEYS = ("split", "range", "pattern", "exclude", "every")

SplitSpec = list[Any] | str | dict[str, Any] | None  # list items are checked (and explained) in __post_init__


# --------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    """Where a dataset lives and how to turn it into 2-D training samples (a YAML ``data:`` section).

    Layout: ``layout`` is ``nnunet`` (``imagesTr/labelsTr``, also
    ``imagesVal/labelsVal`` and ``imagesTs/labelsTs``), ``folder`` (``images/``
    with ``masks/`` or ``labels/``, 2-D files paired by name stem) or ``auto``;
    ``images`` / ``labels`` name other sub-folders of ``root``, whose
    ``${VARIABLES}`` are expanded. ``axis`` is the volume axis slices are
    taken along.

    Classes: ``classes`` picks the target classes, in order; target ``k``
    (1-based) becomes label ``k`` and every other value 0. It is a list of
    ``dataset.json`` class names or label values (``[left ventricle, 2]``);
    without ``dataset.json`` labels, a name is the label value of its position
    in the list (``[polyp]`` is value 1, ``[a, b]`` values 1 and 2). A mapping
    names the values itself: ``{polyp: 1}`` (name -> label value; ``{1: polyp}``
    is read the same way). ``"foreground"`` means the only object label of a
    binary dataset (value 1 without ``dataset.json``).

    Mask values: label volumes and 2-D masks are read as stored integers. A
    2-D mask holding exactly the values 0 and 255 counts 255 as value 1 when the
    only class is value 1 (``[1]``, ``[foreground]``, ``[polyp]``,
    ``{polyp: 1}``), so 0/255 PNG masks work as saved; ``{polyp: 255}`` reads
    the 255 directly. Any other value is its own label: a mask whose edges were
    smoothed to 1..254 only counts its exact class values, so re-threshold such
    masks to 0/255 (or 0..K) first. JPEG masks are refused (lossy compression
    changes label values at every edge), as are colour masks; non-integer
    values in a label volume are an error.

    Splits: ``labeled``, ``unlabeled``, ``val``, ``test`` each take

    * a list of ids: a case id, a case-id prefix before ``_``
      (``patient003`` for ``patient003_frame01``), or a patient id;
    * a name: a ``dataset.json["splits"]`` key, an image folder name
      (``"imagesVal"``), ``"all"``, or for ``unlabeled`` ``"rest:<split>"``
      (that split minus every patient of labeled/val/test);
    * a selection mapping, whose filters apply in this order:
      ``split`` (a list or name as above; default ``all``), ``range:
      [first, last]`` (patient ids from first to last inclusive, numbers
      compared as numbers, so ``["9", "10"]`` and ``["009", "010"]`` both
      work), ``pattern`` (a regex that must match a whole case id or patient
      id), ``exclude`` (split names or ids whose patients are removed),
      ``every: k`` (every k-th patient, from the first, in id order). E.g.
      ``labeled: {range: ["000", "004"]}``, ``unlabeled: {split: train,
      exclude: [labeled_7], every: 4}``. A selection that keeps no case is an
      error; unknown keys are named.

    Ids are text: quote numbers in YAML (``'010'``). A split never shares a
    patient with another (labeled/val/test), and unlabeled never with
    val/test. ``case_pattern``'s first regex group (searched in the case id)
    is the patient id, e.g. ``'^(\\d+)_'`` for ``010_HC`` / ``010_2HC``.
    ``limit_unlabeled`` keeps the first N unlabeled cases (CPU-sized runs).

    Intensities: ``window`` (CT preset or [level, width]) / ``percentiles``
    ([low, high], MR) clip each slice as :func:`medadapt.io.imaging.load_image`
    would. Reading: ``on_error`` ``stop`` raises on an unreadable case naming
    the file; ``skip`` warns and records it in ``SliceDataset.skipped``.
    ``slice_filter`` ``labeled`` trains on slices holding a target class (at
    least ``min_foreground`` pixels of them), ``all`` on every non-constant
    slice.

    Scribbles: ``scribbles`` says what the labelled cases' labels are.
    ``none``: full masks. ``files``: the label files hold sparse strokes, with
    ``unlabeled_value`` (default 255) wherever nobody drew; those pixels read
    as -1, and validation masks must not use that value. ``simulate``: strokes
    are drawn from the full masks of the labelled cases (for benchmarks; the
    trainer does it, seeded per slice). A slice's strokes should name every
    target class it holds: the optional pseudo-labels take a class without a
    stroke to be absent there. See ``docs/data.md`` for the layouts and ``docs/configuration.md``
    for every key.
    """

    root: str
    classes: list[str | int] | dict[str | int, int | str] | str | int
    layout: str = "auto"
    images: str | None = None
    labels: str | None = None
    axis: int = 2
    labeled: SplitSpec = None
    unlabeled: SplitSpec = None
    val: SplitSpec = None
    test: SplitSpec = None
    case_pattern: str | None = None
    limit_unlabeled: int | None = None
    window: str | list[float] | None = None
    percentiles: list[float] | None = None
    on_error: str = "stop"
    slice_filter: str = "labeled"
    min_foreground: int = 0
    scribbles: str = "none"
    unlabeled_value: int = 255

    def __post_init__(self) -> None:
        if not isinstance(self.root, (str, os.PathLike)) or not str(self.root):
            raise MedAdaptError(f"data.root must be the dataset folder (a path), got {short_repr(self.root)}")
        self.root = expand_path(self.root, "data.root")  # ${MEDADAPT_DATA}/acdc: recipes carry no machine paths
        check_fields(self, "data")
        if isinstance(self.classes, (str, int)) and not isinstance(self.classes, bool):
            self.classes = [self.classes]  # `classes: foreground` in YAML
        if isinstance(self.classes, dict) and self.classes:
            self.classes = _class_mapping(self.classes)
        elif not isinstance(self.classes, (list, tuple)) or not self.classes:
            raise MedAdaptError(
                "data.classes must be a non-empty list of class names or label values, or a mapping of "
                f"names to label values, e.g. [left ventricle], [1, 2] or {{polyp: 1}}; got {short_repr(self.classes)}"
            )
        else:
            self.classes = list(self.classes)
        _choice("layout", self.layout, LAYOUTS)
        _choice("on_error", self.on_error, ON_ERROR)
        _choice("slice_filter", self.slice_filter, SLICE_FILTERS)
        _choice("scribbles", self.scribbles, SCRIBBLES)
        if isinstance(self.unlabeled_value, bool) or not isinstance(self.unlabeled_value, int):
            raise MedAdaptError(f"data.unlabeled_value must be an integer label value (e.g. 255), "
                                f"got {short_repr(self.unlabeled_value)}")
        if isinstance(self.axis, bool) or self.axis not in (0, 1, 2):
            raise MedAdaptError(f"data.axis must be 0, 1 or 2 (the volume axis to slice along), got {short_repr(self.axis)}")
        for key in ("images", "labels"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise MedAdaptError(f"data.{key} must be a sub-folder name of data.root, got {short_repr(value)}")
        for key in SPLITS:
            setattr(self, key, _split_spec(key, getattr(self, key)))
        if self.case_pattern is not None:
            try:
                groups = re.compile(self.case_pattern).groups
            except (re.error, TypeError) as exc:
                raise MedAdaptError(f"data.case_pattern {short_repr(self.case_pattern)} is not a valid regex: {exc}") from None
            if groups < 1:
                raise MedAdaptError(
                    f"data.case_pattern {short_repr(self.case_pattern)} needs a group for the patient id, e.g. '(\\d+)_'"
                )
        if self.window is not None and self.percentiles is not None:
            raise MedAdaptError("set either data.window (CT) or data.percentiles (MR), not both")
        if self.window is not None and not isinstance(self.window, str):
            self.window = list(_numbers("window", self.window, 2))
        if self.window is not None:
            try:
                apply_window(np.zeros((1, 1), np.float32), self.window_arg)  # the readers' own check
            except MedAdaptError as exc:
                raise MedAdaptError(f"data.window: {exc}") from None
        if self.percentiles is not None:
            self.percentiles = list(_numbers("percentiles", self.percentiles, 2))
        check_ranges(self, "data", {
            "percentiles": (lambda v: v is None or 0 <= v[0] < v[1] <= 100 and all(map(math.isfinite, v)),
                            "[low, high] with 0 <= low < high <= 100, or null"),
            "limit_unlabeled": (lambda v: v is None or v >= 1, "a number of cases >= 1, or null for all"),
            "min_foreground": (lambda v: v >= 0, "a number of pixels >= 0"),
        })

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DataConfig:
        """Build from a YAML ``data:`` section, rejecting unknown keys (a typo must not be silently ignored)."""
        if not isinstance(data, dict):
            raise MedAdaptError(f"the data config must be a mapping of keys to values, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise MedAdaptError(f"unknown key(s) {unknown} in the data config; allowed keys: {names}")
        missing = [k for k in ("root", "classes") if k not in data]
        if missing:
            raise MedAdaptError(f"the data config needs {' and '.join(missing)}: e.g. root: path/to/dataset, classes: [1]")
        return cls(**data)  # every value's type and range is checked in __post_init__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def window_arg(self) -> Window | None:
        """``window`` as the readers take it: a preset name or a (level, width) tuple."""
        return self.window if self.window is None or isinstance(self.window, str) else tuple(self.window)

    @property
    def percentiles_arg(self) -> tuple[float, float] | None:
        return None if self.percentiles is None else (self.percentiles[0], self.percentiles[1])


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MedAdaptError(f"data.{key} must be one of {list(allowed)}, got {short_repr(value)}")


def _numbers(key: str, value: Any, n: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n:
        raise MedAdaptError(f"data.{key} must be a list of {n} numbers, got {short_repr(value)}")
    return out


def _class_mapping(mapping: dict[Any, Any]) -> dict[str, int]:
    """``{name: value}`` (or the ``{value: name}`` spelling of MSD's dataset.json) as ``{name: value}``."""
    out: dict[str, int] = {}
    for a, b in mapping.items():
        name, value = (b, a) if _is_label_value(a) and isinstance(b, str) else (a, b)
        if not isinstance(name, str) or not name.strip() or not _is_label_value(value):
            raise MedAdaptError(
                f"data.classes mapping must give each class name a label value, e.g. {{polyp: 1}}; got {short_repr(a)}: {short_repr(b)}"
            )
        out[name] = int(value)
    return out


def _is_label_value(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or _is_int_text(value)


def _text_ids(key: str, value: Any) -> list[str]:
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise MedAdaptError(
            f"data.{key} has non-text ids {short_repr(bad)}; quote them in YAML (e.g. '12' or '1e3': unquoted, "
            "YAML reads them as numbers)"
        )
    return list(value)


def natural_key(text: str) -> list[str | int]:
    """Sort key that compares digit runs as numbers: ``p9 < p10``, ``009 == 9`` (range and every-k order)."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"([0-9]+)", text))]


def _split_spec(key: str, value: Any) -> SplitSpec:
    if value is None or isinstance(value, str):
        if isinstance(value, str) and value.startswith("rest:") and key != "unlabeled":
            raise MedAdaptError(f"data.{key}: 'rest:<split>' is only for data.unlabeled; list ids or name a split")
        return value
    if isinstance(value, (list, tuple)):
        return _text_ids(key, value)
    if isinstance(value, dict):
        return _selection(key, value)
    raise MedAdaptError(
        f"data.{key} must be a list of case/patient ids, a split name, or a selection mapping "
        f"({'/'.join(SELECTION_KEYS)}), got {short_repr(value)}"
    )


def _selection(key: str, spec: dict[Any, Any]) -> dict[str, Any]:
    """Check a selection mapping (``{split: train, exclude: [labeled_7], every: 4}``); returns a clean copy."""
    unknown = sorted(str(k) for k in spec if k not in SELECTION_KEYS)
    if unknown:
        raise MedAdaptError(f"unknown key(s) {unknown} in data.{key}; a selection takes {list(SELECTION_KEYS)}")
    if not spec:
        raise MedAdaptError(f"data.{key} is an empty selection; give one of {list(SELECTION_KEYS)} or a list of ids")
    out: dict[str, Any] = {}
    for name in SELECTION_KEYS:  # stored in the order they apply
        if name not in spec:
            continue
        value, where = spec[name], f"{key}.{name}"
        if name == "split":
            if isinstance(value, dict) or value is None:
                raise MedAdaptError(f"data.{where} must be a split name or a list of ids, got {short_repr(value)}")
            value = _split_spec(key, value)
        elif name == "range":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise MedAdaptError(f"data.{where} must be [first, last] ids (inclusive), e.g. ['000', '004']; got {short_repr(value)}")
            value = _text_ids(where, value)
            if natural_key(value[0]) > natural_key(value[1]):
                raise MedAdaptError(f"data.{where}: first id {short_repr(value[0])} sorts after last id {short_repr(value[1])}; swap them")
        elif name == "pattern":
            try:
                re.compile(value)
            except (re.error, TypeError) as exc:
                raise MedAdaptError(f"data.{where} {short_repr(value)} is not a valid regex: {exc}") from None
        elif name == "exclude":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not items:
                raise MedAdaptError(f"data.{where} must be split names or ids (a non-empty list), got {short_repr(value)}")
            value = _text_ids(where, items)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MedAdaptError(f"data.{where} must be an integer >= 1 (keep every k-th patient), got {short_repr(value)}")
        out[name] = value
    return out


# --------------------------------------------------------------------------- dataset.json and classes
def read_dataset_json(config: DataConfig) -> dict[str, Any] | None:
    """``root/dataset.json`` as a dict, or None when there is none (it is optional in every layout)."""
    path = Path(config.root).expanduser() / "dataset.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedAdaptError(f"could not read {path}: {exc}; fix the JSON or remove the file") from exc
    if not isinstance(meta, dict):
        raise MedAdaptError(f"{path} must hold a JSON object (with 'labels' and optionally 'splits')")
    return meta


def label_table(config: DataConfig) -> dict[str, int | list[int]]:
    """``dataset.json["labels"]`` as {name: value}, whichever way round the file writes it.

    MSD / nnU-Net v1 write ``{"1": "liver"}`` (value -> name), nnU-Net v2 writes
    ``{"liver": 1}`` (name -> value, or a list of values for a region).
    """
    meta = read_dataset_json(config)
    labels = (meta or {}).get("labels")
    if labels is None:
        return {}
    where = Path(config.root) / "dataset.json"
    if not isinstance(labels, dict):
        raise MedAdaptError(f"{where}: 'labels' must be an object mapping label values to names (or names to values)")
    try:
        if all(_is_int_text(k) for k in labels):
            return {str(name): int(value) for value, name in labels.items()}
        return {str(name): (int(value) if not isinstance(value, list) else [int(v) for v in value])
                for name, value in labels.items()}
    except (TypeError, ValueError):
        raise MedAdaptError(f"{where}: 'labels' values must be integers; got {labels}") from None


def _is_int_text(text: Any) -> bool:
    return isinstance(text, str) and text.strip().lstrip("-").isdigit()


def class_key(name: str) -> str:
    """A class name as names are compared: case, ``_``, ``-`` and spacing aside (``Left_Ventricle`` is
    ``left ventricle``)."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def resolve_classes(config: DataConfig) -> list[tuple[str, int]]:
    """``config.classes`` as ``(name, label value)`` pairs, in order.

    Names are looked up in ``dataset.json`` (case, ``_`` and ``-`` ignored, so
    ``left_ventricle`` finds ``left ventricle``); ``"foreground"`` also means
    the only object label of a binary dataset (value 1 when there is no
    ``dataset.json``). Integers are label values. Without ``dataset.json``
    labels, any other name is the value of its (1-based) position in the list.
    A ``{name: value}`` mapping gives both (values checked against
    ``dataset.json`` when it has labels).
    """
    table = label_table(config)
    by_value = {v: n for n, v in table.items() if isinstance(v, int)}
    by_norm = {class_key(n): n for n in table}
    objects = [n for n, v in table.items() if v != 0]
    out: list[tuple[str, int]] = []
    if isinstance(config.classes, dict):
        for name, value in config.classes.items():
            if by_value and value not in by_value and value > 0:
                raise MedAdaptError(
                    f"data.classes {short_repr(name)}: label value {value} is not in dataset.json labels {by_value}"
                )
            _add_class(out, name, value, name)
        return out
    for position, entry in enumerate(config.classes, start=1):
        if isinstance(entry, bool) or not isinstance(entry, (str, int)):
            raise MedAdaptError(f"data.classes entries must be class names or integer label values, got {short_repr(entry)}")
        if isinstance(entry, int) or (_is_int_text(entry) and class_key(entry) not in by_norm):
            value = int(entry)
            if by_value and value not in by_value and value > 0:
                raise MedAdaptError(
                    f"data.classes entry {short_repr(entry)}: label value {value} is not in dataset.json labels {by_value}"
                )
            name = by_value.get(value, FOREGROUND if value == 1 and not table else str(value))
        elif class_key(entry) in by_norm:
            name = by_norm[class_key(entry)]
            value = table[name]  # type: ignore[assignment]
            if isinstance(value, list):
                raise MedAdaptError(
                    f"class {short_repr(entry)} is a region of label values {value} in dataset.json; medadapt trains one "
                    f"class per label value: list the values in data.classes instead, e.g. {value}"
                )
        elif class_key(entry) == FOREGROUND and len(objects) <= 1:
            name, value = (objects[0], table[objects[0]]) if objects else (FOREGROUND, 1)  # type: ignore[assignment]
            if isinstance(value, list):
                raise MedAdaptError(f"'foreground' is the region {short_repr(name)} (values {value}); list the values instead")
        elif not table:  # no dataset.json labels: a name is the value of its place in the list
            name, value = entry, position
        else:
            known = ", ".join(repr(n) for n in objects)
            raise MedAdaptError(
                f"unknown class {short_repr(entry)} in data.classes; known class names: {known} "
                f"(or give its label value: {{{entry}: VALUE}})"
            )
        _add_class(out, name, value, entry)
    return out


def _add_class(out: list[tuple[str, int]], name: str, value: int, entry: Any) -> None:
    if value <= 0:
        raise MedAdaptError(f"data.classes entry {short_repr(entry)} is label value {value} (background); pick object classes")
    if value in [v for _, v in out]:
        raise MedAdaptError(f"data.classes names label value {value} twice ({short_repr(entry)}); list each class once")
    out.append((name, value))


def check_class_order(config: DataConfig, names: Sequence[str], model: str = "the adapter") -> None:
    """Refuse a data config that lists ``names`` (the model's classes, in its order) in another order or count:
    its label values would be read under the wrong names."""
    if len(config.classes) != len(names):
        raise MedAdaptError(f"the data config names {len(config.classes)} classes {config.classes} but {model} has "
                            f"{len(names)} {list(names)}; data.classes must list {model}'s classes in the same order")
    given = [n for n, _ in resolve_classes(config)]
    mine, theirs = [class_key(str(n)) for n in given], [class_key(str(n)) for n in names]
    if sorted(mine) == sorted(theirs) and mine != theirs:
        raise MedAdaptError(f"the data config lists {model}'s classes in another order ({given}; {model} has "
                            f"{list(names)}): data.classes must list them in {model}'s order")


__all__ = [
    "check_class_order", "DataConfig", "FOREGROUND", "LAYOUTS", "ON_ERROR", "SELECTION_KEYS", "SLICE_FILTERS", "SPLITS",
    "class_key", "label_table", "natural_key", "read_dataset_json", "resolve_classes",
]
