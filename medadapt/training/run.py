"""One fine-tuning run from start to finish: :func:`train`.

It checks the run folder, builds the :class:`~medadapt.training.trainer.Trainer`,
resumes from ``checkpoints/last.pt`` when asked, and writes ``config.yaml``,
``log.csv`` (+ ``tensorboard/``), ``adapter/`` (best on validation),
``metrics.json`` and ``val_overlays.png``. Launched by ``torchrun`` on several
ranks, each rank runs its share of every batch and rank 0 alone writes the run
folder (:mod:`medadapt.training.distributed`).
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..adapters import load_adapter, save_adapter
from ..core.config import dump_yaml
from ..core.errors import MedAdaptError
from ..core.files import atomic_write, atomic_write_json, atomic_write_text
from ..foundation import build_backbone
from ..io.overlay import legend, overlay
from .config import TrainingConfig
from .distributed import World, current, launched, start, stop
from .extension import ExtensionFactory
from .run_folder import check_run_dir, logged_seconds, record_start, run_folder, truncate_log
from .trainer import Trainer, automatic_labels


def train(config: TrainingConfig, *, extensions: Sequence[ExtensionFactory] = (), resume: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """Fine-tune an adapted backbone as ``config`` says, with ``extensions`` plugged in; returns the run folder.

    :func:`medadapt.recipes.finetune` calls this with the extensions a full
    config names (the semi-supervised loop for an ``ssl:`` section). Launched
    by ``torchrun`` on several ranks, every rank calls it; rank 0 alone reads
    and writes the run folder, logs and shows progress (``docs/distributed.md``).
    """
    joined = launched() and current().size == 1  # this call makes the process group
    world = start()
    try:
        return _train(config, extensions, resume, log if world.main else (lambda m: None), world)
    except MedAdaptError as exc:
        if world.main or getattr(exc, "reported", False):
            raise
        raise MedAdaptError(f"[rank {world.rank}] {exc}") from exc  # one rank's own error: it says so
    finally:
        if joined:
            stop()


def _train(config: TrainingConfig, extensions: Sequence[ExtensionFactory], resume: bool,
           log: Callable[[str], None], world: World) -> Path:
    # every check runs on every rank (rank 0 alone for the run folder) before anything is written; an error
    # on any rank stops them all, and rank 0 reports it
    run = world.agree(lambda: check_run_dir(config, resume) if world.main else run_folder(config))
    t0 = time.perf_counter()
    tr = world.agree(lambda: Trainer(config, run, log, extensions))  # reads the data and builds the model
    log(f"{len(tr.train_slices)} labelled slices, {len(tr.val_slices)} validation slices from "
        f"{len(tr.val_cases)} cases; classes {tr.class_names}; device {tr.device}"
        + ("; embeddings cached (encoder frozen)" if tr.use_cache else "")
        + (f"; {world.size} ranks, batch {config.train.batch_size} per rank" if world.size > 1 else ""))
    for path, reason in tr.skipped:
        log(f"skipped {path}: {reason}")
    log(str(tr.summary))
    if resume:  # rank 0 reads the checkpoint, every rank continues from it
        state = world.broadcast_object(world.agree(lambda: tr.read_state() if world.main else None))
        world.agree(lambda: tr.apply_state(state))
        if tr.epoch > config.train.epochs:  # config.yaml would record a schedule shorter than the run's
            raise MedAdaptError(f"train.epochs {config.train.epochs} is below the {tr.epoch} epochs this run has "
                                f"trained: resume with train.epochs={tr.epoch} or more")
        log(f"resumed after epoch {tr.epoch} (best val Dice {tr.best:.4f} at epoch {tr.best_epoch})")
    if world.main:  # after the checkpoint was accepted: a refused resume leaves the recorded config as it was
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", dump_yaml(config.to_dict()))
        record_start(run)  # where its relative data.root and checkpoint are relative to
    tr.distribute()
    tr.encode_all()
    writer = _tensorboard(run) if config.train.tensorboard and world.main else None
    log_path = run / "log.csv"
    new_log = not log_path.exists() or not resume
    if world.main and not new_log:
        truncate_log(log_path, tr.epoch)  # a kill between the log row and the checkpoint left a row ahead
        t0 -= logged_seconds(log_path)  # wall seconds keep counting across the interruption
    with (open(log_path, "w" if new_log else "a", newline="") if world.main else contextlib.nullcontext()) as fh, tqdm(
        range(tr.epoch, config.train.epochs), initial=tr.epoch, total=config.train.epochs, desc="epochs", unit="epoch",
        disable=not world.main,
    ) as bar:
        w = csv.writer(fh) if fh is not None else None
        columns = {k: f for ext in tr.extensions for k, f in ext.log_columns.items()}
        if new_log and w is not None:
            w.writerow(["epoch", "loss", "val_dice", *[f"val_{n}" for n in tr.class_names], "lr", "seconds", *columns])
        for epoch in bar:
            loss = tr.train_epoch(bar)
            tr.epoch = epoch + 1
            tr.check_ranks()
            if w is None:  # ranks other than 0 write nothing
                continue
            row = {"epoch": tr.epoch, "loss": loss}
            if tr.val_samples and config.prompts.automatic and (tr.epoch % config.train.val_every == 0 or tr.epoch == config.train.epochs):
                val = tr.validate()
                row.update(val_dice=val["dice"], per_class=val["per_class"])
                row.update(val["extensions"])
                if val["dice"] > tr.best:
                    tr.best, tr.best_epoch = val["dice"], tr.epoch
                    save_adapter(tr.model, run / "adapter", metadata=tr.metadata())
            elif not tr.val_samples or not config.prompts.automatic:
                save_adapter(tr.model, run / "adapter", metadata=tr.metadata())  # no validation: keep the last
                tr.best_epoch = tr.epoch
            tr.history.append(row)
            pcs = row.get("per_class", {})
            stats = {**tr.epoch_stats, **row}
            w.writerow([tr.epoch, f"{loss:.5f}", f"{row.get('val_dice', float('nan')):.5f}",
                        *[f"{pcs.get(n, float('nan')):.5f}" for n in tr.class_names],
                        f"{tr.sched.get_last_lr()[0]:.3e}", f"{time.perf_counter() - t0:.1f}",
                        *[format(stats.get(k, float("nan")), f) for k, f in columns.items()]])
            fh.flush()
            if writer is not None:
                writer.add_scalar("loss", loss, tr.epoch)
                if "val_dice" in row:
                    writer.add_scalar("val/dice", row["val_dice"], tr.epoch)
            extra = {k: format(stats.get(k, float("nan")), ".3f") for k in columns}
            # shown with the bar's next update (one line per epoch where output is a log file)
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{row.get('val_dice', float('nan')):.3f}",
                            best=f"{tr.best:.3f}", **extra, refresh=False)
            tr.save_state()
    if not world.main:
        return run
    if writer is not None:
        writer.close()
    metrics = {
        "best_epoch": tr.best_epoch, "best_val_dice": tr.best, "classes": tr.class_names,
        "train_slices": len(tr.train_slices), "val_slices": len(tr.val_slices),
        "val_cases": [c.case_id for c in tr.val_cases], "seconds": time.perf_counter() - t0,
        "history": tr.history, "trainable_parameters": tr.summary.trainable,
    }
    atomic_write_json(run / "metrics.json", metrics, default=float)
    if tr.val_slices and config.prompts.automatic:
        _overlay_grid(run, tr)
    log(f"best validation Dice {tr.best:.4f} at epoch {tr.best_epoch}; run folder {run}")
    return run


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: the CSV log remains
        return None
    return SummaryWriter(str(run / "tensorboard"))


@torch.inference_mode()
def _overlay_grid(run: Path, tr: Trainer, n: int = 8) -> None:
    """A PNG grid of validation slices with the best model's automatic masks (decoded as validation decodes
    them, from the cached embeddings when the run has them), and a legend strip below it naming each class in
    the colour :func:`~medadapt.io.overlay.overlay` gives it."""
    model = load_adapter(build_backbone(tr.cfg.backbone, tr.cfg.checkpoint), run / "adapter").to(tr.device).eval()
    with_fg = [(sl, s) for sl, s in zip(tr.val_slices, tr.val_samples) if s.label is not None and s.label.any()]
    step = max(1, len(with_fg) // n)
    names, c = list(tr.class_names), len(tr.class_names)
    tiles = []
    for sl, s in with_fg[::step][:n]:
        emb = (tr.cache.get([s], tr.device, torch.float32) if tr.cache is not None
               else model.encode(s.pixels[None].to(tr.device)))
        labels = automatic_labels(model, emb, [s], c)[0]
        masks = np.stack([labels == k + 1 for k in range(c)])  # mask i is class names[i], drawn in colour i
        tiles.append(Image.fromarray(overlay(sl.image, masks)).resize((256, 256)))
    if not tiles:
        return
    cols = 4
    rows = math.ceil(len(tiles) / cols)
    key = Image.fromarray(legend(names, 256 * cols))
    grid = Image.new("RGB", (256 * cols, 256 * rows + key.height))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * 256, (i // cols) * 256))
    grid.paste(key, (0, 256 * rows))
    atomic_write(run / "val_overlays.png", lambda tmp: grid.save(tmp, format="PNG"))


__all__ = ["train"]
