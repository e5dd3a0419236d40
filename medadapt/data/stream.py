"""Unlabelled slices streamed a few cases at a time, for data sets larger than memory.

The semi-supervised loop needs a steady supply of unlabelled slices in random
order, but not all of them at once. :class:`CaseStream` reads
``cases_per_chunk`` cases, shuffles their slices, serves them, and reads the
next cases; each pass over all cases uses a new random case order. At most one
chunk of cases (plus the tail of the previous one) is in memory.

Across several ranks (``torchrun``), every rank keeps the same stream (the
same generator, the same case order and slice order), but reads only its share
of each chunk's cases: a slice another rank read is an :class:`Elsewhere`
reference, and the rank holding it supplies what the step needs. The stream's
state (:meth:`CaseStream.state_dict`) names cases and slices, not ranks, so a
run resumes from it exactly, on any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import MedAdaptError
from .cases import Case
from .config import DataConfig, resolve_classes
from .datasets import _guarded  # one case read under data.on_error, as SliceDataset reads each of its cases


@dataclass(frozen=True)
class Elsewhere:
    """A slice of the stream that rank ``owner`` read and holds: its case, slice index and cache key."""

    case_id: str
    index: int | None
    key: str | None
    owner: int


class CaseStream:
    """An endless, shuffled supply of (prepared) slices from ``cases``.

    ``prepare`` turns a list of :class:`~medadapt.data.Slice2D` into whatever
    the consumer wants, one item per slice (the trainer passes its model-frame
    preprocessing), so only prepared items of the current chunk are held.
    With ``ranks`` > 1, ``share(obj)`` must return every rank's ``obj`` in rank
    order (an all-gather), and this rank reads chunk positions ``rank``,
    ``rank + ranks``, ...; an item's ``key`` attribute, where it has one,
    travels with its reference.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        config: DataConfig,
        rng: np.random.Generator,
        cases_per_chunk: int = 8,
        prepare: Callable[[list], list] | None = None,
        *,
        rank: int = 0,
        ranks: int = 1,
        share: Callable[[Any], list] | None = None,
    ) -> None:
        if not cases:
            raise MedAdaptError("nothing to stream: no unlabelled cases")
        if cases_per_chunk < 1:
            raise MedAdaptError(f"cases_per_chunk must be >= 1; got {cases_per_chunk}")
        if ranks > 1 and share is None:
            raise ValueError("a stream over several ranks needs share (an all-gather of objects)")
        self.cases, self.config, self.rng = list(cases), config, rng
        self.all_cases = list(cases)
        self.cases_per_chunk = cases_per_chunk
        self.prepare = prepare or (lambda slices: slices)
        self.rank, self.ranks = rank, ranks
        self.share = share or (lambda obj: [obj])
        self.skipped: list[tuple[str, str]] = []
        self.passes = 0  # completed passes over all cases
        self.chunks_read = 0
        self._queue: list[Case] = []
        self._buffer: list = []

    # ------------------------------------------------------------------ reading
    def _read(self, cases: Sequence[Case]) -> tuple[list[list], list[tuple[str, str]], int]:
        """This rank's prepared items of ``cases``, per case, the files skipped, and constant slices dropped."""
        classes = resolve_classes(self.config)
        counts = {"constant": 0, "filtered": 0}
        skipped: list[tuple[str, str]] = []
        per_case = [_guarded(c, self.config, classes, "all", False, counts, skipped) for c in cases]
        items = self.prepare([s for slices in per_case for s in slices])
        out, i = [], 0
        for slices in per_case:
            out.append(items[i : i + len(slices)])
            i += len(slices)
        return out, skipped, counts["constant"]

    def _read_shared(self, cases: Sequence[Case]) -> tuple[list, list[tuple[str, str]], int]:
        """Every item of ``cases`` in case order (this rank's own, :class:`Elsewhere` for the others' shares),
        the files skipped and constant slices dropped, over all ranks."""
        mine = list(range(self.rank, len(cases), self.ranks))
        own, skipped, constant = self._read([cases[p] for p in mine])
        if self.ranks == 1:
            return [item for items in own for item in items], skipped, constant
        refs = {p: [(it.case_id, it.index, getattr(it, "key", None)) for it in items] for p, items in zip(mine, own)}
        every = self.share((refs, skipped, constant))
        held = dict(zip(mine, own))
        out: list = []
        for p in range(len(cases)):
            owner = p % self.ranks
            if owner == self.rank:
                out += held[p]
            else:
                out += [Elsewhere(cid, idx, key, owner) for cid, idx, key in every[owner][0][p]]
        return out, [s for _, sk, _ in every for s in sk], sum(c for _, _, c in every)

    def _refill(self) -> None:
        for _ in range(len(self.cases) + 1):  # every case may be skipped; stop after one full pass
            if not self._queue:
                if self.chunks_read:
                    self.passes += 1
                self._queue = [self.cases[i] for i in self.rng.permutation(len(self.cases))]
            chunk, self._queue = self._queue[: self.cases_per_chunk], self._queue[self.cases_per_chunk :]
            items, skipped, constant = self._read_shared(chunk)
            if not items:  # every case of the chunk was skipped or empty
                msg = (f"no slices left from {len(chunk)} cases (skipped {len(skipped)}, constant {constant}); "
                       "check the unlabelled cases")
                # cases whose slices are all blank leave the stream, as the in-memory datasets drop blank slices;
                # only a file that cannot be read stops a run under on_error: stop
                if self.config.on_error == "stop" and skipped:
                    raise MedAdaptError(msg)
                self.skipped += [(str(c.image_path), msg) for c in chunk]
                self.cases = [c for c in self.cases if c not in chunk]
                if not self.cases:
                    break
                continue
            self.skipped += skipped
            bad = {p for p, _ in skipped}  # read once: an unreadable case leaves the stream
            self.cases = [c for c in self.cases if str(c.image_path) not in bad and str(c.label_path) not in bad]
            self.chunks_read += 1
            order = self.rng.permutation(len(items))
            self._buffer += [items[i] for i in order]
            if self._buffer:
                return
        raise MedAdaptError(f"no readable slice in the {len(self.cases)} unlabelled cases; see the skipped list")

    def take(self, n: int) -> list:
        """The next ``n`` items (reading more cases as needed); with several ranks, the same ``n`` slices on
        every rank, each either held here or an :class:`Elsewhere`."""
        while len(self._buffer) < n:
            self._refill()
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def __len__(self) -> int:
        """The number of cases (the number of slices is not known before they are read)."""
        return len(self.cases)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands, by case id and slice index (plain values: JSON-able, rank-independent)."""
        return {
            "rng": self.rng.bit_generator.state, "cases": [c.case_id for c in self.cases],
            "queue": [c.case_id for c in self._queue],
            "buffer": [[it.case_id, None if it.index is None else int(it.index)] for it in self._buffer],
            "passes": self.passes, "chunks_read": self.chunks_read, "skipped": [list(s) for s in self.skipped],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the slices waiting in the buffer are read again (each rank its share of
        their cases), so the next slices served are the ones a stream never stopped would serve."""
        by_id = {c.case_id: c for c in self.all_cases}
        unknown = sorted({i for i in state["cases"] + state["queue"] + [r[0] for r in state["buffer"]]} - set(by_id))
        if unknown:
            raise MedAdaptError(f"the checkpoint's unlabelled stream names cases this config does not select "
                                f"({', '.join(unknown[:3])}); resume with the data config the run started with")
        refs = [(cid, idx) for cid, idx in state["buffer"]]
        needed = list(dict.fromkeys(cid for cid, _ in refs))
        items, _, _ = self._read_shared([by_id[cid] for cid in needed])
        found = {(it.case_id, it.index): it for it in items}
        lost = [r for r in refs if r not in found]
        if lost:
            raise MedAdaptError(f"slice {lost[0][1]} of unlabelled case {lost[0][0]!r} could not be read again on "
                                "resume; was the data changed?")
        self._buffer = [found[r] for r in refs]
        self.cases = [by_id[i] for i in state["cases"]]
        self._queue = [by_id[i] for i in state["queue"]]
        self.passes, self.chunks_read = int(state["passes"]), int(state["chunks_read"])
        self.skipped = [tuple(s) for s in state["skipped"]]
        self.rng.bit_generator.state = state["rng"]


__all__ = ["CaseStream", "Elsewhere"]
