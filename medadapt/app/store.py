"""Accepted label maps on disk, and the session file that lets a restarted server resume.

A 2-D image's labels are one PNG label map; a volume's are one NIfTI label map
in the volume's own geometry (``save_mask(..., reference=volume)``), filled a
slice at a time. Accepting reads the label file as it is on disk, paints the
accepted object into it and writes it back atomically, so an earlier accepted
slice or class is never lost (where two objects overlap, the later one wins).

A 2-D label file holding only 0 and 255 (a binary mask as Kvasir-SEG and
many others store it, which training reads as foreground) reads as 0/1, the
foreground class's value, and stays a 0/255 file while it holds one class:
accepting a foreground object paints 255 beside the 255s already there; an
object of another class turns the file into a label map (0, 1, that class's
value), which training reads with the same meaning.

Scribbles of an accepted object are also kept as strokes, in a label file of
the same name under ``LABELS/strokes/``: the class value on its strokes, 0 on
background strokes and 255 wherever nobody drew, the form that training from
scribbles reads (``data.scribbles: files``, ``unlabeled_value: 255``).

The session file (``annotate-session.json`` in the labels folder, written
atomically) records which slices were accepted, the classes made in the app
and where the user was. A server holds :class:`LabelsLock` on the labels
folder (``.annotate.lock``) for as long as it runs, so that a second server on
the same labels refuses to start instead of overwriting the first one's
session file and replay buffer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError
from ..core.files import atomic_write_json
from ..io.imaging import display_orientation, load_mask, load_volume, save_mask, volume_shape
from ..prompts.scribbles import rasterize_strokes
from .sources import Item, Source

try:
    import fcntl
except ImportError:  # Windows: no lock (one server per labels folder is then up to the user)
    fcntl = None

LOCK_FILE = ".annotate.lock"
SESSION_FORMAT = 1
STROKES_DIR = "strokes"
UNMARKED = 255  # a stroke file's value wherever nobody drew
BINARY = 255  # the foreground value of a 0/255 binary mask


def _binary(labels: np.ndarray) -> bool:
    """Whether a 2-D label map is a 0/255 binary mask (with some foreground), as training reads it."""
    return bool((labels == BINARY).any()) and bool(np.isin(labels, (0, BINARY)).all())


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
    bad = _bad_entry(data)
    if bad is not None:
        raise MedAdaptError(f"the session file {path} holds {bad}; fix it or delete it (the label files stay; only "
                            "the list of accepted slices is lost)")
    return {**empty, **data}


def _whole(v: Any, lo: int, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _bad_entry(data: dict[str, Any]) -> str | None:
    """What is wrong with a session file's entries (what the app would fail on later), or None."""
    for name, value in data.get("classes", {}).items():
        if not _whole(value, 1, 65535):
            return f"class {name!r} with label value {value!r} (a whole number 1..65535)"
    for key, entry in data.get("accepted", {}).items():
        if not isinstance(entry, dict):
            return f"{entry!r} for {key!r} in 'accepted' (an object with 'slices' and 'classes')"
        slices, classes = entry.get("slices", []), entry.get("classes", [])
        if not isinstance(slices, list) or not all(_whole(k, 0) for k in slices):
            return f"slices {slices!r} for {key!r} (a list of slice numbers)"
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            return f"classes {classes!r} for {key!r} (a list of class names)"
    if data.get("axis") is not None and not _whole(data["axis"], 0, 2):
        return f"axis {data['axis']!r} (0, 1 or 2)"
    return None


class LabelsLock:
    """An exclusive lock on a labels folder (``fcntl.flock`` on ``FOLDER/.annotate.lock``), held until
    :meth:`release` or the process ends: a second holder, in this process or another, is refused with a
    message. A folder that cannot be written (nothing can be saved there either) or a file system without locks
    goes unlocked."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._file = None
        if fcntl is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")
        except OSError:
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            who = f" (process {pid})" if pid.isdigit() else ""
            raise MedAdaptError(f"another medadapt annotate{who} is using the labels folder {self.path.parent}: "
                                "stop it first, or give another --labels folder") from None
        except OSError:  # no locks on this file system
            f.close()
            return
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()


class LabelStore:
    """Label files of a :class:`~medadapt.app.sources.Source` and its session file."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.session = _read_session(source)
        saved = self.session.get("axis")
        if saved is not None and saved != source.axis and any(it.is_volume for it in source.items):
            # slices are recorded by number along the axis (in the session and the replay buffer's ids)
            raise MedAdaptError(f"the volumes in {source.labels_dir} were annotated slice by slice along --axis "
                                f"{saved}: start with --axis {saved}, or give another --labels folder")
        # whether a 0/255 file reads as 0/1 (see the module docstring); the Annotator turns it off when a class has
        # the value 255 itself
        self.binary_255 = True

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
        """The label map of slice ``k`` (display orientation, H x W int64, class values: a 0/255 binary mask of
        a 2-D image reads as 0/1); zeros when nothing is saved."""
        labels, _ = self._slice_labels(item, k, size)
        return labels

    def _slice_labels(self, item: Item, k: int, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
        """:meth:`slice_labels`, and whether the file is a 0/255 binary mask read as 0/1."""
        if not item.label_path.exists():
            return np.zeros(size, dtype=np.int64), False
        if item.is_volume:
            labels = load_mask(item.label_path, slice_index=k, axis=self.source.axis)
        else:
            labels = load_mask(item.label_path)
        if labels.shape != tuple(size):
            raise MedAdaptError(f"the label file {item.label_path} holds a {labels.shape} map but {item.name} is "
                                f"{tuple(size)}; move the label file away or fix it")
        if not item.is_volume and self.binary_255 and _binary(labels):
            return (labels == BINARY).astype(np.int64), True
        return labels, False

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
            new, binary = self._slice_labels(item, k, mask.shape)
            new = new.copy()
            new[mask] = value
            # a 0/255 file holding the foreground class only stays 0/255; with another class it becomes a label map
            save_mask(new * BINARY if binary and np.isin(new, (0, 1)).all() else new, item.label_path)
        if item.is_volume:
            self.session["axis"] = self.source.axis  # what its slice numbers count along
        entry = self.session["accepted"].setdefault(item.key, {"slices": [], "classes": []})
        entry["slices"] = sorted({*entry.get("slices", []), int(k)})
        entry["classes"] = sorted({*entry.get("classes", []), class_name})
        self.session["position"] = {"key": item.key, "slice": int(k)}
        self.save_session()
        return new


__all__ = ["LOCK_FILE", "LabelStore", "LabelsLock", "SESSION_FORMAT", "STROKES_DIR", "UNMARKED"]
