"""Mapping YAML sections onto dataclasses, strictly.

A misspelt key in a config must be an error that names it, not a setting
that is silently ignored while the run uses a default.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence, TypeVar

from .errors import MedAdaptError

T = TypeVar("T")


def build_dataclass(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)``, refusing keys ``cls`` does not have (named in the error)."""
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise MedAdaptError(f"unknown key(s) {unknown} in '{where}' config; allowed: {sorted(allowed)}")
    return cls(**data)


def check_templates(templates: str | Sequence[str], where: str) -> tuple[str, ...]:
    """Sentence templates as a tuple; each must hold exactly one ``{}`` where the text goes."""
    out = (templates,) if isinstance(templates, str) else tuple(templates)
    if not out or any(not isinstance(t, str) or t.count("{}") != 1 for t in out):
        raise MedAdaptError(
            f"{where} must be strings with exactly one '{{}}' where the text goes, e.g. 'the {{}}'; got {list(out)!r}"
        )
    return out


def check_phrase_map(mapping: Any, where: str, example: str) -> dict[str, list[str]]:
    """A dict from a name to a list of other phrasings (synonyms, aliases), as plain lists."""
    if not isinstance(mapping, dict) or any(
        not isinstance(v, (list, tuple)) or not all(isinstance(a, str) and a.strip() for a in v)
        for v in mapping.values()
    ):
        raise MedAdaptError(f"{where} must map a name to a list of other names (phrasings), e.g. {example}")
    return {str(k): list(v) for k, v in mapping.items()}


__all__ = ["build_dataclass", "check_phrase_map", "check_templates"]
