"""Training on several processes: ``torchrun --nproc-per-node N -m medadapt finetune CONFIG``.

torchrun starts one process per rank and tells each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`start` joins them into one process group (gloo for
CPU tensors, NCCL for CUDA ones). Launched any other way, :func:`current` is
a :class:`World` of one rank and every helper here does nothing.

How a run is split (``docs/distributed.md``):

* Every rank draws each step's *global* batch (``train.batch_size`` x ranks
  labelled samples, ``ssl.unlabeled_batch_size`` x ranks unlabelled ones) and
  every random number of the step from the same seeded generators, exactly as
  one process would draw them. So the run's random stream does not depend on
  the number of ranks, and a checkpoint holds no per-rank state.
* Each rank runs the model's forward passes on its own rows of that batch
  (:class:`Split`); the outputs are gathered (:meth:`World.gather`), and every
  rank computes the same loss on the whole batch, as one process would.
* The gathered rows pass their gradient back to the rank that made them,
  multiplied by the number of ranks, and DistributedDataParallel averages the
  parameter gradients over the ranks: the sum is the one-process gradient.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import MedAdaptError

T = TypeVar("T")
_STARTED = False  # whether start() made the process group (then stop() ends it)


class ReportedElsewhere(MedAdaptError):
    """An error that rank 0 reports for all ranks: the others exit without repeating it."""

    reported = True


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise MedAdaptError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def start(timeout_minutes: float = 60.0) -> "World":
    """Join the other ranks (once; a no-op when not launched by torchrun) and return this rank's :class:`World`."""
    global _STARTED
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise MedAdaptError("this torch build has no torch.distributed: run one process, without torchrun")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    except (ValueError, RuntimeError) as exc:
        raise MedAdaptError(f"could not join the other ranks: {' '.join(str(exc).split())[:300]}; "
                            "launch with torchrun (docs/distributed.md)") from None
    _STARTED = True
    return current()


def stop(*, wait: bool = False) -> None:
    """Leave the process group, if :func:`start` made it. ``wait`` (after a success on every rank): first wait
    until every rank is done, so that no rank tears its connections down while another still uses them."""
    global _STARTED
    if _STARTED and dist.is_initialized():
        # a DistributedDataParallel model still in a reference cycle would hold the process group until the
        # interpreter shuts down, and gloo's threads would be torn down then: free it now, while all is whole
        gc.collect()
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    _STARTED = False


def current() -> "World":
    """This process's rank and the number of ranks (one, when no process group is running)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def local_rank() -> int:
    """This rank's index on its own machine (``LOCAL_RANK``; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def rank_device(device: torch.device) -> torch.device:
    """The device a rank trains on: with several ranks on CUDA, GPU ``LOCAL_RANK``, one rank per GPU."""
    if device.type == "cuda" and current().size > 1:
        here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), torch.cuda.device_count()
        if here > gpus:
            raise MedAdaptError(f"{here} ranks on this machine but {gpus} GPU(s): NCCL takes one rank per GPU; "
                                f"launch with --nproc-per-node {gpus}, or set train.device: cpu")
        return torch.device("cuda", local_rank())
    return device


@dataclass(frozen=True)
class World:
    """This rank's place among ``size`` ranks; with one rank every method is the identity or does nothing."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that reads and writes the run folder, logs and shows progress."""
        return self.rank == 0

    def split(self, n: int) -> "Split":
        """This rank's share of a batch of ``n`` rows."""
        return Split(self, n)

    # ---------------------------------------------------------------- tensors
    def gather(self, local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """The rows every rank computed (``counts[r]`` from rank r, in rank order), on every rank.

        Autograd flows back: the gradient of this rank's rows, times the number
        of ranks (each rank computes the same loss from the gathered rows, and
        DistributedDataParallel averages). A rank with no rows passes one
        row it computed anyway (see :meth:`Split.take`); it is dropped.
        """
        if self.size == 1:
            return local
        return _Gather.apply(local, tuple(int(c) for c in counts), self.rank, self.size)

    def assemble(self, local: torch.Tensor | None, owners: Sequence[int], device: torch.device) -> torch.Tensor:
        """Rows held by different ranks, in order: row i comes from rank ``owners[i]``; ``local`` holds this
        rank's rows in that order (None when it holds none). No gradient."""
        counts = [sum(1 for o in owners if o == r) for r in range(self.size)]
        if min(counts) == 0:  # a rank without rows learns their shape and type from the others
            specs = self.all_gather_object(None if local is None else (tuple(local.shape[1:]), local.dtype))
            spec = next(s for s in specs if s is not None)
            if local is None:
                local = torch.zeros((0, *spec[0]), dtype=spec[1], device=device)
        with torch.no_grad():
            rows = _all_gather_rows(local, counts, self.size) if self.size > 1 else local
        places = [i for r in range(self.size) for i, o in enumerate(owners) if o == r]
        out = torch.empty_like(rows)
        out[torch.tensor(places, device=rows.device)] = rows
        return out

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a new tensor)."""
        if self.size == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    # ---------------------------------------------------------------- objects
    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.size == 1:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.size > 1:
            dist.barrier()

    # ---------------------------------------------------------------- agreement
    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; when it raises a :class:`MedAdaptError` on any rank, every rank raises:
        rank 0 with the message (of the lowest failing rank, which it names), the others a
        :class:`ReportedElsewhere`, so the user reads the error once."""
        err: MedAdaptError | None = None
        result = None
        try:
            result = fn()
        except MedAdaptError as exc:
            if self.size == 1:
                raise
            err = exc
        if self.size == 1:
            return result  # type: ignore[return-value]
        failed = [(r, m) for r, m in enumerate(self.all_gather_object(None if err is None else str(err)))
                  if m is not None]
        if not failed:
            return result  # type: ignore[return-value]
        if not self.main:
            raise ReportedElsewhere(failed[0][1])
        if err is not None:
            raise err
        raise MedAdaptError(f"rank {failed[0][0]}: {failed[0][1]}")

    def check_same(self, state: dict[str, Any], what: str) -> None:
        """Raise when the ranks hold different values for ``state`` (tensors or plain values): a rank that
        drew another random number or missed an update would otherwise train on silently, diverging."""
        if self.size == 1:
            return
        every = self.all_gather_object({k: _digest(v) for k, v in state.items()})
        first = every[0]
        for r, theirs in enumerate(every[1:], 1):
            differ = sorted(k for k in set(theirs) | set(first) if theirs.get(k) != first.get(k))
            if differ:
                msg = (f"rank {r} holds another {what} than rank 0 ({', '.join(differ[:3])}"
                       f"{' ...' if len(differ) > 3 else ''}): the ranks diverged; please report it")
                raise MedAdaptError(msg) if self.main else ReportedElsewhere(msg)


