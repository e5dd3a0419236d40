"""Atomic file writes: readers see the old file or the complete new one, never half of it.

Every file medadapt writes (masks, overlays, adapters, checkpoints, logs,
reports, cached embeddings) goes through :func:`atomic_write`, so a run killed
mid-write leaves nothing corrupt behind and can be resumed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import MedAdaptError


def expand_path(path: str | os.PathLike, what: str) -> str:
    """A path from a config with ``${VARIABLES}`` and ``~`` expanded; a variable left unset is an error that
    names it (``what``: the setting, for the message)."""
    text = os.path.expanduser(os.path.expandvars(os.fspath(path)))
    unset = sorted(set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)))
    if unset:
        raise MedAdaptError(f"{what} {os.fspath(path)}: the environment variable {', '.join(unset)} is not set; "
                            f"set it (e.g. export {unset[0]}=/path/to/data) or write the path out")
    return text


def path_suffix(path: str | os.PathLike) -> str:
    """A file's lower-case suffix, ``.nii.gz`` counting as one (what readers and writers dispatch on)."""
    path = Path(path)
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    The temporary file keeps ``path``'s suffix (writers such as PIL and
    nibabel choose the format from it) and is unique per call, so two
    processes may write the same target at once; it is removed if ``write``
    fails. A failure to write raises :class:`MedAdaptError` naming the file.
    """
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=path_suffix(target) or ".tmp")
        os.close(fd)
        write(tmp)
        _sync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the user's usual mode
        os.replace(tmp, target)
        tmp = None
    except MedAdaptError:
        raise
    except Exception as exc:  # OSError, and the RuntimeError / SafetensorError of a full disk in torch / safetensors
        raise MedAdaptError(f"could not write {target}: {' '.join(str(exc).split())[:300]}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, data: Any, **kwargs: Any) -> Path:
    """Write ``data`` as indented JSON atomically (``kwargs`` go to :func:`json.dumps`)."""
    return atomic_write_text(path, json.dumps(data, indent=2, **kwargs))


__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "path_suffix"]
