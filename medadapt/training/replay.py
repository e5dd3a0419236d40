"""An on-disk buffer of accepted samples, for learning online with replay.

Each sample is what one accepted annotation leaves: the image embedding the
encoder gave (so training never runs the encoder again), the accepted label
map on the decoder's low-resolution grid, and a JSON record (image id, the
classes the label values stand for, the prompts that produced it, the time).

Layout of the folder::

    index.json                  the records, in order (oldest first), without their prompts (compact JSON)
    samples/<uid>.safetensors   embedding (C x h x w float16, or S x C x h x w: a volume slice with its
                                neighbours, for a depth adapter) + target (m x m int16),
                                the whole record, prompts included, in the file's metadata

The index is rewritten on every add, so it keeps only what sampling and
training read; a sample's prompts (a freehand stroke is thousands of points)
are read from its own file with the sample. An index that still holds prompts
(written before) reads as it is and is written without them next time.

Every file is written atomically and flushed to the disk, a sample's file
before the index that names it: a buffer reopened after a crash holds every
sample whose :meth:`ReplayBuffer.add` returned, and files the index never
named are removed. One buffer object writes a folder at a time: an ``add``
finding that another one rewrote the index since this one read or wrote it
is refused (opening and adding hold a lock on ``.lock`` in the folder for
their few milliseconds, so neither sees the other half done).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import MedAdaptError
from ..core.files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

INDEX_NAME = "index.json"
SAMPLES_DIR = "samples"
FORMAT_VERSION = 1
MAX_CLASSES = 32767  # targets are stored as int16


@dataclass
class ReplaySample:
    """One accepted sample as read back: tensors on the CPU and its record."""

    embedding: torch.Tensor  # C x h x w float16 as the encoder gave it (S x C x h x w: with its neighbours)
    target: torch.Tensor  # m x m int64 on the decoder grid: 0 background, k = record["classes"][k - 1]
    record: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """The class names label values 1, 2, ... stand for."""
        return list(self.record["classes"])


@dataclass(frozen=True)
class PreparedSample:
    """A sample checked and ready to be stored (:meth:`ReplayBuffer.prepare`)."""

    embedding: torch.Tensor
    target: torch.Tensor
    record: dict[str, Any]


class ReplayBuffer:
    """Accepted samples kept in ``folder``; see the module docstring for the layout and guarantees.

    ``cache_size`` samples recently read stay in memory (an embedding of
    LiteMedSAM is 2 MiB in float16). Safe to use from several threads of one process.
    """

    def __init__(self, folder: str | os.PathLike, cache_size: int = 64) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise MedAdaptError(f"replay buffer folder {self.folder} is a file; give a folder path")
        (self.folder / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        self.cache_size = int(cache_size)
        self._lock = threading.RLock()
        self._memory: OrderedDict[str, ReplaySample] = OrderedDict()
        with self._locked():
            self._records = self._read_index()
            self._stamp = self._index_stamp()
            self._remove_unlisted()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Copies of the records, oldest first, without their prompts (:meth:`get` gives a sample's whole
        record)."""
        with self._lock:
            return [json.loads(json.dumps(r)) for r in self._records]

    def index_of(self, image_id: str) -> int | None:
        """The position of the sample of ``image_id``, or None."""
        with self._lock:
            for i, r in enumerate(self._records):
                if r["image_id"] == image_id:
                    return i
        return None

    def get(self, i: int) -> ReplaySample:
        """Sample ``i`` (0 the oldest, -1 the newest), read from disk unless recently read."""
        with self._lock:
            n = len(self._records)
            if not isinstance(i, (int, np.integer)) or not -n <= int(i) < n:
                raise MedAdaptError(f"replay sample {i!r} does not exist: the buffer holds {n} sample(s)")
            record = self._records[int(i)]
            cached = self._memory.get(record["file"])
            if cached is not None:
                self._memory.move_to_end(record["file"])
                return cached
        try:
            sample = self._load(record)
        except MedAdaptError:
            # accepted again meanwhile: commit removed this file; the sample's replacement answers instead
            newer = self.index_of(record["image_id"])
            with self._lock:
                replaced = all(r["file"] != record["file"] for r in self._records)
            if newer is None or not replaced:
                raise
            return self.get(newer)
        with self._lock:
            self._memory[record["file"]] = sample
            while len(self._memory) > self.cache_size:
                self._memory.popitem(last=False)
        return sample

    def sample(self, n: int, rng: np.random.Generator, newest: int = 1, replay: bool = True) -> list[int]:
        """Indices of a batch of ``n``: the ``newest`` most recent samples, and the rest of the batch drawn
        uniformly from the older ones with ``replay`` (without replacement while there are enough), or
        made of the newest ones again without it (or while there is nothing older)."""
        if n < 1 or newest < 1:
            raise MedAdaptError(f"a batch needs n >= 1 and newest >= 1; got n={n}, newest={newest}")
        size = len(self)
        if size == 0:
            raise MedAdaptError("the replay buffer is empty: add an accepted sample first")
        k = min(newest, size, n)
        batch = list(range(size - k, size))
        rest, older = n - k, size - k
        if rest > 0 and replay and older > 0:
            batch += [int(j) for j in rng.choice(older, rest, replace=rest > older)]
        elif rest > 0:
            batch += [batch[j % k] for j in range(rest)]
        return batch

    # ------------------------------------------------------------------ writing
    def add(self, embedding: torch.Tensor, target: torch.Tensor | np.ndarray, classes: Sequence[str],
            prompts: dict[str, Any] | None = None, image_id: str | None = None) -> int:
        """Store one accepted sample; returns its index (the newest: ``len(self) - 1``).
        (:meth:`prepare` then :meth:`commit` also gives its record.)

        ``embedding``: the encoder's 1 x C x h x w (or C x h x w) output, or 1 x S x C x h x w for a volume
        slice with its neighbours (what a depth adapter reads); ``target``: the m x m label map on
        the decoder grid (as :func:`~medadapt.training.samples.to_model_frame` makes it), value k meaning
        ``classes[k - 1]`` and 0 background; ``prompts``: what produced it, as plain lists (saved, not used
        for training). A sample with the ``image_id`` of an earlier one replaces it (a corrected mask
        accepted again) and becomes the newest.
        """
        return self.commit(self.prepare(embedding, target, classes, prompts, image_id))[0]

    def prepare(self, embedding: torch.Tensor, target: torch.Tensor | np.ndarray, classes: Sequence[str],
                prompts: dict[str, Any] | None = None, image_id: str | None = None,
                label_values: Sequence[int] | None = None) -> PreparedSample:
        """Check a sample as :meth:`add` does and make it ready to :meth:`commit` (nothing is written yet).
        ``label_values``: the value each class has in the user's label files, kept in the record (a learner
        restarted from the buffer alone gives its classes those values)."""
        emb = _check_embedding(embedding)
        names = check_classes(classes)
        tgt = torch.from_numpy(check_label_map(target, len(names)))
        if image_id is not None and (not isinstance(image_id, str) or not image_id.strip()):
            raise MedAdaptError(f"image_id must be a non-empty string or None; got {image_id!r}")
        record = {
            "image_id": image_id if image_id is not None else f"sample-{uuid.uuid4().hex[:12]}",
            "classes": names,
            "present": [names[v - 1] for v in sorted(int(v) for v in torch.unique(tgt).tolist() if v > 0)],
            "prompts": plain_prompts(prompts),
            "time": time.time(),
            "file": f"{uuid.uuid4().hex}.safetensors",
            "embedding_shape": list(emb.shape),
            "target_shape": list(tgt.shape),
        }
        if label_values is not None:
            record["label_values"] = [int(v) for v in label_values]
        return PreparedSample(emb, tgt, record)

    def commit(self, sample: PreparedSample) -> tuple[int, dict[str, Any]]:
        """Store a sample :meth:`prepare` made; returns its index and (a copy of) its record."""
        emb, tgt, record = sample.embedding, sample.target, sample.record
        path = self.folder / SAMPLES_DIR / record["file"]
        tensors = {"embedding": emb, "target": tgt.to(torch.int16).contiguous()}
        with self._locked():  # adds of this buffer one at a time, and none while another one opens the folder
            if self._index_stamp() != self._stamp:
                raise MedAdaptError(f"the replay index {self.index_path} was rewritten by another learner since this "
                                    "one read it (two apps or learners on one folder?): stop the other one; this "
                                    "sample was not added")
            _write_durably(path, lambda tmp: save_file(tensors, tmp, metadata={"record": json.dumps(record)}))
            with self._lock:  # readers (a training step) wait only for the index
                old = [r for r in self._records if r["image_id"] == record["image_id"]]
                records = [r for r in self._records if r["image_id"] != record["image_id"]] + [record]
                try:
                    self._write_index(records)
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
                self._records, self._stamp = [*records[:-1], _indexed(record)], self._index_stamp()
                self._memory[record["file"]] = ReplaySample(emb, tgt.long(), record)
                while len(self._memory) > self.cache_size:
                    self._memory.popitem(last=False)
                for r in old:
                    self._memory.pop(r["file"], None)
                    (self.folder / SAMPLES_DIR / r["file"]).unlink(missing_ok=True)
                return len(records) - 1, json.loads(json.dumps(record))

    # ------------------------------------------------------------------ files
    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    def _index_stamp(self) -> tuple[int, int, int] | None:
        """What tells this buffer's index file from one another writer put in its place (each write is a new
        file, renamed over the old one)."""
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextmanager
    def _locked(self):
        """Hold the folder's lock file (``.lock``) while opening or adding."""
        if fcntl is None:
            yield
            return
        try:
            f = open(self.folder / ".lock", "a+b")
        except OSError:  # a folder this process cannot write: nothing is written here either
            yield
            return
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except OSError:  # no locks on this file system
                pass
            yield
        finally:
            f.close()  # releases the lock

    def _write_index(self, records: list[dict[str, Any]]) -> None:
        samples = [_indexed(r) for r in records]
        text = json.dumps({"format_version": FORMAT_VERSION, "samples": samples}, separators=(",", ":"))
        _write_durably(self.index_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _read_index(self) -> list[dict[str, Any]]:
        if not self.index_path.is_file():
            return []
        try:
            data = json.loads(self.index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MedAdaptError(f"replay index {self.index_path} is not valid JSON ({' '.join(str(exc).split())}); "
                                "it is written atomically, so another program changed it: restore or remove it") from None
        samples = data.get("samples") if isinstance(data, dict) else None
        if not isinstance(samples, list) or not all(isinstance(r, dict) and "file" in r and "image_id" in r
                                                     for r in samples):
            raise MedAdaptError(f"{self.index_path} is not a replay index medadapt writes (no 'samples' list of "
                                "records); give another folder")
        kept = [_indexed(r) for r in samples if (self.folder / SAMPLES_DIR / r["file"]).is_file()]
        if len(kept) != len(samples):
            lost = [r["image_id"] for r in samples if not (self.folder / SAMPLES_DIR / r["file"]).is_file()]
            warnings.warn(f"replay buffer {self.folder}: the files of {len(lost)} sample(s) are missing and were "
                          f"left out ({', '.join(lost[:5])})", stacklevel=3)
        return kept

    def _remove_unlisted(self) -> None:
        """Delete sample files (and temporary files of interrupted writes) that the index does not name."""
        listed = {r["file"] for r in self._records}
        for p in (self.folder / SAMPLES_DIR).iterdir():
            if p.is_file() and p.name not in listed:
                p.unlink(missing_ok=True)

    def _load(self, record: dict[str, Any]) -> ReplaySample:
        path = self.folder / SAMPLES_DIR / record["file"]
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                tensors = {k: f.get_tensor(k) for k in ("embedding", "target")}
                stored = json.loads((f.metadata() or {}).get("record") or "{}")
        except Exception as exc:
            raise MedAdaptError(f"could not read replay sample {path}: {' '.join(str(exc).split())[:300]}") from None
        prompts = stored.get("prompts") if isinstance(stored, dict) else None
        return ReplaySample(tensors["embedding"], tensors["target"].long(), {**record, "prompts": prompts})


def _indexed(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the index keeps it: without its prompts (they are in the sample's file)."""
    return {k: v for k, v in record.items() if k != "prompts"}


def _write_durably(path: Path, write) -> None:
    """:func:`atomic_write`, with the file and then its folder flushed to the disk: what ``add`` returned for
    survives a power cut too, not only a killed process."""

    def synced(tmp: str) -> None:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    atomic_write(path, synced)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some platforms): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plain_prompts(prompts: Any) -> dict[str, Any] | None:
    """Prompts as JSON-ready plain values: a mapping of names to numbers or (nested) lists of numbers."""
    if prompts is None:
        return None
    if not isinstance(prompts, dict):
        raise MedAdaptError(f"prompts must be a mapping such as {{'points': [[x, y]], 'labels': [1]}} or None; "
                            f"got {type(prompts).__name__}")
    return {str(k): _plain(v, f"prompts[{k!r}]") for k, v in prompts.items()}


def _plain(value: Any, where: str) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(float(value)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise MedAdaptError(f"{where} holds {value!r}; prompts are kept as plain lists of finite numbers")


def _check_embedding(embedding: Any) -> torch.Tensor:
    if not isinstance(embedding, torch.Tensor):
        raise MedAdaptError(f"embedding must be a torch tensor (the encoder's 1 x C x h x w output, e.g. "
                            f"Segmenter.embedding()[0]); got {type(embedding).__name__}")
    e = embedding.detach()
    if e.ndim in (4, 5) and e.shape[0] == 1:
        e = e[0]
    if e.ndim not in (3, 4) or min(e.shape) < 1 or (e.ndim == 4 and e.shape[0] % 2 == 0):
        raise MedAdaptError(f"embedding must be 1 x C x h x w (one image), or 1 x S x C x h x w (a slice with its "
                            f"neighbours, S odd); got shape {tuple(embedding.shape)}")
    if not e.is_floating_point():
        raise MedAdaptError(f"embedding must hold floating-point values; got {e.dtype}")
    e = e.to("cpu", torch.float16).contiguous()
    if not torch.isfinite(e).all():
        raise MedAdaptError("embedding holds NaN or infinite values (or values beyond float16's range)")
    return e.clone() if e.data_ptr() == embedding.data_ptr() else e


def check_classes(classes: Sequence[str] | str) -> list[str]:
    """Class names as a list (one name may be given alone), checked: non-empty, distinct."""
    names = [classes] if isinstance(classes, str) else list(classes) if isinstance(classes, (list, tuple)) else None
    if not names or not all(isinstance(c, str) and c.strip() for c in names):
        raise MedAdaptError(f"classes must be a non-empty list of class names (label value k is classes[k-1]); "
                            f"got {classes!r}")
    if len(set(names)) != len(names):
        raise MedAdaptError(f"classes name a class twice: {names}")
    if len(names) > MAX_CLASSES:
        raise MedAdaptError(f"{len(names)} classes in one sample; at most {MAX_CLASSES}")
    return names


def check_label_map(label: Any, n_classes: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A 2-D label map (of shape ``size`` when given) holding 0 (background) to ``n_classes``, as int64."""
    a = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if a.ndim != 2 or min(a.shape) < 1:
        raise MedAdaptError(f"the label map must be a 2-D H x W array; got shape {tuple(a.shape)}")
    if size is not None and tuple(a.shape) != tuple(size):
        raise MedAdaptError(f"the label map is {tuple(a.shape)} but the image is {tuple(size)} (H x W): give it at "
                            "the original image size")
    if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
        raise MedAdaptError(f"the label map must hold whole label values 0..{n_classes} (or be a bool mask); "
                            f"got {a.dtype}")
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > n_classes:
        raise MedAdaptError(f"the label map holds values {lo}..{hi}, but {n_classes} class name(s) were given: "
                            f"values must be 0 (background) to {n_classes}")
    return a


__all__ = ["PreparedSample", "ReplayBuffer", "ReplaySample", "check_classes", "check_label_map", "plain_prompts"]
