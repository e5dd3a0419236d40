"""The run folder of a fine-tuning run: where it is, whether it may be written or resumed, and its log.

A resumed run must keep the data, adapter and prompt settings it was started
with (:func:`config_changes` names the keys that differ); a longer ``train``
schedule, another batch split or device may continue it (:data:`RESUMABLE_TRAIN`).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..core.config import dump_yaml, load_yaml
from ..core.errors import MedAdaptError
from ..core.files import atomic_write_json, atomic_write_text, expand_path
from ..data import DataConfig
from .config import TrainingConfig, check_run_name

# the train keys a resumed run may change: how long, in what batches, where and how it runs. The others (lr,
# weight decay, seed, augmentation, validation cases, ...) would not take effect (the optimiser's state brings
# back the recorded ones) or would change what earlier epochs were compared on.
RESUMABLE_TRAIN = ("epochs", "batch_size", "grad_accum", "device", "amp", "val_every", "tensorboard", "cache_dir")


# what a run writes besides its checkpoint: a new run does not write over them
STARTED_IN = "started_in.json"  # the folder a run was (last) started from: its relative paths are relative to it
RUN_FILES = ("adapter", "config.yaml", "log.csv", "metrics.json", STARTED_IN)


def _changed_keys(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, so a refusal says what to put back."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(now), key=str):
            out += _changed_keys(saved.get(key), now.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == now else [prefix.rstrip(".")]


def run_folder(config: TrainingConfig) -> Path:
    """Where ``finetune(config)`` writes: ``output/name`` (``$VARS`` expanded), or ``output`` without a name.

    The folder is always inside ``output`` (the name is one folder name, and
    one that is a link elsewhere is refused).
    """
    check_run_name(config.name, config.output)
    out = Path(expand_path(config.output, "output"))
    run = out / config.name if config.name else out
    if config.name and run.is_symlink():
        raise MedAdaptError(f"run folder {run} is a link to {run.resolve()}: choose another name")
    return run


def _as_read(data: Any) -> Any:
    """A ``data:`` section as the data config reads it (defaults filled in, a root without a trailing ``/``), so
    that writing out a default, or ``data/`` for ``data``, is no change; as it stands where it does not read."""
    if not isinstance(data, dict):
        return data
    try:
        full = DataConfig.from_dict(dict(data)).to_dict()
    except MedAdaptError:
        return data
    if isinstance(full.get("root"), str):
        full["root"] = os.path.normpath(full["root"])
    return load_yaml(dump_yaml(full))


def config_changes(config: TrainingConfig, run: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys where ``config`` differs from the one saved in ``run/config.yaml`` (top-level ``ignore`` skipped).

    Both sides go through the same YAML round trip, so a tuple in memory
    equals the list it was saved as.
    """
    saved = load_yaml((run / "config.yaml").read_text())
    now = load_yaml(dump_yaml(config.to_dict()))
    # a section added to the recipe after the run was written counts as its defaults
    defaults = load_yaml(dump_yaml(type(config)(data=config.data).to_dict()))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    saved["data"], now["data"] = _as_read(saved.get("data")), _as_read(now.get("data"))
    return _changed_keys({k: v for k, v in saved.items() if k not in ignore},
                         {k: v for k, v in now.items() if k not in ignore})


