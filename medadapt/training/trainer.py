"""The state of one few-label fine-tuning run, step by step: :class:`Trainer`.

It reads the data by case, applies the adapters, caches embeddings when the
encoder is frozen, and trains with the automatic (learned class tokens) and
prompted (simulated boxes/clicks with corrective clicks) losses, AdamW with
warm-up + cosine; it validates by mean 3-D Dice per case and saves and
restores its state atomically. :func:`medadapt.training.run.train` drives it
through a whole run.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..adapters import (
    AdapterConfig,
    AutomaticConfig,
    apply,
    read_adapter_info,
    set_train_mode,
    trainable_state,
)
from ..core.device import pick_device
from ..core.errors import MedAdaptError
from ..core.files import atomic_write
from ..data import DataConfig, SliceDataset, discover_cases, split_cases
from ..foundation import build_backbone
from ..foundation.decoding import labels_from_logits
from ..inference.optimize import bf16_is_fast
from .augment import augmented_copies
from .config import TrainingConfig
from .depth import case_planes, link_neighbours, samples_with_neighbours
from .distributed import Split, current, data_parallel, rank_device
from .extension import ExtensionFactory, LabeledBatch, TrainingContext, TrainingExtension
from .losses import automatic_loss
from .prompted import prompted_loss
from .samples import EmbeddingCache, ModelSample, prepare, to_device, to_model_frame
from .scribbles import grid_image, scribble_loss, simulate_scribbles_on
from .text_prompts import train_text_prompts


def seed_everything(seed: int) -> None:
    """Fix Python, NumPy and torch seeds (deterministic data order and prompts)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to zero."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    """State of one fine-tuning run; :func:`train` drives it.

    ``extensions`` are factories called with the run's :class:`TrainingContext`
    once the model and optimiser exist; each returns a
    :class:`TrainingExtension` (e.g. the semi-supervised loop) whose loss the
    trainer adds to its own, and which it calls at fixed points of the loop.
    """

    def __init__(self, config: TrainingConfig, run_dir: Path, log: Callable[[str], None] = print,
                 extensions: Sequence[ExtensionFactory] = ()) -> None:
        self.cfg, self.run_dir, self.log = config, run_dir, log
        tc = config.train
        seed_everything(tc.seed)
        self.world = current()
        self.device = rank_device(pick_device(None if tc.device == "auto" else tc.device))
        self.amp = tc.amp == "bf16" or (tc.amp == "auto" and bf16_is_fast(self.device))

        self.data_cfg = DataConfig.from_dict(config.data)
        splits = split_cases(self.data_cfg, discover_cases(self.data_cfg))
        if not splits.get("labeled"):
            raise MedAdaptError("no labelled cases: set data.labeled to case/patient ids or a dataset.json split")
        self.val_cases = splits.get("val") or []
        if tc.max_val_cases:
            self.val_cases = self.val_cases[: tc.max_val_cases]
        train_ds = SliceDataset(splits["labeled"], self.data_cfg, keep=self.data_cfg.slice_filter)
        self.class_names, self.label_values = list(train_ds.class_names), list(train_ds.label_values)
        self.train_slices = [train_ds[i] for i in range(len(train_ds))]
        self.skipped = list(train_ds.skipped)
        self.val_slices = []
        if self.val_cases:
            val_ds = SliceDataset(self.val_cases, self.data_cfg, keep="all")
            self.val_slices = [val_ds[i] for i in range(len(val_ds))]
            self.skipped += list(val_ds.skipped)
        if not self.train_slices:
            raise MedAdaptError("the labelled cases contain no slice with a target class; check data.classes")
        self.scribbles = self.data_cfg.scribbles != "none"
        if self.data_cfg.scribbles == "simulate":
            self.train_slices = simulate_scribbles_on(self.train_slices, tc.seed)
        if self.scribbles and (extensions or self.world.size > 1):
            raise MedAdaptError("training from scribbles (data.scribbles) runs on one process without ssl or "
                                "distillation sections; remove those sections, or train on full masks")

        adapter = AdapterConfig.from_dict(config.adapter)
        if config.prompts.automatic:
            adapter.automatic = AutomaticConfig(self.class_names, self.label_values, config.prompts.tokens_per_class)
        self.model = build_backbone(config.backbone, config.checkpoint).to(self.device)
        self.model, self.summary = apply(self.model, adapter)
        self.text_fit = None
        if config.prompts.text is not None:  # fitted once on the class names; the images do not enter it
            self.text_fit = train_text_prompts(self.model, copy.deepcopy(config.prompts.text))
        # LoRA and spatial adapters inside the encoder are trainable encoder parameters, so this one
        # test covers "frozen and unadapted": only then are cached embeddings the embeddings.
        self.encoder_frozen = not any(p.requires_grad for p in self.model.image_encoder.parameters())
        self.use_cache = tc.cache_embeddings == "on" or (tc.cache_embeddings == "auto" and self.encoder_frozen)
        if self.use_cache and not self.encoder_frozen:
            raise MedAdaptError("train.cache_embeddings: on needs a frozen, unadapted image encoder")

        self.depth = 0 if adapter.depth is None else int(adapter.depth.neighbours)
        self.context_samples: list[ModelSample] = []  # neighbours encoded for a depth adapter, not trained on
        if self.depth:
            self._check_depth(extensions)
            self.train_samples, self.context_samples = samples_with_neighbours(
                self.model, self.train_slices, case_planes(splits["labeled"], self.data_cfg), self.depth,
                tc.cache_views, tc.seed)
            val_planes = prepare(self.model, case_planes(self.val_cases, self.data_cfg))
            self.val_samples = link_neighbours(prepare(self.model, self.val_slices), val_planes, self.depth)
            self.context_samples += val_planes
        else:
            self.train_samples = prepare(self.model, self.train_slices)
            if self.use_cache and tc.cache_views > 0:
                self.train_samples += prepare(self.model, augmented_copies(self.train_slices, tc.cache_views, tc.seed))
            self.val_samples = prepare(self.model, self.val_slices)
        precision = "bfloat16" if self.amp else "float32"
        self.cache = EmbeddingCache(self.model, tc.cache_dir, precision) if self.use_cache else None
        # Prompt tokens sit at the scale of SAM's prompt embeddings (|x| ~ 0.4 per channel): at the
        # decoder's learning rate Adam moves them ~lr per step, too slowly for classes to separate.
        is_token = lambda n: n in ("class_prompts.tokens", "class_prompts.mask_tokens")  # noqa: E731
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("text_head.")]
        tokens = [p for n, p in trained if is_token(n)]
        others = [p for n, p in trained if not is_token(n)]
        groups = [{"params": others}]
        if tokens:
            groups.append({"params": tokens, "lr": tc.lr * config.prompts.token_lr_scale, "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_samples) / (tc.batch_size * self.world.size * tc.grad_accum))
        total = self.steps_per_epoch * tc.epochs
        warm = int(round(tc.warmup_epochs * self.steps_per_epoch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(total, warm))
        self.rng = np.random.default_rng(tc.seed)
        self.epoch, self.best, self.best_epoch, self.history = 0, -1.0, -1, []
        self.step_in_epoch = 0
        self.epoch_stats: dict[str, float] = {}
        self.context = TrainingContext(
            model=self.model, device=self.device, seed=tc.seed, class_names=self.class_names,
            data_config=self.data_cfg, splits=splits, rng=self.rng, cache=self.cache, embeddings=self.embeddings,
            prepare=lambda slices: prepare(self.model, slices), progress=self.progress, log=log, world=self.world,
        )
        self.extensions: list[TrainingExtension] = [make(self.context) for make in extensions]
        self.step: Callable[[list[int]], torch.Tensor] = self.loss  # DistributedDataParallel's, across ranks

    def _check_depth(self, extensions: Sequence[ExtensionFactory]) -> None:
        """A depth adapter trains on cached neighbour embeddings, from labelled slices alone."""
        if not self.use_cache:
            raise MedAdaptError("adapter.depth trains on cached embeddings of each slice's neighbours: keep the "
                                "image encoder frozen and unadapted (no adapter.lora or adapter.spatial) and "
                                "train.cache_embeddings auto or on")
        if extensions:
            raise MedAdaptError("adapter.depth trains from the labelled volumes only: the semi-supervised loop "
                                "reads unlabelled slices one at a time, without their neighbours; set ssl: null")

    def distribute(self) -> None:
        """Across several ranks, run each step's forward inside DistributedDataParallel (a collective: call it
        on every rank, once they all hold the same weights)."""
        if self.world.size > 1:
            self.step = data_parallel(self.model, self.loss, self.device)

    def progress(self) -> float:
        """Epochs done so far, fractional."""
        batches = math.ceil(len(self.train_samples) / (self.cfg.train.batch_size * self.world.size))
        return self.epoch + self.step_in_epoch / max(1, batches)  # step_in_epoch counts batches, not updates

    # ------------------------------------------------------------------ embeddings
    def encode_all(self) -> None:
        if self.cache is None:
            return
        todo = self.train_samples + self.val_samples
        for ext in self.extensions:
            todo += ext.samples_to_encode()
        known = {s.key for s in todo}
        todo += [s for s in self.context_samples if s.key not in known and not known.add(s.key)]
        # across ranks each encodes its share (the bar shows rank 0's) and they pass each other the embeddings
        with tqdm(total=math.ceil(len(todo) / self.world.size), desc="encoding (cached once)", unit="slice",
                  leave=False, disable=not self.world.main) as bar:
            self.cache.fill(todo, progress=bar.update, world=self.world)
        self.context_samples = []  # only their embeddings are read from here on (by key)

    def embeddings(self, batch: list[ModelSample], pixels: torch.Tensor | None = None) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.get(batch, self.device, torch.bfloat16 if self.amp else torch.float32)
        return self.model.encode(pixels)

    # ------------------------------------------------------------------ one step
    def augmented(self, batch_idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels and decoder-grid targets, with random flips/rotations/gamma when the encoder runs."""
        proc = self.model.processor
        pix, tgt = [], []
        for i in batch_idx:
            s = self.train_slices[i]
            image, label = np.asarray(s.image, np.float32), np.asarray(s.label)
            if self.cfg.train.augment:
                k = int(self.rng.integers(4))
                image, label = np.rot90(image, k, axes=(0, 1)), np.rot90(label, k)
                if self.rng.random() < 0.5:
                    image, label = image[:, ::-1], label[:, ::-1]
                lo, hi = float(image.min()), float(image.max())
                gamma = float(np.exp(self.rng.uniform(-0.3, 0.3)))
                image = lo + (hi - lo) * ((image - lo) / max(hi - lo, 1e-8)) ** gamma
            p, meta = proc.preprocess(np.ascontiguousarray(image))
            pix.append(p[0])
            tgt.append(to_model_frame(np.ascontiguousarray(label), meta, proc.image_size, proc.mask_size))
        return to_device(torch.stack(pix), self.device), to_device(torch.stack(tgt), self.device)

    def loss(self, batch_idx: list[int]) -> torch.Tensor:
        """The step's loss on the (global) batch ``batch_idx``. Across ranks, each runs the model on its share
        of the rows and every rank returns the loss of the whole batch."""
        batch = [self.train_samples[i] for i in batch_idx]
        part = self.world.split(len(batch))
        if self.cache is not None:
            every, target = self.embeddings(batch), to_device(torch.stack([s.target for s in batch]), self.device)
            emb = part.take(every)
        else:
            pixels, target = self.augmented(batch_idx)
            emb = self.embeddings(part.take(batch), part.take(pixels))
        total = torch.zeros((), device=self.device)
        c = len(self.class_names)
        if self.scribbles:  # one process (checked at start): the whole batch is this rank's
            sc = self.cfg.scribble_loss
            ramp = 1.0 if sc.ramp_epochs == 0 else min(1.0, self.progress() / sc.ramp_epochs)
            image = None
            if sc.affinity_weight > 0:  # the slice's intensities, only for the affinity term
                pix = torch.stack([s.pixels for s in batch]) if self.cache is not None else pixels
                image = grid_image(pix, self.model.processor.mask_size).to(self.device)
            prompted = self.cfg.prompts.prompted_weight if self.cfg.prompts.prompted else 0.0
            return scribble_loss(self.model, emb, target, image, c, sc, self.rng, ramp,
                                 automatic=self.cfg.prompts.automatic, prompted_weight=prompted)
        if self.cfg.prompts.automatic:
            low = part.gather(self.model.decode_classes(emb, torch.arange(c, device=self.device)))
            total = total + automatic_loss(low.float(), target)
        if self.cfg.prompts.prompted:
            total = total + self.cfg.prompts.prompted_weight * self.prompted_loss(emb, target, part)
        if self.extensions:
            labeled = (LabeledBatch(target, embeddings=every) if self.cache is not None
                       else LabeledBatch(target, pixels=pixels))
            for ext in self.extensions:
                total = total + ext.loss(labeled)
        return total

    def prompted_loss(self, emb: torch.Tensor, target: torch.Tensor,
                      part: Split | None = None) -> torch.Tensor:
        """:func:`prompted_loss` with the run's model, prompt settings, generator and ranks."""
        return prompted_loss(self.model, emb, target, self.cfg.prompts, self.rng, self.world, part)

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, bar=None) -> float:
        tc = self.cfg.train
        set_train_mode(self.model, True)
        if self.encoder_frozen:
            self.model.image_encoder.eval()
        order = self.rng.permutation(len(self.train_samples)).tolist()
        losses = []
        self.opt.zero_grad(set_to_none=True)
        size = tc.batch_size * self.world.size  # the global batch: batch_size per rank
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        for bi, idx in enumerate(batches):
            self.step_in_epoch = bi
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.step(idx)
            if loss.requires_grad:  # a scribble batch with nothing to learn from gives a constant 0
                (loss / tc.grad_accum).backward()
            if (bi + 1) % tc.grad_accum == 0 or bi == len(batches) - 1:
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                for ext in self.extensions:
                    ext.after_step()
            losses.append(loss.detach())  # kept on the device: no host sync inside the step
            if bar is not None and _interactive(bar) and bi % 10 == 9 and bi < len(batches) - 1:
                # mid-epoch news only where the bar redraws in place (a terminal), not as extra log lines
                extra = {k: v for ext in self.extensions for k, v in ext.progress().items()}
                bar.set_postfix(loss=f"{float(torch.stack(losses).mean()):.4f}",
                                val=f"{self.best:.3f}" if self.best >= 0 else "-", **extra)
        self.epoch_stats = {k: v for ext in self.extensions for k, v in ext.end_epoch().items()}
        return float(torch.stack(losses).mean())

    @torch.inference_mode()
    def validate(self) -> dict:
        """Automatic-mode mean 3-D Dice per case (slices stacked per case), per class."""
        self.model.eval()
        c = len(self.class_names)
        stats: dict[str, np.ndarray] = {}
        for i in range(0, len(self.val_samples), 8):
            batch = self.val_samples[i : i + 8]
            if self.cache is not None:
                emb = self.cache.get(batch, self.device, torch.bfloat16 if self.amp else torch.float32)
            else:
                emb = self.model.encode(torch.stack([s.pixels for s in batch]).to(self.device))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                preds = automatic_labels(self.model, emb, batch, c)
            for s, pred in zip(batch, preds):
                st = stats.setdefault(s.case_id, np.zeros((c, 3)))
                for k in range(c):
                    p, t = pred == k + 1, s.label == k + 1
                    st[k] += ((p & t).sum(), p.sum(), t.sum())
        per_case = {
            cid: [1.0 if st[k, 1] + st[k, 2] == 0 else 2 * st[k, 0] / (st[k, 1] + st[k, 2]) for k in range(c)]
            for cid, st in stats.items()
        }
        per_class = np.mean(list(per_case.values()), axis=0) if per_case else np.zeros(c)
        out = {
            "dice": float(np.mean(per_class)) if per_case else float("nan"),
            "per_class": {n: float(v) for n, v in zip(self.class_names, per_class)},
            "per_case": per_case,
        }
        out["extensions"] = {k: v for ext in self.extensions for k, v in ext.validate(self.val_samples).items()}
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_state(self) -> None:
        path = self.run_dir / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
            "trainable": trainable_state(self.model), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "history": json.dumps(self.history),
            "torch_rng": torch.get_rng_state(), "np_rng": json.dumps(self.rng.bit_generator.state),
            "base": self.model.info.fingerprint,  # the base weights it trains on: a resume onto others is refused
        }
        if self.device.type == "cuda":  # feature dropout and any dropout in the model draw from it there
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.extensions:
            state["extensions"] = {ext.name: ext.state_dict() for ext in self.extensions}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> None:
        """Continue from the run folder's checkpoint."""
        self.apply_state(self.read_state())

    def read_state(self) -> dict:
        """The run folder's checkpoint, checked to be one (on the CPU)."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise MedAdaptError(f"nothing to resume: {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MedAdaptError(f"could not read {path}: {' '.join(str(exc).split())[:300]}") from None
        keys = ("epoch", "best", "best_epoch", "trainable", "optimizer", "scheduler", "history", "torch_rng", "np_rng")
        absent = [k for k in keys if not isinstance(state, dict) or k not in state]
        if absent:
            raise MedAdaptError(f"{path} is not a medadapt checkpoint (no {', '.join(absent)}); "
                                "start the run again without --resume, in a new run folder")
        return state

    def _realign_schedule(self) -> None:
        """The schedule counts optimiser steps; a run resumed with another batch size, gradient accumulation or
        number of ranks takes another number of steps per epoch, so it goes on from where this epoch starts on
        the new schedule (checkpoints are written at epoch ends), not from the old step count."""
        step = self.epoch * self.steps_per_epoch
        if self.sched.last_epoch == step:
            return
        self.sched.last_epoch = step
        for group, base, f in zip(self.opt.param_groups, self.sched.base_lrs, self.sched.lr_lambdas):
            group["lr"] = base * f(step)
        self.sched._last_lr = [group["lr"] for group in self.opt.param_groups]

    def apply_state(self, state: dict) -> None:
        """Weights, optimiser, schedule, history, generators and extension states from :meth:`read_state`'s
        checkpoint (with one rank or several: nothing in it is per rank)."""
        path = self.run_dir / "checkpoints" / "last.pt"
        base = state["base"] if "base" in state else self._recorded_base()
        if base is not None and base != self.model.info.fingerprint:
            raise MedAdaptError(
                f"{path} was trained on other {self.cfg.backbone} base weights (fingerprint {base}) than "
                f"{self.cfg.checkpoint or 'the built-in ones'} now holds ({self.model.info.fingerprint}): resume with "
                "the base checkpoint the run started from, or start a new run")
        params = dict(self.model.named_parameters())
        missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(state["trainable"]))
        if missing:
            raise MedAdaptError(f"{path} does not match this config (missing {missing[:3]}); was the config changed?")
        with torch.no_grad():
            for k, v in state["trainable"].items():
                params[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self._realign_schedule()
        self.history = json.loads(state["history"])
        saved = state.get("extensions")
        if saved is None:  # written before extensions had their own entry: the teacher stood at the top level
            saved = {"ssl": {"teacher": state["teacher"]} if "teacher" in state else {}}
        for ext in self.extensions:
            if ext.name not in saved:
                raise MedAdaptError(f"{path} has no {ext.name} state: it was written by a run without {ext.name}")
            ext.load_state_dict(saved[ext.name])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.rng.bit_generator.state = json.loads(state["np_rng"])

    def _recorded_base(self) -> str | None:
        """The base fingerprint in the run's adapter.json, for checkpoints written before they held their own."""
        try:
            return read_adapter_info(self.run_dir / "adapter").get("base_fingerprint")
        except (MedAdaptError, OSError):  # no adapter yet, or an unreadable one: nothing recorded to compare
            return None

    def check_ranks(self) -> None:
        """Across ranks: raise unless every rank holds the same weights, optimiser state, generator and
        extension states (the EMA teacher among them). One digest per tensor, compared once per epoch."""
        if self.world.size == 1:
            return
        state = {"np_rng": json.dumps(self.rng.bit_generator.state), **_flat("trainable", trainable_state(self.model)),
                 **_flat("optimizer", self.opt.state_dict()["state"])}
        for ext in self.extensions:
            state.update(_flat(ext.name, ext.state_dict()))
        self.world.check_same(state, "training state")

    def metadata(self) -> dict:
        return {
            "class_names": self.class_names, "label_values": self.label_values,
            "axis": self.data_cfg.axis, "best_epoch": self.best_epoch, "val_dice": self.best,
            # how its images were seen: inference applies the same (medadapt.inference.intensity)
            "intensity": {"window": self.data_cfg.window, "percentiles": self.data_cfg.percentiles},
        }


def _flat(prefix: str, state: Any) -> dict[str, Any]:
    """Nested dicts -> ``{"prefix.key.subkey": value}``."""
    if not isinstance(state, dict):
        return {prefix: state}
    return {k: v for key, sub in state.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}


def _interactive(bar) -> bool:
    """Whether the progress bar redraws in place (a terminal) rather than appending lines (a log file)."""
    fp = getattr(bar, "fp", None)
    return bool(fp is not None and hasattr(fp, "isatty") and fp.isatty())


def automatic_labels(model, emb: torch.Tensor, samples: Sequence, c: int) -> list[np.ndarray]:
    """Automatic-mode label maps (each sample's original frame) from a batch of embeddings: the ``c`` learned
    classes decoded together, one label per pixel. Validation and the validation overlay both decode this way."""
    low = model.decode_classes(emb, torch.arange(c, device=emb.device)).float()
    return [labels_from_logits(model.processor.postprocess_logits(lg, s.meta)).cpu().numpy()
            for s, lg in zip(samples, low)]


__all__ = ["Trainer", "automatic_labels", "lr_lambda", "seed_everything"]
