"""Training the specialist student on labelled slices, foundation pseudo-labels and its own consistency.

One step: a batch of labelled slices (Dice + cross-entropy on the ground
truth) and a batch of pseudo-labelled slices. The pseudo-labelled batch is
seen twice: a weak view (flips and quarter turns) that the student's EMA
teacher labels, and a strong view (the weak one with random gamma, contrast,
noise and blur, then CutMix inside the batch) that the student learns from,
against the foundation pseudo-label where its confidence passes the
threshold and against the EMA teacher's answer where that is sure enough
(FixMatch / UniMatch style). With ``agreement``, a foundation label counts
less where the EMA teacher's class differs from it (ramped in with the
consistency loss): the student's own answer, once it has learnt from the
labelled slices, vetoes the foundation's mistakes. With ``pseudo_decay`` the
foundation labels' weight falls linearly over the round, leaving the
student to its own consistency by the end. Labels, confidences and teacher
answers are mixed with the same boxes as the images.

The state (student, teacher, optimiser, schedule, random streams, log) is
written atomically every ``val_every`` steps, and a run resumes from it
exactly.
"""

from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.device import pick_device
from ..core.dihedral import dihedral
from ..core.errors import MedAdaptError
from ..core.files import atomic_write, atomic_write_text
from ..core.resample import resize_weights
from ..inference.optimize import bf16_is_fast
from ..student import Student, StudentConfig, build_network, context_stack, to_input, to_target
from .distill_config import DistillConfig
from .perturb import intensity, paste, random_boxes


@dataclass
class SliceBank:
    """Preprocessed slices held in memory: inputs N x C x S x S (float16), labels N x S x S (uint8),
    confidences N x S x S (uint8, 255 = certain)."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def slice_bank(volumes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]], config: StudentConfig) -> SliceBank:
    """Every non-constant slice of ``(images N x H x W, labels, confidence in [0, 1] or None)`` volumes."""
    xs, ys, ws = [], [], []
    size = config.size
    for images, labels, conf in volumes:
        for k in range(images.shape[0]):
            plane = images[k]
            if not np.isfinite(plane).all() or plane.max() == plane.min():
                continue
            xs.append(to_input(context_stack(images, k, config.context), size).half())
            ys.append(to_target(labels[k], size).to(torch.uint8))
            w = np.ones(labels[k].shape, np.float32) if conf is None else conf[k]
            ws.append((resize_weights(torch.from_numpy(np.ascontiguousarray(w, np.float32)), (size, size)) * 255)
                      .round().clamp(0, 255).to(torch.uint8))
    if not xs:
        return SliceBank(torch.zeros(0, config.in_channels, size, size, dtype=torch.float16),
                         torch.zeros(0, size, size, dtype=torch.uint8), torch.zeros(0, size, size, dtype=torch.uint8))
    return SliceBank(torch.stack(xs), torch.stack(ys), torch.stack(ws))


def dihedral_batch(tensors: Sequence[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """The same random flip and quarter turn per sample for every tensor (B x ... x S x S)."""
    b = tensors[0].shape[0]
    r = torch.randint(0, 8, (b,), generator=gen)
    out = [t.clone() for t in tensors]
    for i in range(b):
        for t in out:
            t[i] = dihedral(t[i], int(r[i]))
    return out


def affine_batch(tensors: Sequence[torch.Tensor], share: float, rotate: float, zoom: tuple[float, float],
                 gen: torch.Generator) -> list[torch.Tensor]:
    """A random rotation (up to ``rotate`` degrees either way) and zoom (a factor in ``zoom``) for a ``share``
    of the samples, the same per sample for every tensor (B x C x S x S images, bilinear; B x S x S label
    maps and confidences, nearest). What comes in from outside the slice is zero: background with no
    confidence, and the slice's own edge for images."""
    b = tensors[0].shape[0]
    r = torch.rand(b, 3, generator=gen)
    pick = r[:, 0] < share
    if share <= 0 or not bool(pick.any()):
        return list(tensors)
    angle = torch.deg2rad((r[:, 1] * 2 - 1) * rotate)
    factor = zoom[0] + (zoom[1] - zoom[0]) * r[:, 2]
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    theta[~pick] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = []
    for t in tensors:
        image = t.is_floating_point() and t.ndim == 4
        v = t.float() if image else t[:, None].float()
        grid = F.affine_grid(theta.to(v.device), list(v.shape), align_corners=False)
        w = F.grid_sample(v, grid, mode="bilinear" if image else "nearest",
                          padding_mode="border" if image else "zeros", align_corners=False)
        out.append(w.to(t.dtype) if image else w[:, 0].round().to(t.dtype))
    return out


