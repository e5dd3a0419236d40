"""Accepted label maps on disk, and the session file that lets a restarted server resume.

A 2-D image's labels are one PNG label map; a volume's are one NIfTI label map
in the volume's own geometry (``save_mask(..., reference=volume)``), filled a
slice at a time. Accepting reads the label file as it is on disk, paints the
accepted object into it and writes it back atomically, so an earlier accepted
slice or class is never lost (where two objects overlap, the later one wins).

Scribbles of an accepted object are also kept as strokes, in a label file of
the same name under ``LABELS/strokes/``: the class value on its strokes, 0 on
background strokes and 255 wherever nobody drew, the form that training from
scribbles reads (``data.scribbles: files``, ``unlabeled_value: 255``).

The session file (``annotate-session.json`` in the labels folder, written
atomically) records which slices were accepted, the classes made in the app
and where the user was.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError
from ..core.files import atomic_write_json
from ..io.imaging import display_orientation, load_mask, load_volume, save_mask, volume_shape
from ..prompts.scribbles import rasterize_strokes
from .sources import Item, Source

SESSION_FORMAT = 1
STROKES_DIR = "strokes"
UNMARKED = 255  # a stroke file's value wherever nobody drew


def _read_session(source: Source) -> dict[str, Any]:
    path = source.session_path
    empty = {"format": SESSION_FORMAT, "classes": {}, "accepted": {}, "position": None}
    if not path.is_file():
        return empty
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedAdaptError(f"could not read the session file {path}: {exc}; fix it or delete it (the label "
                            "files stay; only the list of accepted slices is lost)") from exc
    ok = (isinstance(data, dict) and isinstance(data.get("classes", {}), dict)
          and isinstance(data.get("accepted", {}), dict))
    if not ok:
        raise MedAdaptError(f"the session file {path} does not hold a medadapt annotate session; delete it or point "
                            "--labels at another folder")
    return {**empty, **data}


class LabelStore:
    """Label files of a :class:`~medadapt.app.sources.Source` and its session file."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.session = _read_session(source)

    # ------------------------------------------------------------------ session
    def save_session(self) -> None:
        atomic_write_json(self.source.session_path, self.session)

    def accepted_slices(self, item: Item) -> list[int]:
        entry = self.session["accepted"].get(item.key) or {}
        return sorted(int(k) for k in entry.get("slices", []))

    def accepted_classes(self, item: Item) -> list[str]:
        return sorted((self.session["accepted"].get(item.key) or {}).get("classes", []))

    @property
    def classes(self) -> dict[str, int]:
        """Classes made in the app (name -> label value)."""
        return {str(k): int(v) for k, v in self.session["classes"].items()}

    def add_class(self, name: str, value: int) -> None:
        self.session["classes"][name] = int(value)
        self.save_session()

    def position(self) -> tuple[Item, int] | None:
        pos = self.session.get("position")
        if not isinstance(pos, dict):
            return None
        item = next((it for it in self.source.items if it.key == pos.get("key")), None)
        k = pos.get("slice")
        if item is None or isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < item.slices:
            return None
        return item, k

    def set_position(self, item: Item, k: int) -> None:
        if self.session.get("position") != {"key": item.key, "slice": k}:
            self.session["position"] = {"key": item.key, "slice": k}
            self.save_session()

    # ------------------------------------------------------------------ label files
    def slice_labels(self, item: Item, k: int, size: tuple[int, int]) -> np.ndarray:
        """The label map of slice ``k`` (display orientation, H x W int64); zeros when nothing is saved."""
        if not item.label_path.exists():
            return np.zeros(size, dtype=np.int64)
        if item.is_volume:
            labels = load_mask(item.label_path, slice_index=k, axis=self.source.axis)
        else:
            labels = load_mask(item.label_path)
        if labels.shape != tuple(size):
            raise MedAdaptError(f"the label file {item.label_path} holds a {labels.shape} map but {item.name} is "
                                f"{tuple(size)}; move the label file away or fix it")
        return labels

    def _volume_labels(self, item: Item, path=None, fill: int = 0, what: str = "label") -> np.ndarray:
        """The label volume at ``path`` (default the item's label file) in ``item``'s shape, int32; ``fill``
        everywhere when there is none yet (``what`` names the file in errors)."""
        path = item.label_path if path is None else path
        shape = volume_shape(item.path)
        if not path.exists():
            return np.full(shape, fill, dtype=np.int32)
        data, _ = load_volume(path, dtype=np.float64)  # whole label values exact beyond float32's 2^24
        if data.shape != tuple(shape):
            raise MedAdaptError(f"the {what} volume {path} has shape {data.shape} but {item.name} has "
                                f"{tuple(shape)}; move the {what} file away or fix it")
        return np.rint(data).astype(np.int32)

    def strokes_path(self, item: Item):
        """Where the strokes drawn on ``item`` are kept: ``LABELS/strokes/`` + its label file's name."""
        return item.label_path.parent / STROKES_DIR / item.label_path.name

    def accept_strokes(self, item: Item, k: int, strokes: list[tuple[np.ndarray, int]], value: int,
                       labels: np.ndarray) -> None:
        """Draw scribble ``strokes`` ((points N x 2 as x, y; 1 object, 0 background) in display orientation) of
        an accepted object into slice ``k``'s stroke file: ``value`` on its strokes, 0 on its background strokes
        where the slice's accepted ``labels`` are background too (a stroke that says "not this object" on
        another object says nothing about that one), :data:`UNMARKED` wherever nobody drew (what
        ``data.scribbles: files`` with ``unlabeled_value: 255`` reads). Later strokes win where strokes cross."""
        size = labels.shape
        drawn = rasterize_strokes([(np.asarray(xy, np.float32), int(label)) for xy, label in strokes], size)
        background = (drawn == 0) & (labels == 0)
        path = self.strokes_path(item)
        if item.is_volume:
            volume = self._volume_labels(item, path, UNMARKED, "stroke").astype(np.uint8)
            index: list[Any] = [slice(None)] * 3
            index[self.source.axis] = k
            plane = display_orientation(volume[tuple(index)])
            plane[drawn == 1], plane[background] = value, 0
            volume[tuple(index)] = display_orientation(plane)
            save_mask(volume, path, reference=item.path)
        else:
            plane = np.full(size, UNMARKED, np.uint8)
            if path.exists():
                plane = load_mask(path).astype(np.uint8)
                if plane.shape != tuple(size):
                    raise MedAdaptError(f"the stroke file {path} holds a {plane.shape} map but {item.name} is "
                                        f"{tuple(size)}; move the stroke file away or fix it")
            plane[drawn == 1], plane[background] = value, 0
            save_mask(plane, path)

    def accept(self, item: Item, k: int, mask: np.ndarray, value: int, class_name: str) -> np.ndarray:
        """Paint ``mask`` (H x W bool, display orientation) with ``value`` into slice ``k``'s labels on disk and
        record the slice as accepted; returns the slice's new label map."""
        mask = np.asarray(mask, dtype=bool)
        if item.is_volume:
            volume = self._volume_labels(item)
            index: list[Any] = [slice(None)] * 3
            index[self.source.axis] = k
            plane = display_orientation(volume[tuple(index)])
            if plane.shape != mask.shape:
                raise MedAdaptError(f"mask of shape {mask.shape} for a slice of shape {plane.shape}")
            plane[mask] = value
            volume[tuple(index)] = display_orientation(plane)
            save_mask(volume, item.label_path, reference=item.path)
            new = plane.astype(np.int64)
        else:
            new = self.slice_labels(item, k, mask.shape).copy()
            new[mask] = value
            save_mask(new, item.label_path)
        entry = self.session["accepted"].setdefault(item.key, {"slices": [], "classes": []})
        entry["slices"] = sorted({*entry.get("slices", []), int(k)})
        entry["classes"] = sorted({*entry.get("classes", []), class_name})
        self.session["position"] = {"key": item.key, "slice": int(k)}
        self.save_session()
        return new


__all__ = ["LabelStore", "SESSION_FORMAT", "STROKES_DIR", "UNMARKED"]
