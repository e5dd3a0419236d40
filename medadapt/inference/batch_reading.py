"""Reading batch inputs ahead of the model, in worker processes (see :mod:`.batch`).

A file that cannot be read comes back as an error record, and the run goes on.
A reader process that dies (killed by the system for memory, or a crash inside
a file reader) takes only its own file with it: the files that were being read
when it died are read again one at a time, each in a process of its own, so
the one that kills its reader is named in the manifest and every other file is
segmented.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..io.imaging import apply_window, load_image, load_volume
from .batch_inputs import BatchItem

PREFETCH = 2  # files each worker reads ahead


def one_line(exc: BaseException) -> str:
    """An exception as one manifest-sized line (its type named unless it is medadapt's own error)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if isinstance(exc, MedAdaptError) else f"{type(exc).__name__}: {text}"
    return text[:500]


class Reader:
    """Reads item i; an unreadable file comes back as an error, not an exception. Arrays stay numpy arrays: they
    come back through the pool's pipe, received by its own thread while the model runs (torch tensors would
    be shared through file descriptors, which a forked plain process pool does not manage)."""

    def __init__(self, items: Sequence[BatchItem], window: Any) -> None:
        self.items, self.window = list(items), window

    def __getitem__(self, i: int) -> dict[str, Any]:
        item, start = self.items[i], time.perf_counter()
        try:
            if item.error:
                raise MedAdaptError(item.error)
            if item.volume:
                data, affine = load_volume(item.path)
                data = apply_window(data, self.window) if self.window is not None else data
                record = {"pixels": np.ascontiguousarray(data), "affine": np.ascontiguousarray(affine)}
            else:
                image = load_image(item.path, window=self.window, constant_ok=True)
                # a blank image: nothing to find there; answered with an empty mask, as a blank slice of a volume
                record = {"pixels": np.ascontiguousarray(image), "blank": bool(image.min() == image.max())}
        except Exception as exc:  # any reader's failure is this file's failure, recorded in the manifest
            record = {"error": one_line(exc)}
        return {"index": i, "read_seconds": time.perf_counter() - start, **record}


def _start_reader(reader: Reader, parent: int) -> None:
    global _READER
    _READER = reader
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the run in the main process, which ends the pool
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """A reader whose run was killed (SIGKILL, out of memory) exits too, instead of waiting for work forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _read(i: int) -> dict[str, Any]:
    return _READER[i]


_READER: Reader | None = None
# forked on Linux (as DataLoader workers are): a pool starts without importing medadapt again
_CONTEXT = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()


def _pool(reader: Reader, workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_CONTEXT, initializer=_start_reader, initargs=(reader, os.getpid()))


def read_ahead(items: Sequence[BatchItem], window: Any, workers: int) -> Iterator[dict[str, Any]]:
    """Each item's record, in order (``record["index"]`` is its position in ``items``), read ahead by ``workers``
    processes (0: in this process, where a crash inside a reader ends the run)."""
    reader = Reader(items, window)
    if not workers:
        yield from (reader[i] for i in range(len(items)))
        return
    start = 0
    while start < len(items):
        pool = _pool(reader, workers)
        pending, submitted, done = deque(), start, start
        try:
            while done < len(items):
                while submitted < len(items) and len(pending) < workers * PREFETCH:
                    pending.append(pool.submit(_read, submitted))
                    submitted += 1
                try:
                    record = pending.popleft().result()
                except BrokenProcessPool:
                    raise
                except Exception as exc:  # the record could not come back (e.g. no memory to send it): this file fails
                    record = {"index": done, "read_seconds": 0.0,
                              "error": f"its pixels could not be passed back from the reader process ({one_line(exc)})"}
                done += 1
                yield record
            pool.shutdown()
            return
        except BrokenProcessPool as exc:
            died = one_line(exc)
            pool.shutdown()
        except BaseException:  # Ctrl-C, an error in the run, or the run leaving the loop (GeneratorExit)
            _stop(pool)
            raise
        for i in range(done, submitted):  # one of these killed its reader: each alone, so that only that one fails
            yield _read_alone(reader, i, died)
        start = submitted


def _stop(pool: ProcessPoolExecutor) -> None:
    """End a pool at once: the reads queued are cancelled and the readers, which ignore Ctrl-C, terminated.
    (Waiting for the queued reads would keep a stopped run alive for minutes, and a second Ctrl-C during that
    wait could leave it hanging for good.)"""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():  # a reader that outlived SIGTERM
            p.kill()


def _read_alone(reader: Reader, i: int, died: str) -> dict[str, Any]:
    try:
        with _pool(reader, 1) as pool:
            return pool.submit(_read, i).result()
    except BrokenProcessPool:
        return {"index": i, "read_seconds": 0.0,
                "error": f"the process reading this file died ({died}): the file may need more memory than is "
                         "free, or crash the reader it needs; the files read beside it were read again"}


__all__ = ["Reader", "one_line", "read_ahead"]
