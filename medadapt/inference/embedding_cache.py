"""Image embeddings of a volume's slices: in memory up to a budget, on disk beyond it.

A 512 x 512 x 300 CT encoded by SAM ViT-B holds 300 embeddings of 256 x 64 x 64
floats, 1.2 GB in float32; most of a propagation needs only a few neighbouring
slices at a time. :class:`EmbeddingCache` keeps the most recently used
embeddings in memory up to ``budget_bytes`` and writes the least recently used
ones to a private temporary folder, from which they are read back when asked
for again. The folder is removed when the cache is closed or collected; a
process killed outright (SIGKILL) cannot do that, so its folder's name holds
its process id and the next cache to spill removes folders whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from ..core.errors import MedAdaptError

DEFAULT_BUDGET_MB = 1024.0
PREFIX = "medadapt-embeddings-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: leave its folder alone
    return True


def remove_stale_folders(parent: str | os.PathLike) -> list[Path]:
    """Remove the spill folders in ``parent`` whose process no longer runs; returns what was removed."""
    removed = []
    for folder in Path(parent).glob(PREFIX + "*-*"):
        pid = folder.name[len(PREFIX):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def default_budget_bytes() -> int:
    """``MEDADAPT_EMBEDDING_CACHE_MB`` (default 1024) in bytes."""
    raw = os.environ.get("MEDADAPT_EMBEDDING_CACHE_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_BUDGET_MB
    except ValueError:
        raise MedAdaptError(f"MEDADAPT_EMBEDDING_CACHE_MB must be a number of MiB; got {raw!r}") from None
    if not mb > 0:
        raise MedAdaptError(f"MEDADAPT_EMBEDDING_CACHE_MB must be positive; got {raw!r}")
    return int(mb * 2**20)


class EmbeddingCache:
    """Slice index -> embedding tensor, least recently used first to disk.

    Embeddings are kept on the device they came from while in memory, and
    stored on disk as raw tensors (``torch.save`` of a plain tensor, read back
    with ``weights_only=True``), so bfloat16 embeddings stay bfloat16.
    """

    def __init__(self, budget_bytes: int | None = None, folder: str | os.PathLike | None = None) -> None:
        self.budget_bytes = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
        if self.budget_bytes < 0:
            raise MedAdaptError(f"the embedding cache budget must be >= 0 bytes; got {budget_bytes}")
        self._parent = None if folder is None else Path(folder)
        self._folder: Path | None = None
        self._memory: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._on_disk: dict[int, tuple[torch.device, Path]] = {}
        self._bytes = 0
        self._finalizer = None
        self.writes = 0  # embeddings written to disk (for tests and reports)

    def __contains__(self, index: int) -> bool:
        return index in self._memory or index in self._on_disk

    def __len__(self) -> int:
        return len(self._memory) + len(self._on_disk)

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def get(self, index: int) -> torch.Tensor | None:
        """The embedding of slice ``index``, or None when it was never stored."""
        if index in self._memory:
            self._memory.move_to_end(index)
            return self._memory[index]
        if index not in self._on_disk:
            return None
        device, path = self._on_disk.pop(index)
        tensor = torch.load(path, map_location=device, weights_only=True)
        path.unlink(missing_ok=True)
        self.put(index, tensor)
        return tensor

    def put(self, index: int, embedding: torch.Tensor) -> None:
        """Store one slice's embedding (C x h x w), evicting old ones to disk past the budget."""
        if index in self:
            self.discard(index)
        self._memory[index] = embedding
        self._bytes += embedding.numel() * embedding.element_size()
        while self._bytes > self.budget_bytes and len(self._memory) > 1:
            old, tensor = self._memory.popitem(last=False)
            self._bytes -= tensor.numel() * tensor.element_size()
            path = self._disk() / f"{old}.pt"
            torch.save(tensor.detach().cpu().contiguous(), path)
            self._on_disk[old] = (tensor.device, path)
            self.writes += 1

    def discard(self, index: int) -> None:
        if index in self._memory:
            tensor = self._memory.pop(index)
            self._bytes -= tensor.numel() * tensor.element_size()
        elif index in self._on_disk:
            self._on_disk.pop(index)[1].unlink(missing_ok=True)

    def _disk(self) -> Path:
        if self._folder is None:
            parent = self._parent or Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_folders(parent)
            self._folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._folder), True)
        return self._folder

    def close(self) -> None:
        """Forget every embedding and remove the disk folder."""
        self._memory.clear()
        self._on_disk.clear()
        self._bytes = 0
        if self._finalizer is not None:
            self._finalizer()
        self._folder = None


__all__ = ["DEFAULT_BUDGET_MB", "EmbeddingCache", "default_budget_bytes", "remove_stale_folders"]
