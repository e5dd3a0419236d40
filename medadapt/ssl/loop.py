"""One semi-supervised step: teacher on the weak view, student on strong views of unlabelled slices.

:class:`SemiSupervised` is a :class:`medadapt.training.TrainingExtension`:
built from the run's :class:`~medadapt.training.TrainingContext`, it reads its
unlabelled cases, and the trainer adds :meth:`SemiSupervised.loss` to its
supervised loss and calls :meth:`SemiSupervised.after_step` after each
optimiser step. It works both
when embeddings are cached (frozen encoder: the strong views are mixes and
channel dropout of embeddings, so no encoder pass is needed - the CPU path)
and when the encoder runs (adapters in the encoder: intensity perturbation and
CutMix/copy-paste of pixels, then the encoder - the GPU path).

Across several ranks (:mod:`medadapt.training.distributed`) every rank draws
the same global unlabelled batch and every random number of the step; the
teacher and the student each run on the rank's share of the rows, and the
pseudo-labels and logits are gathered, so the views, mixes and losses are the
ones one process would compute on the whole batch.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..data import CaseStream, SliceDataset
from ..data.stream import Elsewhere
from ..training.distributed import Split
from ..training.extension import LabeledBatch, TrainingContext
from ..training.losses import automatic_loss
from ..training.samples import to_device
from .config import SSLConfig
from .geometry import NUM_VIEWS, dihedral_each, view_sample
from .perturb import feature_dropout, intensity, paste, random_boxes
from .pseudo import confident_labels, drop_small_classes, refine_with_prompts
from .teacher import EMATeacher


def rampup(progress_epochs: float, length: float) -> float:
    """The usual sigmoid ramp-up exp(-5 (1 - t)^2) over ``length`` epochs (1 after it)."""
    if length <= 0:
        return 1.0
    t = min(max(progress_epochs / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))



def _encode_in_eval(model, rows: torch.Tensor) -> torch.Tensor:
    """The weak view's embeddings for the teacher's labels: with ``ssl.teacher: student`` the model is the one
    training, so dropout (LoRA's) is switched off while it encodes and each module's mode is put back after."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model.encode(rows)
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training

class SemiSupervised:
    """State of the semi-supervised part of a run: unlabelled samples, teacher, statistics."""

    name = "ssl"
    log_columns = {"pass_rate": ".4f", "pseudo_dice": ".5f"}

    def __init__(self, context: TrainingContext, config: SSLConfig) -> None:
        """Read the run's ``unlabeled`` cases (in memory, or streamed a few cases at a time) and set up the teacher."""
        self.ctx, self.cfg = context, config
        self.num_classes = len(context.class_names)
        self.samples = self._unlabeled(context, config)
        self.teacher = EMATeacher(context.model, config.ema_decay) if config.teacher == "ema" else None
        # the pretrained decoder, frozen before training moves it, answers the refinement boxes
        self.refiner = None
        if config.refine != "none" and config.refine_decoder == "pretrained":
            self.refiner = copy.deepcopy(context.model.mask_decoder).requires_grad_(False).eval()
        # on the step's device, so random boxes and noise need no copy from the host
        self.gen = torch.Generator(device=context.device).manual_seed(context.seed + 104729)
        self.order: list[int] = []
        self.passed = torch.zeros((), device=context.device)  # passed pixels this epoch, kept on the device
        self.pixels = 0  # all pixels this epoch: known from shapes, so no tensor is made for it

    # ------------------------------------------------------------------ data
    @staticmethod
    def _unlabeled(ctx: TrainingContext, cfg: SSLConfig):
        """Prepared unlabelled samples in memory, or a :class:`medadapt.data.CaseStream` of them."""
        # labels of unlabelled cases are never read, even where the files exist (ACDC's train split)
        cases = [replace(c, label_path=None) for c in ctx.splits.get("unlabeled") or []]
        if not cases:
            raise MedAdaptError("ssl: data.unlabeled selects no case; check the ids or split name")
        if cfg.stream:  # read a few cases at a time
            ctx.log(f"semi-supervised: {len(cases)} unlabelled cases, streamed {cfg.stream_cases} at a time, "
                    f"teacher {cfg.teacher}")
            return CaseStream(cases, ctx.data_config, np.random.default_rng(ctx.seed + 15485863), cfg.stream_cases,
                              prepare=ctx.prepare, rank=ctx.world.rank, ranks=ctx.world.size,
                              share=ctx.world.all_gather_object)
        ds = SliceDataset(cases, ctx.data_config, keep="all")
        for path, reason in ds.skipped:
            ctx.log(f"skipped {path}: {reason}")
        ctx.log(f"semi-supervised: {len(ds)} unlabelled slices, teacher {cfg.teacher}")
        return ctx.prepare([ds[i] for i in range(len(ds))])

    def next_batch(self) -> list:
        """The step's unlabelled batch: ``unlabeled_batch_size`` per rank, the same list on every rank."""
        n = self.cfg.unlabeled_batch_size * self.ctx.world.size
        if hasattr(self.samples, "take"):  # streamed: the stream shuffles and reads cases as needed
            return self.samples.take(n)
        while len(self.order) < n:  # fewer slices than a batch: the batch repeats them, it is never short
            self.order += self.ctx.rng.permutation(len(self.samples)).tolist()
        idx, self.order = self.order[:n], self.order[n:]
        return [self.samples[i] for i in idx]

    def teacher_model(self):
        return self.teacher.model if self.teacher is not None else self.ctx.model

    # ------------------------------------------------------------------ pseudo-labels
    @torch.no_grad()
    def pseudo_labels(
        self, embeddings: torch.Tensor, model=None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher's labels on the weak view and the mask of pixels that count (``reduce``: see
        :func:`~medadapt.ssl.pseudo.confident_labels`)."""
        model = model or self.teacher_model()
        modes = [m.training for m in model.modules()]  # per module: the trainer keeps BatchNorm and a frozen
        model.eval()                                    # encoder in eval while the rest trains
        ids = torch.arange(self.num_classes, device=embeddings.device)
        logits = model.decode_classes(embeddings, ids).float()
        labels, passed = confident_labels(logits, self.cfg.threshold, self.cfg.adaptive_threshold, reduce)
        passed = drop_small_classes(labels, passed, self.num_classes, self.cfg.min_component)
        if self.cfg.refine != "none":
            labels, passed = refine_with_prompts(model, embeddings, labels, passed, self.num_classes,
                                                 self.cfg.refine, self.cfg.refine_iou, self.refiner,
                                                 margin=self.cfg.refine_margin,
                                                 largest=self.cfg.refine_box == "largest",
                                                 iterations=self.cfg.refine_iterations)
        for module, training in zip(model.modules(), modes):
            module.training = training
        return labels, passed

    # ------------------------------------------------------------------ the loss
    def loss(self, labeled: LabeledBatch) -> torch.Tensor:
        """Weighted unsupervised loss for one unlabelled batch (ramped up with the epoch)."""
        ctx, cfg = self.ctx, self.cfg
        labeled_emb, labeled_target, labeled_pixels = labeled.embeddings, labeled.target, labeled.pixels
        progress = ctx.progress()
        if progress < cfg.start_epoch:  # supervised warm-up: a teacher that finds nothing teaches nothing
            return torch.zeros((), device=ctx.device)
        w = rampup(progress - cfg.start_epoch, cfg.rampup_epochs)
        batch = self.next_batch()
        part = ctx.world.split(len(batch))  # this rank's rows for the teacher and the feature stream
        ids = torch.arange(self.num_classes, device=ctx.device)
        if ctx.cache is not None:
            weak = self._inputs(batch, lambda items, at: ctx.embeddings(items))
            labels, passed = self._teacher_labels(part, weak)
            ks = self.draw_views(batch)
            # a turned view's embedding is the encoder's answer to the turned image (cached), not a turned embedding
            strong = self._inputs(batch, lambda items, at: ctx.embeddings(
                [view_sample(s, ks[i]) for s, i in zip(items, at)])) if any(ks) else weak
            lab_v, pass_v = dihedral_each(labels, ks), dihedral_each(passed, ks)
            strong, lab_s, pass_s = self._mix(strong, lab_v, pass_v, labeled_emb, labeled_target)
            mixed = ctx.world.split(strong.shape[0])
            strong = mixed.take(strong)
            feat_in = weak if ctx.world.size == 1 else None
        else:  # the encoder runs: perturb pixels, then encode (GPU path)
            pixels = self._inputs(batch, lambda items, at: to_device(torch.stack([s.pixels for s in items]),
                                                                     ctx.device))
            with torch.no_grad():
                labels, passed = self._teacher_labels(part, pixels, self.teacher_model())
            ks = self.draw_views(batch)
            strong_px = dihedral_each(intensity(pixels, cfg.intensity, self.gen), ks)
            lab_v, pass_v = dihedral_each(labels, ks), dihedral_each(passed, ks)
            strong_px, lab_s, pass_s = self._mix(strong_px, lab_v, pass_v, labeled_pixels, labeled_target)
            mixed = ctx.world.split(strong_px.shape[0])
            strong = ctx.model.encode(mixed.take(strong_px))
            feat_in = ctx.model.encode(part.take(pixels))
        weight_s = pass_s.float()
        student = mixed.gather(ctx.model.decode_classes(strong, ids)).float()  # the whole mixed batch's logits
        total = cfg.weight * automatic_loss(student, lab_s, weight_s)
        if cfg.feature_weight > 0:
            dropped = self._dropped(part, weak) if feat_in is None else self._dropped(part, feat_in, local=True)
            fp = part.gather(ctx.model.decode_classes(dropped, ids)).float()
            total = total + cfg.feature_weight * automatic_loss(fp, labels, passed.float())
        self.passed += passed.sum()
        self.pixels += passed.numel()
        return w * total

    def _inputs(self, batch: list, make: Callable[[list, Sequence[int]], torch.Tensor]) -> torch.Tensor:
        """Rows for every item of the global batch, ``make(items, positions)`` giving those of some items: made
        here when every rank holds every item (one rank, or in memory), else each rank makes the rows of the
        streamed slices it read and they are gathered (on every rank, whoever read this batch's slices)."""
        if self.ctx.world.size == 1 or not isinstance(self.samples, CaseStream):
            return make(batch, range(len(batch)))
        held = [i for i, s in enumerate(batch) if not isinstance(s, Elsewhere)]
        owners = [s.owner if isinstance(s, Elsewhere) else self.ctx.world.rank for s in batch]
        local = make([batch[i] for i in held], held) if held else None
        return self.ctx.world.assemble(local, owners, self.ctx.device)

    def _teacher_labels(self, part: Split, inputs: torch.Tensor, encoder=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pseudo-labels of the whole batch: each rank's teacher labels its rows of the weak embeddings
        (of the weak pixels, encoded by ``encoder``, when the encoder runs), and the rows are gathered."""
        rows = part.take(inputs)
        world = self.ctx.world
        labels, passed = self.pseudo_labels(rows if encoder is None else _encode_in_eval(encoder, rows), encoder,
                                            reduce=world.all_reduce_sum if world.size > 1 else None)
        return part.gather(labels), part.gather(passed)

    def _dropped(self, part: Split, x: torch.Tensor, local: bool = False) -> torch.Tensor:
        """Feature dropout on this rank's rows of the weak embeddings (``x``: the whole batch's, or with ``local``
        this rank's rows alone), with the channel mask one process draws for the whole batch."""
        p = self.cfg.feature_dropout
        if self.ctx.world.size == 1:
            return feature_dropout(x, p)
        if not local:
            return part.take(feature_dropout(x, p))
        if p <= 0:
            return x
        # F.dropout2d draws one keep-or-drop per item and channel, scaled: drawn for the whole batch, then sliced
        mask = F.dropout2d(torch.ones((part.n, x.shape[1], 1, 1), dtype=x.dtype, device=x.device), p, training=True)
        return x * part.take(mask)

    def allowed_views(self, sample) -> list[int]:
        """The turned / flipped views a sample's strong view may take: all 7 when the encoder runs; with
        cached embeddings ``geometric_views`` of them, fixed per sample by its content key (so they are
        encoded once, and a streamed sample gets the same ones on every pass)."""
        if self.ctx.cache is None:
            return list(range(1, NUM_VIEWS))
        rng = np.random.default_rng([int(sample.key[:12], 16), self.ctx.seed])
        return sorted(rng.choice(np.arange(1, NUM_VIEWS), self.cfg.geometric_views, replace=False).tolist())

    def draw_views(self, batch: list) -> list[int]:
        """One view per item: with probability ``geometric`` one of its allowed views, else 0 (unturned)."""
        if self.cfg.geometric <= 0:  # draws nothing, so runs without geometric views keep their random stream
            return [0] * len(batch)
        turn = self.ctx.rng.random(len(batch)) < self.cfg.geometric
        out = []
        for s, t in zip(batch, turn):
            allowed = self.allowed_views(s)
            out.append(allowed[int(self.ctx.rng.integers(len(allowed)))] if t else 0)
        return out

    def cached_views(self) -> list:
        """The turned copies of the unlabelled samples in memory, for the trainer to encode up front."""
        if self.ctx.cache is None or self.cfg.geometric <= 0 or hasattr(self.samples, "take"):
            return []
        return [view_sample(s, k) for s in self.samples for k in self.allowed_views(s)]

    def samples_to_encode(self) -> list:
        """The unlabelled samples in memory and their turned copies (nothing when streamed: read as needed)."""
        if hasattr(self.samples, "take"):
            return []
        return list(self.samples) + self.cached_views()

    def _mix(self, x, labels, passed, labeled_x, labeled_target):
        """CutMix among unlabelled items and bidirectional copy-paste with labelled ones. The boxes are snapped to
        the coarser of x's grid and the labels' (64-cell embeddings, 256-cell labels), so both mix one region."""
        cfg, b = self.cfg, x.shape[0]
        cells = min(x.shape[-1], labels.shape[-1])
        if cfg.cutmix > 0 and b > 1 and self.ctx.rng.random() < cfg.cutmix:
            perm = torch.roll(torch.arange(b, device=x.device), 1)
            boxes = random_boxes(b, cfg.mix_area, self.gen, x.device, cells)
            x = paste(x, x[perm], boxes)
            labels, passed = paste(labels, labels[perm], boxes), paste(passed, passed[perm], boxes)
        if cfg.copy_paste > 0 and labeled_x is not None and self.ctx.rng.random() < cfg.copy_paste:
            k = min(b, labeled_x.shape[0])
            lx, lt = labeled_x[:k].to(x.dtype), labeled_target[:k]
            ones = torch.ones_like(passed[:k])
            boxes = random_boxes(k, cfg.mix_area, self.gen, x.device, cells)
            inward = paste(x[:k], lx, boxes)  # labelled foreground into unlabelled background
            outward = paste(lx, x[:k], boxes)  # and the other way round (BCP)
            x = torch.cat([inward, outward, x[k:]])
            labels = torch.cat([paste(labels[:k], lt, boxes), paste(lt, labels[:k], boxes), labels[k:]])
            passed = torch.cat([paste(passed[:k], ones, boxes), paste(ones, passed[:k], boxes), passed[k:]])
        return x, labels, passed

    # ------------------------------------------------------------------ bookkeeping
    def after_step(self) -> None:
        if self.teacher is not None:
            # during the warm-up the teacher is the student (or, with warmup_ema_decay, an average of its
            # recent steps, which a noisy last warm-up epoch does not set alone), so the loop starts warmed up
            warm = self.ctx.progress() < self.cfg.start_epoch
            self.teacher.update(self.cfg.warmup_ema_decay if warm else None)

    def pass_rate(self, reset: bool = False) -> float:
        """Share of unlabelled pixels that passed the threshold so far this epoch (syncs once)."""
        passed, total = float(self.passed), self.pixels
        if reset:
            self.passed.zero_()
            self.pixels = 0
        return passed / total if total else float("nan")

    def progress(self) -> dict[str, str]:
        return {"pass_rate": f"{self.pass_rate():.2f}"}

    def end_epoch(self) -> dict[str, float]:
        return {"pass_rate": self.pass_rate(reset=True)}

    def validate(self, samples: list) -> dict[str, float]:
        """How good the pseudo-labels would be, measured where labels exist."""
        return {"pseudo_dice": self.pseudo_label_dice(samples)}

    def state_dict(self) -> dict:
        """The teacher, the loop's random generator and its place in the unlabelled order, or the stream's
        (its generator, case order and waiting slices): a resumed run draws the same batches, CutMix boxes
        and noise as one never stopped."""
        state = {"generator": self.gen.get_state(), "order": torch.tensor(self.order, dtype=torch.long)}
        if isinstance(self.samples, CaseStream):
            state["stream"] = json.dumps(self.samples.state_dict())
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.gen.set_state(state["generator"].cpu())
            self.order = [int(i) for i in state["order"].tolist()]
        if "stream" in state and isinstance(self.samples, CaseStream):  # a checkpoint without it: the stream restarts
            self.samples.load_state_dict(json.loads(state["stream"]))
        if self.teacher is not None:
            if "teacher" not in state:
                raise MedAdaptError("the checkpoint has no teacher state: it was not written with ssl.teacher: ema")
            self.teacher.load_state_dict(state["teacher"])

    @torch.no_grad()
    def pseudo_label_dice(self, samples: list) -> float:
        """Mean per-class Dice of the teacher's counted pseudo-labels against labelled slices."""
        ctx = self.ctx
        inter = np.zeros(self.num_classes)
        sums = np.zeros(self.num_classes)
        for i in range(0, len(samples), 8):
            batch = samples[i : i + 8]
            emb = ctx.embeddings(batch) if ctx.cache is not None else self.teacher_model().encode(
                to_device(torch.stack([s.pixels for s in batch]), ctx.device))
            labels, passed = self.pseudo_labels(emb)
            pred = torch.where(passed, labels, torch.zeros_like(labels))
            tgt = torch.stack([s.target for s in batch]).to(ctx.device)
            for k in range(self.num_classes):
                p, t = pred == k + 1, tgt == k + 1
                inter[k] += float((p & t).sum())
                sums[k] += float(p.sum() + t.sum())
        present = sums > 0
        return float(np.mean(2 * inter[present] / sums[present])) if present.any() else float("nan")


__all__ = ["SemiSupervised", "rampup"]
