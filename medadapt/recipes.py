"""A recipe is a config file: every section of a fine-tuning run, and :func:`finetune` to run it.

:class:`FinetuneConfig` is the trainer's :class:`~medadapt.training.TrainingConfig`
plus the sections of the parts that plug into the trainer: ``ssl:`` (the
semi-supervised loop, :mod:`medadapt.ssl`), and ``distill:`` (the student
distilled from the run afterwards, :func:`distill`). This module sits above both, so
neither the trainer nor the loop needs to know about the other beyond the
extension interface (:mod:`medadapt.training.extension`).

A run's saved ``config.yaml`` is itself a complete recipe: ``medadapt finetune
RUN/config.yaml`` runs it again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.distributed as dist

from .core.config import build_dataclass
from .core.errors import MedAdaptError
from .data import DataConfig
from .ssl import DistillConfig, SemiSupervised, SSLConfig, distill_run, distillation_splits
from .training import ExtensionFactory, Trainer, TrainingConfig, build_config, distributed, read_config, train
from .training.run_folder import recorded_path, recorded_root


@dataclass
class FinetuneConfig(TrainingConfig):
    """Everything ``medadapt finetune`` needs (see ``docs/configuration.md``)."""

    ssl: SSLConfig | None = None  # semi-supervised loop on data.unlabeled (medadapt.ssl)
    distill: DistillConfig | None = None  # a specialist student distilled from the run (medadapt distill)


def config_from_dict(raw: dict[str, Any]) -> FinetuneConfig:
    """Validate a plain dict (parsed YAML) into a :class:`FinetuneConfig`."""
    raw = dict(raw or {})
    if raw.get("ssl") is not None:
        if raw["ssl"] is not True and not isinstance(raw["ssl"], dict):
            raise MedAdaptError(f"ssl must be a section of settings ({{}} for the defaults) or null; got {raw['ssl']!r}")
        raw["ssl"] = build_dataclass(SSLConfig, raw["ssl"] if isinstance(raw["ssl"], dict) else {}, "ssl")
    if raw.get("distill") is not None:
        if raw["distill"] is not True and not isinstance(raw["distill"], dict):
            raise MedAdaptError(f"distill must be a section of settings ({{}} for the defaults) or null; got {raw['distill']!r}")
        section = dict(raw["distill"]) if isinstance(raw["distill"], dict) else {}
        raw["distill"] = build_dataclass(DistillConfig, section, "distill")
    cfg = build_config(FinetuneConfig, raw)
    if cfg.ssl is not None and not cfg.prompts.automatic:
        raise MedAdaptError("ssl: pseudo-labels come from automatic mode; set prompts.automatic: true")
    if cfg.distill is not None and not cfg.prompts.automatic:
        raise MedAdaptError("distill: the student learns from the adapted model's automatic answers; set "
                            "prompts.automatic: true")
    if cfg.data.get("scribbles", "none") != "none" and (cfg.ssl is not None or cfg.distill is not None):
        raise MedAdaptError("data.scribbles: training from scribbles runs without ssl or distill sections; "
                            "set ssl: null and distill: null, or train on full masks")
    if cfg.ssl is not None and not cfg.data.get("unlabeled"):
        raise MedAdaptError("ssl: needs unlabelled cases; set data.unlabeled (ids, a split name, or 'rest:train')")
    if cfg.ssl is not None and cfg.ssl.start_epoch >= cfg.train.epochs:
        raise MedAdaptError(f"ssl.start_epoch {cfg.ssl.start_epoch:g} is not below train.epochs {cfg.train.epochs}: "
                            "the semi-supervised loop would never start; lower it or train longer")
    # checked now, not when the distillation begins after hours of fine-tuning
    if cfg.distill is not None and not (cfg.data.get("unlabeled") or cfg.distill.unlabeled):
        raise MedAdaptError("distill: needs unlabelled cases; set data.unlabeled or distill.unlabeled")
    if cfg.distill is not None and cfg.distill.compare_peer and not cfg.data.get("val"):
        raise MedAdaptError("distill.compare_peer chooses on the validation split, and this config has none: set "
                            "data.val, or set distill.compare_peer: false")
    DataConfig.from_dict(cfg.data)  # a typo or a bad value in data: is named now, not when training reads the data
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Read a YAML recipe, apply ``key=value`` overrides (``train.epochs=5``, ``ssl=null``), validate."""
    return config_from_dict(read_config(path, overrides))