def check_run_dir(config: TrainingConfig, resume: bool) -> Path:
    """The run folder, checked without writing anything: a checkpoint there needs ``resume``, and a resumed
    run must keep its data/adapter/prompt settings."""
    run = run_folder(config)
    if (run / "checkpoints" / "last.pt").exists() and not resume:
        raise MedAdaptError(f"run folder {run} already has a checkpoint: pass --resume to continue it, or choose another output")
    if not resume and ((run / "student").exists() or (run / "distill").exists()):
        # a new adapter there would leave the old student answering automatic predictions for it
        raise MedAdaptError(f"run folder {run} holds the student of an earlier run (student/, distill/): choose "
                            "another name or output, or delete the folder to train there again")
    held = [n for n in RUN_FILES if (run / n).exists()]
    if not resume and held:  # a finished run whose checkpoint was deleted, or a folder of the user's own
        raise MedAdaptError(f"run folder {run} already holds {', '.join(held)} (a run, or files of yours): it is "
                            "left alone; choose another name or output, or delete the folder to train there again")
    if resume and not (run / "checkpoints" / "last.pt").is_file():
        if held:  # stopped before its first checkpoint: nothing to continue, and a new run would not write there
            raise MedAdaptError(f"nothing to resume: {run} holds {', '.join(held)} but no checkpoint (the run stopped "
                                "before its first epoch ended); delete the folder and run again without --resume")
        raise MedAdaptError(f"nothing to resume: {run / 'checkpoints' / 'last.pt'} does not exist; run without --resume")
    cfg_path = run / "config.yaml"
    if resume and cfg_path.exists():
        # distill: checked by the distillation itself
        changed = config_changes(config, run, ignore=("distill",))
        train = [k for k in changed if k.startswith("train.") and k.split(".")[1] not in RESUMABLE_TRAIN]
        changed = [k for k in changed if k != "train" and not k.startswith("train.")]
        if changed:
            raise MedAdaptError(
                f"--resume with a different data/adapter/prompt config than {cfg_path} "
                f"(changed: {', '.join(changed)}); use the same config"
            )
        if train:
            raise MedAdaptError(
                f"--resume cannot change {', '.join(train)} (recorded in {cfg_path}): a resumed run continues "
                f"with its recorded optimiser, seed and validation cases; only train.{', train.'.join(RESUMABLE_TRAIN)} "
                "may change. Put the recorded values back, or start a new run (another name) with the new ones"
            )
    return run


def record_start(run: Path) -> None:
    """Write ``RUN/started_in.json``: the working folder of this start, so that ``evaluate RUN`` and
    ``distill RUN`` read the run's relative ``data.root`` and ``checkpoint`` from any folder."""
    atomic_write_json(run / STARTED_IN, {"folder": os.getcwd()})


def _started_in(run: Path) -> Path | None:
    try:
        folder = json.loads((run / STARTED_IN).read_text(encoding="utf-8")).get("folder")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(folder) if isinstance(folder, str) and Path(folder).is_absolute() else None


def recorded_path(run: Path, saved: dict[str, Any], value: Any, what: str) -> Any:
    """A relative path of the run's config (``data.root``, ``checkpoint``) as the run saw it, from any folder:
    relative to the folder the run was started in (``RUN/started_in.json``), else to the one the run folder's
    place tells (``output/name`` below it); from the current folder only where neither holds it (a run moved
    and started elsewhere), with a warning. Absolute paths, and paths found nowhere, come back as recorded."""
    if not isinstance(value, str) or not value:
        return value
    try:
        text = expand_path(value, what)
    except MedAdaptError:
        return value
    if Path(text).is_absolute():
        return value
    places = [_started_in(run)]
    if isinstance(saved.get("output"), str):
        try:
            rel = Path(os.path.normpath(Path(expand_path(saved["output"], "output")) / (saved.get("name") or "")))
        except MedAdaptError:
            rel = None
        here = run.resolve().parts
        if rel is not None and not rel.is_absolute() and ".." not in rel.parts and len(here) > len(rel.parts) \
                and here[-len(rel.parts):] == rel.parts:
            places.append(Path(*here[: -len(rel.parts)]))
    for place in places:
        if place is not None and (place / text).exists():
            return str(place / text)
    if Path(text).exists():
        warnings.warn(f"{what} {value} of {run} is taken from the current folder ({Path(text).resolve()}): the "
                      "folder the run started in does not hold it", stacklevel=3)
    return value


def recorded_root(run: Path, saved: dict[str, Any]) -> str | None:
    """The run's ``data.root`` as the run saw it (see :func:`recorded_path`)."""
    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    return recorded_path(run, saved, data.get("root"), "data.root")


def logged_seconds(path: Path) -> float:
    """The ``seconds`` of the last row of a run's ``log.csv`` (0 when it has none)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return float(rows[-1]["seconds"]) if rows else 0.0
    except (KeyError, ValueError):
        return 0.0


def truncate_log(path: Path, epoch: int) -> None:
    """Keep the header and the rows of epochs up to ``epoch`` (the checkpoint's), atomically."""
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= epoch]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


__all__ = ["RESUMABLE_TRAIN", "RUN_FILES", "STARTED_IN", "check_run_dir", "config_changes", "logged_seconds",
           "record_start", "recorded_path", "recorded_root", "run_folder", "truncate_log"]
