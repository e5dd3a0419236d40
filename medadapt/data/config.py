"""The ``data:`` section of a config, and the target classes it names.

:class:`DataConfig` is what YAML maps onto; it checks every value up front so
that a typo fails at start-up with the key named, not an hour into training.
Class names come from ``dataset.json`` (both the MSD/nnU-Net v1 ``{value:
name}`` and the nnU-Net v2 ``{name: value}`` spelling) or are label values.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import MedAdaptError
from ..io.imaging import Window

LAYOUTS = ("auto", "nnunet", "folder")
SPLITS = ("labeled", "unlabeled", "val", "test")
ON_ERROR = ("stop", "skip")
SLICE_FILTERS = ("labeled", "all")
FOREGROUND = "foreground"

SplitSpec = list[str] | str | None


# --------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    """Where a dataset lives and how to turn it into 2-D training samples (a YAML ``data:`` section).

    ``classes`` picks the target classes by ``dataset.json`` name or by label
    value; target ``k`` (1-based, in this order) becomes label ``k`` and all
    else 0. ``"foreground"`` (or ``1``) on binary masks means "the object":
    2-D masks saved as 0/255 count 255 as 1, so HC18-style masks work as shipped.
    Split specs (``labeled``, ``unlabeled``, ``val``, ``test``) are a list of
    case/patient ids, a ``dataset.json["splits"]`` key, an image folder name
    (``"imagesVal"``), ``"all"``, or for ``unlabeled`` ``"rest:<split>"``
    (that split minus every patient of labeled/val/test). ``case_pattern``'s
    first regex group (searched in the case id) is the patient id.
    ``limit_unlabeled`` keeps the first N unlabeled cases (CPU-sized runs).
    ``window`` (CT preset or [level, width]) / ``percentiles`` ([low, high],
    MR) clip each slice as :func:`medadapt.io.imaging.load_image` would.
    ``on_error``: ``stop`` raises on an unreadable case naming the file;
    ``skip`` warns and records it in ``SliceDataset.skipped``. ``slice_filter``
    ``labeled`` trains on slices holding a target class (at least
    ``min_foreground`` pixels of them), ``all`` on every non-constant slice.
    """

    root: str
    classes: list[str | int]
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

    def __post_init__(self) -> None:
        if not isinstance(self.root, (str, os.PathLike)) or not str(self.root):
            raise MedAdaptError(f"data.root must be the dataset folder (a path), got {self.root!r}")
        self.root = str(self.root)
        if isinstance(self.classes, (str, int)) and not isinstance(self.classes, bool):
            self.classes = [self.classes]  # `classes: foreground` in YAML
        if not isinstance(self.classes, (list, tuple)) or not self.classes:
            raise MedAdaptError(
                "data.classes must be a non-empty list of class names (from dataset.json) or label values, "
                f"e.g. [left ventricle] or [1, 2]; got {self.classes!r}"
            )
        self.classes = list(self.classes)
        _choice("layout", self.layout, LAYOUTS)
        _choice("on_error", self.on_error, ON_ERROR)
        _choice("slice_filter", self.slice_filter, SLICE_FILTERS)
        if isinstance(self.axis, bool) or self.axis not in (0, 1, 2):
            raise MedAdaptError(f"data.axis must be 0, 1 or 2 (the volume axis to slice along), got {self.axis!r}")
        for key in ("images", "labels"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise MedAdaptError(f"data.{key} must be a sub-folder name of data.root, got {value!r}")
        for key in SPLITS:
            setattr(self, key, _split_spec(key, getattr(self, key)))
        if self.case_pattern is not None:
            try:
                groups = re.compile(self.case_pattern).groups
            except (re.error, TypeError) as exc:
                raise MedAdaptError(f"data.case_pattern {self.case_pattern!r} is not a valid regex: {exc}") from None
            if groups < 1:
                raise MedAdaptError(
                    f"data.case_pattern {self.case_pattern!r} needs a group for the patient id, e.g. '(\\d+)_'"
                )
        for key, low in (("limit_unlabeled", 1), ("min_foreground", 0)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise MedAdaptError(f"data.{key} must be an integer >= {low}, got {value!r}")
        if self.min_foreground is None:
            raise MedAdaptError("data.min_foreground must be an integer >= 0, got None")
        if self.window is not None and self.percentiles is not None:
            raise MedAdaptError("set either data.window (CT) or data.percentiles (MR), not both")
        if self.window is not None and not isinstance(self.window, str):
            self.window = list(_numbers("window", self.window, 2))
        if self.percentiles is not None:
            self.percentiles = list(_numbers("percentiles", self.percentiles, 2))

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
        return cls(**data)

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
        raise MedAdaptError(f"data.{key} must be one of {list(allowed)}, got {value!r}")


def _numbers(key: str, value: Any, n: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n:
        raise MedAdaptError(f"data.{key} must be a list of {n} numbers, got {value!r}")
    return out


def _split_spec(key: str, value: Any) -> SplitSpec:
    if value is None or isinstance(value, str):
        if isinstance(value, str) and value.startswith("rest:") and key != "unlabeled":
            raise MedAdaptError(f"data.{key}: 'rest:<split>' is only for data.unlabeled; list ids or name a split")
        return value
    if isinstance(value, (list, tuple)):
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            raise MedAdaptError(
                f"data.{key} has non-text ids {bad}; quote them in YAML (e.g. '010': an unquoted 010 is read as a number)"
            )
        return list(value)
    raise MedAdaptError(f"data.{key} must be a list of case/patient ids or a split name, got {value!r}")


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


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def resolve_classes(config: DataConfig) -> list[tuple[str, int]]:
    """``config.classes`` as ``(name, label value)`` pairs, in order.

    Names are looked up in ``dataset.json`` (case, ``_`` and ``-`` ignored, so
    ``left_ventricle`` finds ``left ventricle``); ``"foreground"`` also means
    the only object label of a binary dataset (value 1 when there is no
    ``dataset.json``). Integers are label values.
    """
    table = label_table(config)
    by_value = {v: n for n, v in table.items() if isinstance(v, int)}
    by_norm = {_norm(n): n for n in table}
    objects = [n for n, v in table.items() if v != 0]
    out: list[tuple[str, int]] = []
    for entry in config.classes:
        if isinstance(entry, bool) or not isinstance(entry, (str, int)):
            raise MedAdaptError(f"data.classes entries must be class names or integer label values, got {entry!r}")
        if isinstance(entry, int) or (_is_int_text(entry) and _norm(entry) not in by_norm):
            value = int(entry)
            if by_value and value not in by_value and value > 0:
                raise MedAdaptError(
                    f"data.classes entry {entry!r}: label value {value} is not in dataset.json labels {by_value}"
                )
            name = by_value.get(value, FOREGROUND if value == 1 and not table else str(value))
        elif _norm(entry) in by_norm:
            name = by_norm[_norm(entry)]
            value = table[name]  # type: ignore[assignment]
            if isinstance(value, list):
                raise MedAdaptError(
                    f"class {entry!r} is a region of label values {value} in dataset.json; medadapt trains one "
                    f"class per label value: list the values in data.classes instead, e.g. {value}"
                )
        elif _norm(entry) == FOREGROUND and len(objects) <= 1:
            name, value = (objects[0], table[objects[0]]) if objects else (FOREGROUND, 1)  # type: ignore[assignment]
            if isinstance(value, list):
                raise MedAdaptError(f"'foreground' is the region {name!r} (values {value}); list the values instead")
        else:
            known = ", ".join(repr(n) for n in objects) or "none (no dataset.json labels; use label values, or 'foreground')"
            raise MedAdaptError(f"unknown class {entry!r} in data.classes; known class names: {known}")
        if value <= 0:
            raise MedAdaptError(f"data.classes entry {entry!r} is label value {value} (background); pick object classes")
        if value in [v for _, v in out]:
            raise MedAdaptError(f"data.classes names label value {value} twice ({entry!r}); list each class once")
        out.append((name, value))
    return out


__all__ = [
    "DataConfig", "FOREGROUND", "LAYOUTS", "ON_ERROR", "SLICE_FILTERS", "SPLITS",
    "label_table", "read_dataset_json", "resolve_classes",
]
