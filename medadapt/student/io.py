"""A student on disk: ``student.safetensors`` (weights) and ``student.json`` (network, classes, origin)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.config import build_dataclass
from ..core.errors import MedAdaptError
from ..core.files import atomic_write, atomic_write_json
from ..foundation.checkpoint import sha256_file
from .config import StudentConfig
from .network import Student

WEIGHTS = "student.safetensors"
DESCRIPTION = "student.json"
FORMAT = "medadapt-student-1"


def save_student(student: Student, folder: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the student's weights and description into ``folder`` (each atomically; the description last)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in student.network.state_dict().items()}
    # the description goes first and comes back last, so a folder caught between the two holds no student
    (folder / DESCRIPTION).unlink(missing_ok=True)
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, tmp))
    # the pair is two files: weights copied in from another run or round are told on load
    atomic_write_json(folder / DESCRIPTION, {"format": FORMAT, **student.metadata(), **(metadata or {}),
                                             "weights_sha256": sha256_file(folder / WEIGHTS)})
    return folder


def has_student(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (a run folder or a student folder) holds a student."""
    folder = Path(folder)
    return (folder / DESCRIPTION).is_file() or (folder / "student" / DESCRIPTION).is_file()


def read_student_info(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / DESCRIPTION).is_file() and (folder / "student" / DESCRIPTION).is_file():
        folder = folder / "student"
    path = folder / DESCRIPTION
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedAdaptError(f"cannot read the student description {path}: {exc}") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise MedAdaptError(f"{path} is not a medadapt student description (format {FORMAT!r})")
    info["folder"] = str(folder)
    return info


def load_student(folder: str | os.PathLike, device: str = "cpu") -> Student:
    """Read a student written by :func:`save_student` (or the one in a run folder's ``student/``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_student_info(folder)
    config = build_dataclass(StudentConfig, info.get("config") or {}, "student.json config")
    names, values = info.get("class_names"), info.get("label_values")
    if not isinstance(names, list) or not isinstance(values, list) or len(names) != len(values) or not names:
        raise MedAdaptError(f"{info['folder']}/{DESCRIPTION}: class_names and label_values must be lists of one length")
    student = Student(config, names, values)
    path = Path(info["folder"]) / WEIGHTS
    if path.is_file() and info.get("weights_sha256") not in (None, sha256_file(path)):
        raise MedAdaptError(f"{path} is not the weights file {DESCRIPTION} was saved with (files from two saves, "
                            "or weights copied in from another run): restore the pair, or distil again")
    try:
        state = load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise MedAdaptError(f"cannot read the student weights {path}: {exc}") from exc
    try:
        student.network.load_state_dict(state)
    except RuntimeError as exc:
        raise MedAdaptError(f"{path} does not fit the network of {DESCRIPTION}: {str(exc).splitlines()[0]}") from exc
    student.info = info
    return student.to(device)


__all__ = ["DESCRIPTION", "WEIGHTS", "has_student", "load_student", "read_student_info", "save_student"]
