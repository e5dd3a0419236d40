"""Image embeddings for the annotation app: encoded once per image or slice, kept in a small LRU,
and the next image encoded in the background while the user works on the current one.

Only the decoder runs per prompt; the encoder (about 0.6 s for LiteMedSAM on a
2-core CPU) runs once per image or slice. :class:`Prefetcher` encodes the
image the user is likely to open next once the server has been idle for a
moment, under the same lock as every other use of the segmenter
(:class:`~medadapt.inference.Segmenter` is not thread-safe, and two model
passes at once would share the CPU cores anyway).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import torch

from ..foundation import ImageMeta

Key = Hashable


@dataclass
class Encoded:
    """One image as the decoder needs it: its embedding (1 x C x h x w), geometry and pixels."""

    embedding: torch.Tensor
    meta: ImageMeta
    image: np.ndarray  # what the model saw (float32 H x W or H x W x 3)


class _PlaneView:
    """What :meth:`Segmenter.show_plane` reads from a volume session, for one encoded image."""

    def __init__(self, encoded: Encoded) -> None:
        self.meta = encoded.meta
        self._encoded = encoded

    def embedding(self, k: int) -> torch.Tensor:
        return self._encoded.embedding

    def plane(self, k: int) -> np.ndarray:
        return self._encoded.image


def show_encoded(seg, encoded: Encoded) -> None:
    """Make ``encoded`` the segmenter's current image, with its embedding (no encoder run)."""
    seg.show_plane(_PlaneView(encoded), 0)


@torch.inference_mode()
def encode_image(seg, image: np.ndarray) -> Encoded:
    """Run ``seg``'s image encoder on one validated image."""
    pixels, meta = seg.backbone.processor.preprocess(image)
    embedding = seg.backbone.encode(pixels.to(seg.device))
    return Encoded(embedding, meta, image)


class EmbeddingLRU:
    """The ``capacity`` most recently used embeddings (about 4 MB each for LiteMedSAM in float32)."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[Key, Encoded] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # encoder runs so far (tests and reports)

    def get(self, key: Key) -> Encoded | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Key, value: Encoded) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._items


class Prefetcher:
    """A daemon thread that runs ``encode(target)`` for the latest target once the app has been idle.

    ``request(target)`` replaces any target not yet started (only the image
    after the current one matters); ``touch()`` marks activity, and encoding
    waits until ``idle_s`` seconds have passed without any.
    """

    def __init__(self, encode: Callable[[Key], None], idle_s: float = 0.5) -> None:
        self._encode = encode
        self.idle_s = float(idle_s)
        self._target: Key | None = None
        self._last = time.monotonic()
        self._cond = threading.Condition()
        self._stop = False
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="medadapt-annotate-prefetch", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def request(self, target: Key) -> None:
        with self._cond:
            self._target = target
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._target is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                wait = self._last + self.idle_s - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                target, self._target = self._target, None
            try:
                self._encode(target)
            except Exception as exc:  # a bad file: the user sees the error when opening it
                self.errors.append(f"{target}: {exc}")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)


__all__ = ["EmbeddingLRU", "Encoded", "Prefetcher", "encode_image", "show_encoded"]
