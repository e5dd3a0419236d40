"""The annotation app without its web layer: images, prompts, masks, accepting and saving.

:class:`Annotator` is what the HTTP routes (:mod:`medadapt.app.server`) call;
it can be driven from Python as well. All use of the segmenter goes through
one lock (``lock=``; pass e.g. an online learner's lock to share it).

Hooks for online learning: ``on_accept(image_id, label_map, meta, embedding,
prompts)`` is called after each accepted mask is saved, with the item id
(``"ID:K"`` for slice K of a volume), the slice's whole label map (H x W
int64, class label values), the embedding's :class:`~medadapt.foundation.ImageMeta`,
the image embedding (1 x C x h x w; 1 x S x C x h x w, the slice with its
neighbours, for a volume and a model with a depth adapter) and the object's
prompts as plain dicts;
``model_version()`` is reported by :meth:`Annotator.state` and with every mask,
and a change of it recomputes the automatic proposal of a slice without prompts
when it is opened again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..core.errors import MedAdaptError
from ..foundation.depth import neighbour_stack
from ..inference.guidance import guidance, uncertainty_map
from ..inference.intensity import apply_intensity, resolve_intensity
from ..io.imaging import apply_window, load_image, load_volume, volume_slice
from .encoding import EmbeddingLRU, Encoded, Prefetcher, encode_image, show_encoded
from .objects import AnnotatedObject, Answer, Scribble, check_prompt, decode, prompt_from_dict, prompt_to_dict
from .rle import encode_labels, encode_rle
from .sources import Item, UnknownItem, find_items
from .store import BINARY, UNMARKED, LabelsLock, LabelStore

log = logging.getLogger("medadapt.app")
OnAccept = Callable[[str, np.ndarray, Any, Any, list], Any]
MAX_CLASS_NAME = 64
MADE_IN_APP = "made in the app, kept in the session file"
# every prompt decodes the object with all of its prompts (each scribble adds clicks along it and is drawn again),
# so one object's prompts are bounded: at these limits a click still decodes in about 0.12 s (LiteMedSAM, 2 cores)
MAX_PROMPTS = 64
MAX_SCRIBBLES = 16
MAX_SCRIBBLE_POINTS = 100_000


class Annotator:
    """Annotation state over one DATA folder or file (see :func:`medadapt.app.sources.find_items`).

    ``window``: a CT window preset or (level, width) applied to what the model
    sees (the page's window/level sliders only change the display).
    ``threads``: torch threads for the model's work in the threads that serve
    requests (None: torch's default), or a callable that gives them for each
    request; with an online learner training beside them, the cores its step
    leaves free, so that the two never share a core.
    ``local``: a click changes the mask only near it (local corrections,
    :mod:`medadapt.inference.local`), not the whole object.
    ``labels_lock``: the :class:`~medadapt.app.store.LabelsLock` on the labels folder, when the caller took it
    already (the caller releases it); by default the annotator takes it, and :meth:`close` releases it (a second
    annotator on the same labels folder is refused until then).
    """

    def __init__(self, segmenter, data, *, labels=None, axis: int = 2, window=None,
                 on_accept: OnAccept | None = None, model_version: Callable[[], Any] | None = None,
                 lock=None, cache_size: int = 16, prefetch: bool = True, prefetch_idle_s: float = 0.5,
                 model_name: str = "", threads: int | None = None, local: bool = False,
                 labels_lock: LabelsLock | None = None) -> None:
        if threads is not None and not callable(threads) and (isinstance(threads, bool) or not isinstance(threads, int)
                                                              or threads < 1):
            raise MedAdaptError(f"threads must be a whole number >= 1, a callable giving one, or None (torch's "
                                f"default); got {threads!r}")
        self.threads = threads
        self.local = bool(local)
        if window is not None:
            apply_window(np.zeros((1, 1), np.float32), window)  # a bad preset fails here, not on the first image
        self.seg = segmenter
        self.source = find_items(data, labels, axis)
        self._own_lock = labels_lock is None
        self.labels_lock = LabelsLock(self.source.labels_dir) if labels_lock is None else labels_lock
        try:
            self.store = LabelStore(self.source)
            self._check_classes()
        except BaseException:
            if self._own_lock:
                self.labels_lock.release()
            raise
        self.store.binary_255 = BINARY not in self.classes().values()  # a class of value 255: 255 is that class
        # what the model sees: the window given, else the one its adapter was trained with, else that adapter's
        # per-slice percentile clip (see medadapt.inference.intensity); the page's sliders only change the display
        self.window, self.percentiles = resolve_intensity(getattr(segmenter, "intensity", None), window)
        self.on_accept = on_accept
        self.model_version = model_version
        self.model_name = model_name
        self.lock = lock if lock is not None else threading.RLock()
        self.cache = EmbeddingLRU(cache_size)
        self._objects: OrderedDict[tuple[str, int], AnnotatedObject] = OrderedDict()
        self._volumes: OrderedDict[str, np.ndarray] = OrderedDict()  # the 2 volumes read last (load_volume data)
        self.last_decode_ms: float | None = None
        self._last_activity = 0.0
        self._in_use = 0  # model work running or waiting for the lock now (see _using)
        self._count = threading.Lock()
        self._io = threading.RLock()  # the volumes read last, shared by requests and the prefetcher
        self._inflight: dict[tuple[str, int], threading.Event] = {}  # slices being encoded now, by any thread
        self.prefetcher = Prefetcher(self._prefetch, prefetch_idle_s) if prefetch else None

    def close(self) -> None:
        """Stop the background encoding and let another server use the labels folder (when the annotator took
        its lock itself)."""
        try:
            if self.prefetcher is not None:
                self.prefetcher.stop()
        finally:
            if self._own_lock:
                self.labels_lock.release()

    # ------------------------------------------------------------------ classes
    def _named_classes(self) -> list[tuple[str, int, str]]:
        """(name, label value, where it comes from) of the adapter's classes, ``dataset.json``'s and the app's."""
        named: list[tuple[str, int, str]] = []
        if self.seg.classes:
            auto = self.seg.backbone.adapter_config.automatic
            named += [(n, int(v), "the adapter") for n, v in zip(auto.class_names, auto.label_values)]
        named += [(n, int(v), "dataset.json") for n, v in self.source.classes.items()]
        return named + [(n, v, MADE_IN_APP) for n, v in self.store.classes.items()]

    def _check_classes(self) -> None:
        """Refuse classes that a label file could not tell apart: two names with one label value, or one name
        with two values. Each value comes from a file the user wrote (an adapter, dataset.json) or from label
        files already painted with it (a class made in an earlier run of the app), so renumbering one of them would
        silently change what existing files or the adapter's answers mean; the user chooses instead."""
        by_name: dict[str, tuple[int, str]] = {}
        by_value: dict[int, tuple[str, str]] = {}
        for name, value, origin in self._named_classes():
            seen = by_name.setdefault(name, (value, origin))
            other = by_value.setdefault(value, (name, origin))
            session = MADE_IN_APP in (origin, seen[1], other[1])
            fix = (f"the label files in {self.source.labels_dir} already use these values: give another --labels "
                   "folder, or an adapter whose classes agree" if session else
                   "give an --adapter trained with dataset.json's classes and label values, or edit dataset.json")
            if seen[0] != value:
                raise MedAdaptError(f"class {name!r} has label value {seen[0]} in {seen[1]} but {value} in {origin}; "
                                    f"{fix}")
            if other[0] != name:
                raise MedAdaptError(f"classes {other[0]!r} ({other[1]}) and {name!r} ({origin}) both have label value "
                                    f"{value}, so label files could not tell them apart; {fix}")

    def classes(self) -> dict[str, int]:
        """Class name -> label value: the adapter's learned classes and ``dataset.json``'s (``foreground`` = 1
        when neither names one), then those made in the app (clashes are refused when the app starts)."""
        named = self._named_classes()
        out: dict[str, int] = {}
        for name, value, origin in named:
            if origin != MADE_IN_APP:
                out.setdefault(name, value)
        if not out:  # no class named anywhere: start with one
            out["foreground"] = 1
        for name, value, origin in named:
            if origin == MADE_IN_APP:
                out.setdefault(name, value)
        return out

    def class_value(self, name: str) -> int:
        classes = self.classes()
        if name not in classes:
            raise MedAdaptError(f"unknown class {name!r}; known classes: {sorted(classes)} (add a new one with "
                                "POST /api/classes)")
        return classes[name]

    def add_class(self, name: str) -> dict[str, int]:
        """A new class (its label value: one above the largest in use); a known name is returned as it is."""
        name = " ".join(str(name).split())
        if not name or len(name) > MAX_CLASS_NAME or not name.isprintable():
            raise MedAdaptError(f"a class name is 1 to {MAX_CLASS_NAME} printable characters; got {name!r}")
        with self.lock:
            classes = self.classes()
            if name not in classes:
                value = max(classes.values(), default=0) + 1
                if value > 65535:
                    raise MedAdaptError("no label value left for a new class (label maps hold values up to 65535)")
                self.store.add_class(name, value)
            return {"name": name, "value": self.classes()[name]}

    def version(self) -> Any:
        return self.model_version() if self.model_version is not None else None

    # ------------------------------------------------------------------ listing
    def item_state(self, item: Item) -> dict[str, Any]:
        return {"id": item.id, "name": item.name, "kind": item.kind, "slices": item.slices,
                "accepted": self.store.accepted_slices(item), "classes": self.store.accepted_classes(item)}

    def state(self) -> dict[str, Any]:
        with self.lock:
            pos = self.store.position()
            learned = set(self.seg.classes)
            return {
                "items": [self.item_state(it) for it in self.source.items],
                "classes": [{"name": n, "value": v, "learned": n in learned} for n, v in self.classes().items()],
                "position": None if pos is None else {"item": pos[0].id, "slice": pos[1]},
                "model": self.model_name, "model_version": self.version(),
                "automatic": bool(self.seg.classes), "labels_dir": str(self.source.labels_dir),
                "last_decode_ms": self.last_decode_ms, "learning": self.learning(),
            }

    def model_state(self) -> dict[str, Any]:
        """What the page shows about the model, cheaply (no item listing): its name and version, the classes
        it proposes, and the online learner's own status (None without one)."""
        return {"model": self.model_name, "model_version": self.version(), "learned": list(self.seg.classes),
                "learning": self.learning()}

    def learning(self) -> dict[str, Any] | None:
        """What the online learner says about itself (``on_accept.status()``, as
        :func:`~medadapt.app.learning.accept_hook` gives it: whether its worker runs, the error that stopped it
        or a failed save); None without one."""
        status = getattr(self.on_accept, "status", None)
        return None if status is None else status()

    def _locate(self, item_id: str, k: int) -> Item:
        item = self.source.item(item_id)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < item.slices:
            where = f"{item.name} has {item.slices} slices (0..{item.slices - 1})" if item.is_volume else \
                f"{item.name} is a 2-D image: its only slice is 0"
            raise UnknownItem(f"slice {k} is out of range: {where}")
        return item

    # ------------------------------------------------------------------ pixels
    def _raw(self, item: Item, k: int) -> np.ndarray:
        """Slice ``k`` of ``item`` as stored (display orientation, float32), for the page and the model."""
        if not item.is_volume:
            return load_image(item.path)
        with self._io:
            if item.id not in self._volumes:
                while len(self._volumes) >= 2:  # the current volume and the one prefetched after it
                    self._volumes.popitem(last=False)
                data, _ = load_volume(item.path)
                finite = np.isfinite(data)
                if not finite.all():  # masked NIfTIs: NaN reads as the darkest value
                    data = np.where(finite, data, data[finite].min() if finite.any() else 0.0).astype(np.float32)
                self._volumes[item.id] = data
            self._volumes.move_to_end(item.id)
            return volume_slice(self._volumes[item.id], k, self.source.axis)

    def _model_image(self, raw: np.ndarray) -> np.ndarray:
        return apply_intensity(raw, self.window, self.percentiles)

    def pixels(self, item_id: str, k: int) -> tuple[bytes, tuple[int, int, int]]:
        """Slice ``k`` as little-endian float32 bytes (H x W x C, C = 1 or 3) and its shape, for the page."""
        with self.lock:
            raw = self._raw(self._locate(item_id, k), k)
        h, w = raw.shape[:2]
        c = 1 if raw.ndim == 2 else raw.shape[2]
        return np.ascontiguousarray(raw, dtype="<f4").tobytes(), (h, w, c)

    # ------------------------------------------------------------------ encoding
    def _encoded(self, item: Item, k: int, raw: np.ndarray | None = None) -> Encoded | None:
        """The slice as the decoder reads it; None for a blank (constant) slice. With a depth adapter, a volume
        slice's embedding comes with its neighbours' (1 x S x C x h x w; past the ends the nearest slice
        repeats), so that the app decodes, and the online learner trains, as volume inference does.

        Every use of the model starts here, so the calling thread takes ``threads`` torch threads here."""
        threads = self.threads() if callable(self.threads) else self.threads
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # this thread's team: the learner's worker keeps its own
        centre = self._slice_encoded(item, k, raw)
        n = getattr(self.seg.backbone, "depth_slices", 1) // 2
        if centre is None or n == 0 or not item.is_volume:
            return centre
        parts = [centre.embedding[0] if j == k else self._neighbour(item, j) for j in range(k - n, k + n + 1)]
        return Encoded(neighbour_stack(parts, n)[None], centre.meta, centre.image)

    def _neighbour(self, item: Item, j: int) -> torch.Tensor | None:
        """A neighbour's embedding; a blank neighbour is encoded too, as volume inference does."""
        found = self._slice_encoded(item, j, blank=True) if 0 <= j < item.slices else None
        return None if found is None else found.embedding[0]

    def _slice_encoded(self, item: Item, k: int, raw: np.ndarray | None = None, blank: bool = False) -> Encoded | None:
        """The slice's own embedding, from the cache or encoded now; None for a blank (constant) slice unless
        ``blank``. A slice another thread is encoding (the prefetcher) is waited for, not encoded twice."""
        key = (item.id, k)
        while True:
            found = self.cache.get(key)
            if found is not None:  # a blank slice is cached only as some slice's neighbour
                return found if blank or found.image.max() != found.image.min() else None
            with self._count:
                running = self._inflight.get(key)
                if running is None:
                    mine = self._inflight[key] = threading.Event()
            if running is None:
                break
            running.wait()  # then read the cache again (or encode it here, if that thread found it blank)
        try:
            raw = self._raw(item, k) if raw is None else raw
            image = self._model_image(raw)
            if image.max() == image.min() and not blank:
                return None
            encoded = encode_image(self.seg, image)
            with self._count:
                self.cache.encoded += 1
            self.cache.put(key, encoded)
            return encoded
        finally:
            with self._count:
                del self._inflight[key]
            mine.set()

    def _prefetch(self, key: tuple[str, int]) -> None:
        # counted as in use (background learning waits) but without the model lock: the image encoder is frozen
        # while serving, so a click decodes at once instead of waiting seconds for this encoding to end
        with self._using(lock=False):
            if key not in self.cache:
                self._encoded(self.source.item(key[0]), key[1])

    def _next(self, item: Item, k: int) -> tuple[str, int] | None:
        if item.is_volume and k + 1 < item.slices:
            return item.id, k + 1
        i = self.source.items.index(item)
        if i + 1 >= len(self.source.items):
            return None
        nxt = self.source.items[i + 1]
        return nxt.id, nxt.slices // 2

    # ------------------------------------------------------------------ objects
    def _proposal(self, encoded: Encoded | None, class_name: str) -> Answer | None:
        """The automatic answer for ``class_name`` (a learned class, or a text prompt with learned text)."""
        if encoded is None:
            return None
        if class_name in self.seg.classes:
            show_encoded(self.seg, encoded)
            pred = self.seg.predict(classes=[class_name])
        elif getattr(self.seg.backbone, "text_head", None) is not None:
            show_encoded(self.seg, encoded)
            try:
                pred = self.seg.predict(text=class_name)
            except MedAdaptError:  # a name the learned text prompts do not know: no proposal, prompts still work
                return None
        else:
            return None
        mask = np.asarray(pred.masks[0], dtype=bool)
        return Answer(mask, np.asarray(pred.logits[0], np.float32), float(pred.scores[0])) if mask.any() else None

    def _object(self, item: Item, k: int, class_name: str, encoded: Encoded | None) -> AnnotatedObject:
        key = (item.id, k)
        obj = self._objects.get(key)
        version = self.version()
        if obj is not None and obj.prompts:
            self._relabel(obj, class_name, encoded, version)  # the user's prompts stay
        elif obj is None or obj.class_name != class_name or obj.version != version:
            obj = AnnotatedObject(class_name, self._proposal(encoded, class_name), version)
            self._objects[key] = obj
        self._objects.move_to_end(key)
        while len(self._objects) > 32:
            self._objects.popitem(last=False)
        return obj

    def _relabel(self, obj: AnnotatedObject, class_name: str, encoded: Encoded | None, version) -> None:
        """Another class for an object: its prompts stay, and the proposal it falls back to (undo) and is
        measured against (guidance) becomes the new class's."""
        if obj.class_name != class_name:
            obj.class_name, obj.proposal, obj.version = class_name, self._proposal(encoded, class_name), version
            obj.cleared = None

    def _guidance(self, obj: AnnotatedObject | None, encoded: Encoded | None) -> dict[str, Any] | None:
        """Where the model is least sure about the object: its answer's margin, and where it disagrees with
        the automatic proposal (once prompts changed it) or else with the answer before the last prompt."""
        current = None if obj is None or encoded is None else obj.current()
        if current is None:
            return None
        reference = None  # an answer nobody prompted yet (the proposal) has only its margin
        if obj.steps:
            reference = obj.proposal if obj.proposal is not None else obj.before_last()
        full = lambda a: self.seg.backbone.processor.postprocess_logits(  # noqa: E731
            torch.from_numpy(a.logits), encoded.meta).numpy()
        shown = guidance(uncertainty_map(full(current), None if reference is None else full(reference)))
        if shown is None:
            return None
        return {"region": encode_rle(shown.region), "point": [float(v) for v in shown.point],
                "uncertainty": round(shown.uncertainty, 3)}

    def _answer(self, item: Item, k: int, obj: AnnotatedObject | None, encoded: Encoded | None = None) -> dict[str, Any]:
        current = None if obj is None else obj.current()
        return {
            "item": item.id, "slice": k, "class_name": None if obj is None else obj.class_name,
            "prompts": [] if obj is None else [prompt_to_dict(p) for p in obj.prompts],
            "source": "empty" if current is None else ("prompts" if obj.steps else "proposal"),
            "mask": None if current is None or not current.mask.any() else encode_rle(current.mask),
            "score": None if current is None else current.score,
            "decode_ms": self.last_decode_ms, "model_version": self.version(),
            "guidance": self._guidance(obj, encoded),
        }

    @contextmanager
    def _using(self, lock: bool = True) -> Iterator[None]:
        """Hold the model lock for model work; :meth:`busy` says so from the moment the work waits for it
        (``lock=False``: only say so, for work that reads no weight the learner changes)."""
        with self._count:
            self._in_use += 1
        try:
            with self.lock if lock else nullcontext():
                yield
        finally:
            with self._count:
                self._in_use -= 1

    def _touch(self) -> None:
        self._last_activity = time.monotonic()
        if self.prefetcher is not None:
            self.prefetcher.touch()

    def busy(self, quiet_s: float = 1.0) -> bool:
        """Whether the model is in use (a request or a background encoding is running) or a request came
        within the last ``quiet_s`` seconds (the user is working): background work such as an online learner's
        next step waits for a quiet moment."""
        return self._in_use > 0 or time.monotonic() - self._last_activity < quiet_s

    def open(self, item_id: str, k: int, class_name: str | None = None, keep: bool = False) -> dict[str, Any]:
        """Show slice ``k`` of an item: its pixel geometry, its saved labels and the object being annotated
        (the adapter's automatic proposal for ``class_name`` when the slice is new). An object the slice holds
        is relabelled ``class_name``, its prompts kept; with ``keep`` (or no ``class_name``) it keeps its class."""
        self._touch()
        with self._using():
            item = self._locate(item_id, k)
            held = self._objects.get((item.id, k))
            if held is not None and (keep or not class_name):
                class_name = held.class_name
            class_name = class_name or next(iter(self.classes()))
            self.class_value(class_name)
            raw = self._raw(item, k)
            encoded = self._encoded(item, k, raw)
            obj = self._object(item, k, class_name, encoded) if encoded is not None else None
            size = raw.shape[:2]
            finite = raw[np.isfinite(raw)]
            lo, hi = float(finite.min()), float(finite.max())
            if self.window is not None:
                clipped = apply_window(np.array([lo, hi], np.float32), self.window)
                window = [float(clipped.min()), float(clipped.max())]
            elif item.is_volume:
                window = [float(v) for v in np.percentile(finite, [0.5, 99.5])]
            else:
                window = [lo, hi]
            out = {
                **self._answer(item, k, obj, encoded), "width": size[1], "height": size[0],
                "channels": 1 if raw.ndim == 2 else raw.shape[2], "range": [lo, hi], "window": window,
                "blank": encoded is None, "labels": encode_labels(self.store.slice_labels(item, k, size)),
                "accepted": k in self.store.accepted_slices(item),
            }
            self.store.set_position(item, k)
            nxt = self._next(item, k)
        if self.prefetcher is not None and nxt is not None:
            self.prefetcher.request(nxt)
        self._touch()
        return out

    def _working(self, item_id: str, k: int) -> tuple[Item, Encoded, AnnotatedObject | None]:
        item = self._locate(item_id, k)
        encoded = self._encoded(item, k)
        if encoded is None:
            raise MedAdaptError(f"slice {k} of {item.name} is blank (constant): there is nothing to segment on it")
        return item, encoded, self._objects.get((item.id, k))

    def prompt(self, item_id: str, k: int, class_name: str, prompt: dict[str, Any]) -> dict[str, Any]:
        """Add one prompt (``{"kind": "point", "x", "y", "label"}``, ``{"kind": "box", "x0", "y0", "x1",
        "y1"}`` or ``{"kind": "scribble", "points": [[x, y], ...], "label"}``) and re-decode the object."""
        self._touch()
        entered = time.perf_counter()
        with self._using():
            item, encoded, obj = self._working(item_id, k)
            self.class_value(class_name)
            p = prompt_from_dict(prompt)
            check_prompt(p, encoded.meta.original_size)
            if obj is None:
                obj = self._object(item, k, class_name, encoded)
            _check_room(obj, p)
            self._relabel(obj, class_name, encoded, self.version())
            start = time.perf_counter()
            show_encoded(self.seg, encoded)
            answer = decode(self.seg, [*obj.prompts, p], obj.current(), self.local)
            self.last_decode_ms = (time.perf_counter() - start) * 1000
            obj.prompts.append(p)
            obj.steps.append(answer)
            out = self._answer(item, k, obj, encoded)
        out["server_ms"] = (time.perf_counter() - entered) * 1000  # waiting for the model, decoding, the answer
        self._touch()
        return out

    def undo(self, item_id: str, k: int) -> dict[str, Any]:
        """Remove the object's last prompt and decode it again from the prompts left."""
        self._touch()
        with self._using():
            item, encoded, obj = self._working(item_id, k)
            if obj is not None and not obj.prompts and obj.cleared is not None:  # undo the clear
                (obj.prompts, obj.steps, obj.proposal), obj.cleared = obj.cleared, None
            elif obj is not None and obj.prompts:
                obj.prompts.pop()
                obj.steps.pop()
                if obj.prompts:
                    show_encoded(self.seg, encoded)
                    obj.steps[-1] = decode(self.seg, obj.prompts, obj.before_last(), self.local)
            return self._answer(item, k, obj, encoded)

    def clear(self, item_id: str, k: int) -> dict[str, Any]:
        """Drop the object's prompts and its proposal: an empty object (:meth:`undo` brings them back)."""
        with self.lock:
            item, _, obj = self._working(item_id, k)
            if obj is not None and (obj.prompts or obj.proposal is not None):
                obj.cleared = (obj.prompts, obj.steps, obj.proposal)
                obj.prompts, obj.steps, obj.proposal = [], [], None
            return self._answer(item, k, obj)

    def accept(self, item_id: str, k: int, class_name: str) -> dict[str, Any]:
        """Save the object's mask as ``class_name`` into the slice's label file; the slice starts a new object."""
        self._touch()
        with self._using():
            item, encoded, obj = self._working(item_id, k)
            value = self.class_value(class_name)
            current = None if obj is None else obj.current()
            if current is None or not current.mask.any():
                raise MedAdaptError(f"nothing to accept on slice {k} of {item.name}: the mask is empty; add a prompt "
                                    "(click, box or scribble) first")
            strokes = [(np.asarray(p.points, np.float32), p.label) for p in obj.prompts if isinstance(p, Scribble)]
            if strokes and value < UNMARKED:  # first: a stroke file that cannot be written leaves nothing half done
                after = self.store.slice_labels(item, k, current.mask.shape).copy()
                after[current.mask] = value
                self.store.accept_strokes(item, k, strokes, value, after)
            if all(n != class_name for n, _, _ in self._named_classes()):  # the implicit class: label files now
                self.store.add_class(class_name, value)  # hold its value, so a later adapter must agree with it
            labels = self.store.accept(item, k, current.mask, value, class_name)
            prompts = [prompt_to_dict(p) for p in obj.prompts]
            self._objects.pop((item.id, k), None)
            out = {**self._answer(item, k, None), "labels": encode_labels(labels), "accepted": True,
                   "item_state": self.item_state(item), "saved": {"class_name": class_name, "value": value,
                                                                   "file": item.label_path.name,
                                                                   "strokes": bool(strokes) and value < UNMARKED}}
        if self.on_accept is not None:
            image_id = f"{item.id}:{k}" if item.is_volume else item.id
            try:
                self.on_accept(image_id, labels, encoded.meta, encoded.embedding, prompts)
            except Exception as exc:  # the mask is saved; a failing hook must not lose the user's work
                log.exception("on_accept failed for %s", image_id)
                out["on_accept_error"] = f"{type(exc).__name__}: {exc}"
        return out


def _check_room(obj: AnnotatedObject, p) -> None:
    """Refuse a prompt past the limits of one object (:data:`MAX_PROMPTS`, :data:`MAX_SCRIBBLES`,
    :data:`MAX_SCRIBBLE_POINTS`)."""
    held = [q for q in obj.prompts if isinstance(q, Scribble)]
    before = sum(len(q.points) for q in held)
    new = len(p.points) if isinstance(p, Scribble) else 0
    full = (f"{len(obj.prompts)} prompts" if len(obj.prompts) >= MAX_PROMPTS else
            f"{len(held)} scribbles" if new and len(held) >= MAX_SCRIBBLES else
            f"scribbles of {before} points" if new and before + new > MAX_SCRIBBLE_POINTS else None)
    if full is not None:
        raise MedAdaptError(f"this object already has {full}, as many as one object takes ({MAX_PROMPTS} prompts, "
                            f"{MAX_SCRIBBLES} scribbles, {MAX_SCRIBBLE_POINTS} scribble points): accept it, or undo or "
                            "clear it and start again")


__all__ = ["Annotator", "OnAccept"]