class Split:
    """One rank's contiguous share (``start:stop``) of a batch of ``n`` rows; shares differ by at most one row."""

    def __init__(self, world: World, n: int) -> None:
        self.world, self.n = world, n
        bounds = [(n * r) // world.size for r in range(world.size + 1)]
        self.counts = [b - a for a, b in zip(bounds, bounds[1:])]
        self.start, self.stop = bounds[world.rank], bounds[world.rank + 1]

    def take(self, x: T) -> T:
        """This rank's rows of ``x`` (a tensor or list over the batch). A rank without rows takes the first row:
        it runs the same layers as the others (DistributedDataParallel waits for every rank's gradients) and
        :meth:`gather` drops the row, so its gradient is zero."""
        if self.world.size == 1:
            return x
        return x[self.start : self.stop] if self.stop > self.start else x[:1]  # type: ignore[index]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The whole batch's rows from every rank's share (see :meth:`World.gather`)."""
        return self.world.gather(local, self.counts)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: tuple[int, ...], rank: int, size: int) -> torch.Tensor:
        ctx.counts, ctx.rank, ctx.size = counts, rank, size
        return _all_gather_rows(local.detach()[: counts[rank]], counts, size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        counts, rank = ctx.counts, ctx.rank
        if counts[rank] == 0:  # the row computed only to run the layers: no gradient
            return grad.new_zeros((1, *grad.shape[1:])), None, None, None
        start = sum(counts[:rank])
        return grad[start : start + counts[rank]] * ctx.size, None, None, None


def _all_gather_rows(rows: torch.Tensor, counts: Sequence[int], size: int) -> torch.Tensor:
    """Concatenate ``counts[r]`` rows from each rank r (padded to one length for the collective)."""
    dtype = rows.dtype
    rows = rows.to(torch.uint8) if dtype == torch.bool else rows
    buf = rows.new_zeros((max(counts), *rows.shape[1:]))
    buf[: rows.shape[0]] = rows
    parts = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(dtype)


def _digest(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        kind = str((t.dtype, tuple(value.shape))).encode()
        return hashlib.sha1(t.view(torch.uint8).numpy().tobytes() + kind).hexdigest()
    return hashlib.sha1(repr(value).encode()).hexdigest()


class _Step(nn.Module):
    """The model as a submodule, and a forward that is one step's loss (what DistributedDataParallel wraps)."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, *args: Any) -> torch.Tensor:
        return self._loss(*args)


def data_parallel(model: nn.Module, loss: Callable[..., torch.Tensor], device: torch.device) -> nn.Module:
    """``loss`` as the forward of a DistributedDataParallel module over ``model``: calling it runs the step's
    forward, and its backward averages the trainable parameters' gradients over the ranks (frozen ones are not
    touched; a parameter no rank used keeps no gradient, as in one process)."""
    from torch.nn.parallel import DistributedDataParallel

    options = inspect.signature(DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in options else {"broadcast_buffers": False}
    return DistributedDataParallel(_Step(model, loss), device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True, **buffers)


__all__ = [
    "ReportedElsewhere", "Split", "World", "current", "data_parallel", "launched", "local_rank", "rank_device",
    "start", "stop",
]
