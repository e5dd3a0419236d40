"""docs/configuration.md is the reference of every recipe key: it names every field of every config
dataclass, in that dataclass's section, with its current default, and nothing that is not a field."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from medadapt.adapters.config import (
    AdapterConfig,
    AutomaticConfig,
    ContextAdapterConfig,
    LearnedTextConfig,
    LoraConfig,
    SpatialAdapterConfig,
)
from medadapt.data import DataConfig
from medadapt.data.config import SELECTION_KEYS
from medadapt.recipes import FinetuneConfig
from medadapt.ssl import DistillConfig, SSLConfig
from medadapt.student import StudentConfig
from medadapt.training.config import PromptTrainingConfig, ScribbleLossConfig, TrainConfig

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

#: dataclass -> the heading of its section in docs/configuration.md
SECTIONS = {
    FinetuneConfig: "# Configuration",
    DataConfig: "## data",
    AdapterConfig: "## adapter",
    LoraConfig: "### adapter.lora",
    SpatialAdapterConfig: "### adapter.spatial",
    ContextAdapterConfig: "### adapter.context",
    AutomaticConfig: "### adapter.automatic",
    PromptTrainingConfig: "## prompts",
    LearnedTextConfig: "### prompts.text",
    TrainConfig: "## train",
    ScribbleLossConfig: "## scribble_loss",
    SSLConfig: "## ssl",
    DistillConfig: "## distill",
    StudentConfig: "### distill.student",
}
_ROW = re.compile(r"^\| `([A-Za-z_]+)` \| ([^|]*) \| ([^|]*) \|", re.M)


def _section(heading: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n") if heading != "# Configuration" else 0
    following = re.search(r"^#{1,3} ", text[start + len(heading) + 2:], re.M)
    return text[start: start + len(heading) + 2 + following.start()] if following else text[start:]


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "required"


def _cell_value(cell: str):
    cell = cell.strip().strip("`")
    try:
        value = yaml.safe_load(cell)
    except yaml.YAMLError:
        return cell
    if isinstance(value, str):
        try:
            return float(value)  # 1e-4
        except ValueError:
            return value
    return value


@pytest.mark.parametrize("cls", list(SECTIONS), ids=lambda c: c.__name__)
def test_every_field_is_documented_with_its_default(cls) -> None:
    rows = {m.group(1): m.group(3) for m in _ROW.finditer(_section(SECTIONS[cls]))}
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in rows]
    assert not missing, f"{cls.__name__} fields missing from {SECTIONS[cls]!r} in docs/configuration.md: {missing}"
    extra = set(rows) - set(names) - (set(SELECTION_KEYS) if cls is DataConfig else set())
    assert not extra, f"docs/configuration.md {SECTIONS[cls]!r} documents keys that are not fields: {sorted(extra)}"
    for f in dataclasses.fields(cls):
        default, cell = _default(f), rows[f.name]
        if dataclasses.is_dataclass(default) or cell.strip().startswith("see "):
            continue  # a whole section (prompts, train): documented in its own table
        documented = _cell_value(cell)
        expected = list(default) if isinstance(default, tuple) else default
        assert documented == expected, f"{cls.__name__}.{f.name}: the page says {cell.strip()!r}, the default is {default!r}"