def soft_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, counting pixels by ``weight`` (B x S x S)."""
    probs = logits.float().softmax(1)[:, 1:]
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    w = weight[:, None]
    inter = (probs * onehot * w).sum((0, 2, 3))
    total = ((probs + onehot) * w).sum((0, 2, 3))
    return 1 - ((2 * inter + 1e-5) / (total + 1e-5)).mean()


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where ``mask`` holds, averaged over every pixel (unsure pixels count as zero)."""
    return (F.cross_entropy(logits.float(), target.long(), reduction="none") * mask).mean()


class StudentTrainer:
    """The distillation loop of one run (see the module docstring)."""

    def __init__(self, config: DistillConfig, class_names: Sequence[str], label_values: Sequence[int],
                 labeled: SliceBank, pseudo: SliceBank, folder: Path, seed: int,
                 validate: Callable[[Student], float] | None = None, log: Callable[[str], None] = print,
                 device: str | torch.device | None = None) -> None:
        if len(labeled) == 0:
            raise MedAdaptError("distillation needs labelled slices: data.labeled has no usable slice")
        self.cfg, self.folder, self.log, self.validate = config, Path(folder), log, validate
        self.labeled, self.pseudo = labeled, pseudo
        self.names, self.values = list(class_names), list(label_values)
        torch.manual_seed(seed)
        self.device = pick_device(device)
        self.amp = config.amp == "bf16" or (config.amp == "auto" and bf16_is_fast(self.device))
        self.net = build_network(config.student, len(self.names)).to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: max(0.0, 1 - s / config.iterations) ** 0.9)
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.history, self.seconds = 0, [], 0.0
        from monai.losses import DiceCELoss

        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def start_from(self, network: torch.nn.Module) -> None:
        """Start the student and its EMA teacher from ``network``'s weights (a previous round's student);
        the optimiser and schedule start afresh."""
        state = network.state_dict()
        self.net.load_state_dict(state)
        self.ema.load_state_dict(state)

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.folder / "state.pt"

    def save_state(self) -> None:
        state = {"step": self.step, "seconds": self.seconds, "net": self.net.state_dict(),
                 "ema": self.ema.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "history": self.history}
        if self.device.type == "cuda":  # dropout draws from the device's own stream
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.state_path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))

    def load_state(self) -> None:
        try:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise MedAdaptError(f"cannot resume from {self.state_path}: {str(exc).splitlines()[0]}") from exc
        try:
            self.net.load_state_dict(state["net"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.gen.set_state(state["gen"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
            self.step, self.seconds, self.history = state["step"], state["seconds"], list(state["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise MedAdaptError(f"{self.state_path} does not fit this student ({str(exc).splitlines()[0]}); "
                                f"delete it to train the round again") from exc

    # ------------------------------------------------------------------ one step
    def _ema_update(self) -> None:
        d = min(self.cfg.ema_decay, (self.step + 1) / (self.step + 10))
        with torch.no_grad():
            for e, s in zip(self.ema.parameters(), self.net.parameters()):
                e.mul_(d).add_(s.detach(), alpha=1 - d)
            for e, s in zip(self.ema.buffers(), self.net.buffers()):
                e.copy_(s)

    def _autocast(self):
        """bfloat16 autocast for the forward passes when ``amp`` asks for it (losses are taken in float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _geometric(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The weak view's geometry: a flip and quarter turn, then (``affine``) a small rotation and zoom."""
        cfg = self.cfg
        views = dihedral_batch(tensors, self.gen)
        return affine_batch(views, cfg.affine, cfg.rotate, cfg.zoom, self.gen) if cfg.affine > 0 else views

    def train_step(self) -> dict[str, float]:
        cfg, gen = self.cfg, self.gen
        self.net.train()
        il = torch.randint(0, len(self.labeled), (cfg.batch_size,), generator=gen)
        xl, yl = (t.to(self.device) for t in self._geometric([self.labeled.x[il].float(), self.labeled.y[il]]))
        xl = intensity(xl, cfg.intensity, gen)
        parts = {}
        ramp = min(1.0, (self.step + 1) / max(1.0, cfg.rampup * cfg.iterations))
        use_u = cfg.unlabeled_batch_size > 0 and len(self.pseudo) > 0
        if use_u:
            iu = torch.randint(0, len(self.pseudo), (cfg.unlabeled_batch_size,), generator=gen)
            xw, yu, wu = (t.to(self.device) for t in
                          self._geometric([self.pseudo.x[iu].float(), self.pseudo.y[iu], self.pseudo.w[iu]]))
            self.ema.eval()
            with torch.no_grad(), self._autocast():
                pt = self.ema(xw).float().softmax(1)
            conf_t, yt = pt.max(1)
            xs = intensity(xw, cfg.intensity, gen)
            mu = (wu.float() / 255 >= cfg.threshold).float()
            mt = (conf_t >= cfg.consistency_threshold).float()
            if cfg.agreement > 0:  # where the EMA teacher's class differs, the foundation label counts less
                mu = mu * (1 - cfg.agreement * ramp * (yt != yu).float())
            if float(torch.rand((), generator=gen)) < cfg.cutmix:
                boxes = random_boxes(xs.shape[0], cfg.mix_area, gen, xs.device)
                perm = torch.roll(torch.arange(xs.shape[0], device=xs.device), 1)
                xs, yu, mu = paste(xs, xs[perm], boxes), paste(yu, yu[perm], boxes), paste(mu, mu[perm], boxes)
                yt, mt = paste(yt, yt[perm], boxes), paste(mt, mt[perm], boxes)
            with self._autocast():
                logits = self.net(torch.cat([xl, xs]))
            ll, ls = logits[: xl.shape[0]], logits[xl.shape[0]:]
        else:
            with self._autocast():
                ll = self.net(xl)
        loss = self.dice_ce(ll.float(), yl[:, None].long())
        parts["labeled"] = float(loss.detach())
        if use_u:
            lp = masked_ce(ls, yu, mu) + soft_dice(ls, yu, mu)
            lc = masked_ce(ls, yt, mt)
            wp = cfg.pseudo_weight * (1 - cfg.pseudo_decay * self.step / cfg.iterations)
            loss = loss + wp * lp + ramp * cfg.consistency_weight * lc
            parts.update(pseudo=float(lp.detach()), consistency=float(lc.detach()), pseudo_share=float(mu.mean()),
                         teacher_share=float(mt.mean()), pseudo_weight=wp)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self._ema_update()
        self.step += 1
        parts["loss"] = float(loss.detach())
        return parts

    # ------------------------------------------------------------------ loop
    def student(self, which: str = "ema") -> Student:
        net = self.ema if which == "ema" else self.net
        return Student(self.cfg.student, self.names, self.values, network=copy.deepcopy(net).eval())  # on self.device

    def run(self) -> Student:
        cfg = self.cfg
        sums: dict[str, float] = {}
        n = 0
        t0 = time.perf_counter()
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=self.step, desc="distilling", unit="step")
        while self.step < cfg.iterations:
            parts = self.train_step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.update()
            if self.step % cfg.val_every == 0 or self.step == cfg.iterations:
                row = {"step": self.step, **{k: round(v / n, 5) for k, v in sums.items()}}
                if self.validate is not None:
                    row["val_dice_ema"] = round(self.validate(self.student("ema")), 5)
                    row["val_dice_student"] = round(self.validate(self.student("student")), 5)
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                row["seconds"] = round(self.seconds, 1)
                self.history.append(row)
                bar.set_postfix({k: row[k] for k in ("loss", "val_dice_ema") if k in row})
                self.save_state()
                self.write_log()
                sums, n = {}, 0
        bar.close()
        self.write_log()  # from the saved history: a run killed between its state and its log gets its last row
        return self.student("ema")

    def write_log(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.folder / "log.csv", buf.getvalue())


__all__ = ["SliceBank", "StudentTrainer", "affine_batch", "dihedral_batch", "masked_ce", "slice_bank", "soft_dice"]