def extensions_for(config: FinetuneConfig) -> list[ExtensionFactory]:
    """The trainer extensions a config's sections ask for."""
    out: list[ExtensionFactory] = []
    if config.ssl is not None:
        ssl = config.ssl
        out.append(lambda context: SemiSupervised(context, ssl))
    return out


def build_trainer(config: FinetuneConfig, run_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Trainer:
    """A :class:`~medadapt.training.Trainer` for ``config`` with its extensions, without running it."""
    return Trainer(config, Path(run_dir), log, extensions_for(config))


def finetune(config: FinetuneConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Fine-tune as ``config`` says (semi-supervised when it has an ``ssl:`` section, then distilled
    into a student when it has a ``distill:`` section); returns the run folder."""
    if config.distill is not None and config.distill.unlabeled is not None:
        # the student's unlabelled cases are found now, not after hours of fine-tuning
        distillation_splits(DataConfig.from_dict(config.data), config.distill)
    run = train(config, extensions=extensions_for(config), resume=resume, log=log)
    if config.distill is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # torchrun: the distillation is one process, on rank 0. Every rank has finished training; they leave
        # the process group together now, so that no rank waits (and times out) for hours at a final barrier
        # while rank 0 distils.
        rank = dist.get_rank()
        distributed.stop(wait=True)
        if rank != 0:
            return run
    elif dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return run
    if config.distill is not None:
        distill(run, config=config, resume=resume or (Path(run) / "distill" / "settings.json").is_file(), log=log)
    return run


def distill(run: str | os.PathLike, overrides: Sequence[str] = (), *, config: FinetuneConfig | None = None,
            resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Distil a fine-tuned run into a student (``RUN/student/``) as its ``config.yaml``'s ``distill:``
    section says (defaults without one); ``overrides`` as ``distill.iterations=3000``; ``config``: use this
    config instead of the run's (what :func:`finetune` passes). Returns the student folder."""
    run = Path(run)
    if config is not None:
        return _distill(run, config, resume, log)
    if not (run / "config.yaml").is_file():
        raise MedAdaptError(f"{run} is not a run folder (no config.yaml): give the folder medadapt finetune wrote")
    places = ("data.root=", "checkpoint=")  # where files are: a moved dataset or weights file, no setting
    bad = [o for o in overrides if not str(o).startswith(("distill.", "distill=", *places))]
    if bad:
        raise MedAdaptError(f"medadapt distill changes only the distill section (distill.KEY=VALUE), and where the "
                            f"data and weights are (data.root=..., checkpoint=...); got {bad}")
    config = load_config(run / "config.yaml", overrides)
    given = {str(o).split("=", 1)[0] for o in overrides}
    saved = {"data": config.data, "output": config.output, "name": config.name}
    if "root" in config.data and "data.root" not in given:  # a relative root, from wherever this runs
        config.data["root"] = recorded_root(run, saved)
    if "checkpoint" not in given:
        config.checkpoint = recorded_path(run, saved, config.checkpoint, "checkpoint")
    return _distill(run, config, resume, log)


def _distill(run: Path, config: FinetuneConfig, resume: bool, log: Callable[[str], None]) -> Path:
    return distill_run(run, DataConfig.from_dict(config.data), config.distill or DistillConfig(),
                       seed=config.train.seed if (config.distill is None or config.distill.seed is None)
                       else config.distill.seed,
                       backbone=config.backbone, checkpoint=config.checkpoint, resume=resume, log=log)


__all__ = ["FinetuneConfig", "build_trainer", "config_from_dict", "distill", "extensions_for", "finetune", "load_config"]
