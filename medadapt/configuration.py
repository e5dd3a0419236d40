"""Mapping YAML sections onto dataclasses, strictly.

A misspelt key in a config must be an error that names it, not a setting
that is silently ignored while the run uses a default.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from .errors import MedAdaptError

T = TypeVar("T")


def build_dataclass(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)``, refusing keys ``cls`` does not have (named in the error)."""
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise MedAdaptError(f"unknown key(s) {unknown} in '{where}' config; allowed: {sorted(allowed)}")
    return cls(**data)


__all__ = ["build_dataclass"]
