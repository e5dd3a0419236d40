"""Unlabelled slices streamed a few cases at a time, for data sets larger than memory.

The semi-supervised loop needs a steady supply of unlabelled slices in random
order, but not all of them at once. :class:`CaseStream` reads
``cases_per_chunk`` cases, shuffles their slices, serves them, and reads the
next cases; each pass over all cases uses a new random case order. At most one
chunk of cases (plus the tail of the previous one) is in memory.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..core.errors import MedAdaptError
from .cases import Case
from .config import DataConfig
from .datasets import SliceDataset


class CaseStream:
    """An endless, shuffled supply of (prepared) slices from ``cases``.

    ``prepare`` turns a list of :class:`~medadapt.data.Slice2D` into whatever
    the consumer wants (the trainer passes its model-frame preprocessing), so
    only prepared items of the current chunk are held.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        config: DataConfig,
        rng: np.random.Generator,
        cases_per_chunk: int = 8,
        prepare: Callable[[list], list] | None = None,
    ) -> None:
        if not cases:
            raise MedAdaptError("nothing to stream: no unlabelled cases")
        if cases_per_chunk < 1:
            raise MedAdaptError(f"cases_per_chunk must be >= 1; got {cases_per_chunk}")
        self.cases, self.config, self.rng = list(cases), config, rng
        self.cases_per_chunk = cases_per_chunk
        self.prepare = prepare or (lambda slices: slices)
        self.skipped: list[tuple[str, str]] = []
        self.passes = 0  # completed passes over all cases
        self.chunks_read = 0
        self._queue: list[Case] = []
        self._buffer: list = []

    def _refill(self) -> None:
        for _ in range(len(self.cases) + 1):  # every case may be skipped; stop after one full pass
            if not self._queue:
                if self.chunks_read:
                    self.passes += 1
                self._queue = [self.cases[i] for i in self.rng.permutation(len(self.cases))]
            chunk, self._queue = self._queue[: self.cases_per_chunk], self._queue[self.cases_per_chunk :]
            try:
                ds = SliceDataset(chunk, self.config, keep="all", with_labels=False)
            except MedAdaptError as exc:  # every case of the chunk was skipped or empty
                if self.config.on_error == "stop":
                    raise
                self.skipped += [(str(c.image_path), str(exc)) for c in chunk]
                self.cases = [c for c in self.cases if c not in chunk]
                if not self.cases:
                    break
                continue
            self.skipped += ds.skipped
            bad = {p for p, _ in ds.skipped}  # read once: an unreadable case leaves the stream
            self.cases = [c for c in self.cases if str(c.image_path) not in bad and str(c.label_path) not in bad]
            self.chunks_read += 1
            items = self.prepare([ds[i] for i in range(len(ds))])
            order = self.rng.permutation(len(items))
            self._buffer += [items[i] for i in order]
            if self._buffer:
                return
        raise MedAdaptError(f"no readable slice in the {len(self.cases)} unlabelled cases; see the skipped list")

    def take(self, n: int) -> list:
        """The next ``n`` items (reading more cases as needed)."""
        while len(self._buffer) < n:
            self._refill()
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def __len__(self) -> int:
        """The number of cases (the number of slices is not known before they are read)."""
        return len(self.cases)


__all__ = ["CaseStream"]
