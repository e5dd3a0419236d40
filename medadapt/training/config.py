"""The trainer's part of a fine-tuning config, and reading configs with ``key=value`` overrides.

Sections map onto dataclasses (``data`` -> :class:`medadapt.data.DataConfig`,
``adapter`` -> :class:`medadapt.adapters.AdapterConfig`, ``prompts`` and
``train`` here), so a typo in a key is an error that names it rather than a
silently ignored setting. The full recipe, with the sections of the parts that
plug into the trainer (``ssl:``), is :class:`medadapt.recipes.FinetuneConfig`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from ..adapters.config import AdapterConfig, LearnedTextConfig
from ..core.config import build_dataclass, check_ranges, load_yaml
from ..core.errors import MedAdaptError

C = TypeVar("C", bound="TrainingConfig")


@dataclass
class PromptTrainingConfig:
    """How prompts are made during training."""

    automatic: bool = True  # learn per-class prompt tokens (prompt-free segmentation)
    tokens_per_class: int = 2
    token_lr_scale: float = 10.0  # class prompt/mask tokens learn this many times faster than the rest
    prompted: list[str] = field(default_factory=lambda: ["box", "points"])  # simulated prompt modes; [] = none
    box_jitter: float = 0.1
    n_pos: int = 1
    n_neg: int = 0
    corrective_clicks: int = 1  # iterative refinement passes with a click in the error region
    prompted_weight: float = 1.0
    # learned text prompts: texts select the learned classes (adapters.LearnedTextConfig keys:
    # encoder, aliases, templates, min_similarity, steps); {} for the defaults, None for none
    text: LearnedTextConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):
            self.text = build_dataclass(LearnedTextConfig, self.text, "prompts.text")


@dataclass
class ScribbleLossConfig:
    """How a run whose labels are scribbles (``data.scribbles``) learns from them.

    Scribbled pixels always get the full loss (cross-entropy and Dice on those
    pixels only). Two more terms are optional (off by default: on synthetic
    discs each one lowered the validation Dice that the partial loss alone
    reached; see ``docs/scribbles.md``):

    * ``pseudo_weight`` > 0: every other pixel of a labelled slice is taught
      by a pseudo-label that the promptable decoder draws from the slice's own
      strokes (clicks sampled along them, redrawn at each step by the model
      being trained), where its winning probability reaches ``confidence`` and,
      with ``agree``, where the automatic head already gives the same class.
      The weight ramps up from 0 over ``ramp_epochs``.
    * ``affinity_weight`` > 0: neighbouring pixels of similar intensity are
      asked to agree (``affinity_sigma``: the intensity scale, in standard
      deviations of the slice).

    Prompted training (``prompts.prompted``) uses ``points`` positive and
    ``negatives`` negative clicks sampled from the strokes as prompts, scored
    on the scribbled pixels.
    """

    pseudo_weight: float = 0.0
    confidence: float = 0.8
    agree: bool = True
    ramp_epochs: float = 1.0
    affinity_weight: float = 0.0
    affinity_sigma: float = 0.3
    points: int = 5
    negatives: int = 5


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto = bf16 autocast where it is fast (CUDA, CPUs with AMX); "bf16" / "off"
    val_every: int = 1
    cache_embeddings: str = "auto"  # auto = when the image encoder is frozen and unadapted
    cache_dir: str | None = None  # also keep embeddings on disk here (keyed by content + backbone)
    augment: bool = True  # flips / rotations / intensity, only when the encoder runs every step
    cache_views: int = 0  # with cached embeddings: this many augmented copies of each labelled slice, encoded once
    tensorboard: bool = True
    max_val_cases: int | None = None


@dataclass
class TrainingConfig:
    """Everything the trainer reads: data, model, adapters, prompts, optimisation, where to write."""

    data: dict[str, Any]
    backbone: str = "litemedsam"
    checkpoint: str | None = None
    adapter: dict[str, Any] = field(default_factory=lambda: {"train": ["mask_decoder"]})
    prompts: PromptTrainingConfig = field(default_factory=PromptTrainingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scribble_loss: ScribbleLossConfig = field(default_factory=ScribbleLossConfig)
    output: str = "runs/finetune"
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_config(cls: type[C], raw: dict[str, Any]) -> C:
    """Validate a plain dict (parsed YAML, sections of ``cls`` other than the trainer's already built) into ``cls``.

    ``cls`` is :class:`TrainingConfig` or a subclass that adds sections; the
    trainer's own sections (``prompts``, ``train``) are built and checked here.
    """
    raw = copy.deepcopy(raw or {})
    if "data" not in raw:
        raise MedAdaptError("the config needs a 'data:' section (root, classes, labeled, val ...)")
    raw["prompts"] = build_dataclass(PromptTrainingConfig, raw.get("prompts") or {}, "prompts")
    raw["train"] = build_dataclass(TrainConfig, raw.get("train") or {}, "train")
    raw["scribble_loss"] = build_dataclass(ScribbleLossConfig, raw.get("scribble_loss") or {}, "scribble_loss")
    cfg = build_dataclass(cls, raw, "config")
    check_run_name(cfg.name, cfg.output)
    AdapterConfig.from_dict(cfg.adapter)  # checked now, so a typo fails before anything runs
    _check_ranges(cfg)
    if not cfg.prompts.automatic and not cfg.prompts.prompted:
        raise MedAdaptError("nothing to train: set prompts.automatic: true and/or prompts.prompted: [box, points]")
    if cfg.prompts.text is not None and not cfg.prompts.automatic:
        raise MedAdaptError("prompts.text selects learned classes; set prompts.automatic: true")
    bad = [m for m in cfg.prompts.prompted if m not in ("box", "points", "box+points")]
    if bad:
        raise MedAdaptError(f"prompts.prompted has unknown modes {bad}; use box, points, box+points")
    if "points" in cfg.prompts.prompted and cfg.prompts.n_pos + cfg.prompts.n_neg < 1:
        raise MedAdaptError("prompts.prompted has points, but prompts.n_pos and prompts.n_neg give no click: set "
                            "n_pos >= 1 (clicks inside the object), or leave points out of prompts.prompted")
    return cfg


# (section, key) -> (check, what is allowed): the ranges the types alone do not say
_RANGES = {
    ("train", "epochs"): (lambda v: v >= 1, ">= 1"),
    ("train", "batch_size"): (lambda v: v >= 1, ">= 1"),
    ("train", "grad_accum"): (lambda v: v >= 1, ">= 1"),
    ("train", "lr"): (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 3.0e-4"),
    ("train", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("train", "seed"): (lambda v: 0 <= v < 2**32, "a whole number in 0..2^32-1"),
    ("train", "warmup_epochs"): (lambda v: v >= 0, ">= 0"),
    ("train", "val_every"): (lambda v: v >= 1, ">= 1"),
    ("train", "cache_views"): (lambda v: v >= 0, ">= 0"),
    ("train", "max_val_cases"): (lambda v: v is None or v >= 1, ">= 1, or null for all"),
    ("train", "amp"): (lambda v: v in ("auto", "bf16", "off"), "auto, bf16 or off"),
    ("train", "cache_embeddings"): (lambda v: v in ("auto", "on", "off"), "auto, on or off"),
    ("prompts", "tokens_per_class"): (lambda v: v >= 1, ">= 1"),
    ("prompts", "token_lr_scale"): (lambda v: v > 0, "> 0"),
    ("prompts", "box_jitter"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("prompts", "n_pos"): (lambda v: v >= 0, ">= 0"),
    ("prompts", "n_neg"): (lambda v: v >= 0, ">= 0"),
    ("prompts", "corrective_clicks"): (lambda v: v >= 0, ">= 0"),
    ("prompts", "prompted_weight"): (lambda v: v >= 0, ">= 0"),
    ("scribble_loss", "pseudo_weight"): (lambda v: v >= 0, ">= 0"),
    ("scribble_loss", "confidence"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("scribble_loss", "ramp_epochs"): (lambda v: v >= 0, ">= 0"),
    ("scribble_loss", "affinity_weight"): (lambda v: v >= 0, ">= 0"),
    ("scribble_loss", "affinity_sigma"): (lambda v: v > 0, "> 0"),
    ("scribble_loss", "points"): (lambda v: v >= 1, ">= 1"),
    ("scribble_loss", "negatives"): (lambda v: v >= 0, ">= 0"),
}


def _check_ranges(cfg: TrainingConfig) -> None:
    for (section, key), rule in _RANGES.items():
        check_ranges(getattr(cfg, section), section, {key: rule})  # finite numbers, and the rule


def check_run_name(name: Any, output: Any) -> None:
    """A run's ``name`` is one folder name inside ``output``: no separator, no ``..``, not an absolute path.

    The run folder is ``output/name``; a name that climbed out of ``output``
    (``../../elsewhere``, ``/tmp/x``) would write a whole run where the user
    did not ask for one.
    """
    if not isinstance(output, str) or not output.strip():
        raise MedAdaptError(f"output must be a folder path (e.g. runs); got {output!r}")
    if name is None:
        return
    if not isinstance(name, str) or not name.strip():
        raise MedAdaptError(f"name must be a folder name (e.g. my_run) or null; got {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name) or "\0" in name:
        raise MedAdaptError(
            f"name {name!r} must be a single folder name inside output ({output}): no '/', '\\' or '..'; "
            "to write elsewhere, set output instead"
        )


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: numbers, lists, null...)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise MedAdaptError(f"override {item!r} is not key=value (e.g. train.epochs=5)")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if node.get(p) is None:  # an absent or null section (`ssl: null` in a run's config.yaml) starts empty
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise MedAdaptError(f"override {key}: {p} is not a section")
        try:
            node[parts[-1]] = load_yaml(value)
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0]
            raise MedAdaptError(f"override {item!r}: the value is not valid YAML ({first}); quote text values") from None
    return raw


def read_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config and apply ``key=value`` overrides: the raw dict, not yet validated.

    Relative paths (data root, output) are taken relative to the current
    directory, as on the command line; ``${MEDADAPT_DATA}``-style environment
    variables in them are expanded, so configs carry no machine-specific paths.
    """
    p = Path(path)
    if p.is_dir():
        raise MedAdaptError(f"config {p} is a folder: give a recipe file in it (e.g. {p}/<name>.yaml), or a run "
                            "folder's config.yaml")
    if not p.is_file():
        raise MedAdaptError(f"config not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MedAdaptError(f"config {p} is not a text (UTF-8) YAML file: give the recipe's .yaml, saved as "
                            "UTF-8") from None
    except OSError as exc:
        raise MedAdaptError(f"cannot read config {p} ({exc.strerror or exc})") from None
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise MedAdaptError(f"config {p} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise MedAdaptError(f"config {p} must be a mapping of sections")
    return apply_overrides(raw, overrides)


__all__ = [
    "PromptTrainingConfig", "ScribbleLossConfig", "TrainConfig", "TrainingConfig", "apply_overrides", "build_config", "check_run_name", "read_config",
]
