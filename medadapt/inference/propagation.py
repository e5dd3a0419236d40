"""One object through a volume: prompts on a few slices, answers on all of them.

Each prompted slice is decoded from its prompts. From there the mask travels
slice by slice in both directions; each next slice is prompted from its
neighbour's answer: a box around it (with a margin) and, if asked for, its
low-resolution logits as a dense mask prompt and a positive point at its most
interior pixel. The defaults (a box alone; stop when the predicted IoU falls
0.15 below the walk's best, or below 0.5) scored best on the BraTS FLAIR edema
volume and 8 ACDC validation frames (``benchmarks/volume_propagation.py
--grid``): LiteMedSAM was trained with boxes, and mask and point prompts made
its walks worse there. A box around the answer's less sure rim as well
(``box_threshold``) scored best on 4 left-atrium volumes but not on the held-out
ones, so it is off by default. A walk
stops where the structure ends: when the decoder's predicted IoU falls below
``min_score`` or more than ``max_drop`` below the best of the walk, the mask vanishes, or its area collapses below
``min_area_ratio`` of the previous slice's; and it stops before the next
prompted slice. Between two prompted slices that both hold the object the
object cannot end, so the walks go on to each other without the stopping rules
(``through``), and a slice reached from both sides keeps each pixel's larger
logit (``fusion="max"``): a walk that shrank or stopped early does not erase
what the other walk sees. Averaging the two walks (``"mean"``, weighted towards
the nearer prompt) made three boxes worse than one on the left atrium.

With an adapted model (one with learned classes), the class whose automatic
proposal on the prompted slice overlaps its answer best (IoU at least
``GUIDE_IOU``) guides the walk: each next box surrounds that class's proposal
on the next slice, the parts of it that touch the previous answer, so the
model's own view of each slice, not the last box, decides how far the object
reaches there (``proposals``; the previous answer's box where no part touches).

An adapted model also walks with the base model's decoder (``base``), when
its adapter left the image encoder as it was: both walks start from the same
prompts and read the same embeddings, and each slice's answer averages their
probabilities (a slice one walk did not reach counts as background there). On
the left atrium, decoders adapted on two volumes overrun the structure
(precision 0.50-0.80) while the base decoder's walks shrink (recall
0.43-0.82); the average was chosen over either alone on the validation
volumes. The base walk may pass one slice that fails the stopping rules
(``base_patience``): its shrinking answers fail them before the adapted
walk's do, and the average ends where the shorter walk ends. A pixel
belongs to the object where the mean probability is above 0.45
(``base_threshold``), so that a pixel one decoder is sure of (0.9) is kept
where the other is sure against it. Both were chosen on the two validation
and two training volumes of the left-atrium recipe.

A correction on any slice (more points, a new box or mask) re-decodes that
slice and walks again from it only. The walks that reached it from its
prompted neighbours keep the slices nearer to those neighbours than to it, and
the walk from the correction answers the rest, so that a correction which
removes a leak is not undone by the other walk; every other slice keeps its
answer. Where a correction says the object is absent (an empty answer), a
neighbour's walk that went through to that slice walks again with the rules.
Clicks on a slice that a walk answered keep a box around that answer, as a box
stays under later clicks in 2-D; clicks given with the first prompts on a
slice without a box are applied the same way, after the walks. A blank
(constant) slice has no answer; walks pass it without counting it against
``patience``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage

from ..core.config import check_fields, check_ranges
from ..core.errors import MedAdaptError
from ..prompts.regions import largest_component, mask_box
from ..prompts.simulate import most_interior
from ..prompts.types import Prompts
from .volume import VolumeSession

FUSIONS = ("max", "mean", "nearest")  # PropagationConfig.fusion
GUIDE_IOU = 0.3  # the least overlap of a class proposal with the prompted answer for the class to guide the walk


@dataclass
class PropagationConfig:
    """How a mask travels from slice to slice (see the module docstring).

    Attributes:
        min_score: stop when the decoder's predicted IoU falls below this.
        min_area_ratio: stop when the mask shrinks below this fraction of the previous slice's.
        max_drop: stop when the predicted IoU falls more than this below the best of the walk so far (its
            prompted slice included); 1 never stops on it.
        margin: the box around the previous answer grows by this fraction of its size on each side.
        box_threshold: the box surrounds the previous answer's pixels whose probability is at least this
            (the parts connected to its mask): 0.5 is the mask itself; lower reaches into the rim the model
            was unsure of, so that a structure that widens from slice to slice is not cut by the last box.
        mask_prompt: pass the previous answer's logits as a dense mask prompt.
        point: add a positive point at the previous answer's most interior pixel.
        overlap: ask the decoder for its three candidate masks and keep the one that overlaps the previous
            answer most (consistency along the walk) instead of the one with the highest predicted IoU.
            For models trained with several candidates (SAM, MedSAM): LiteMedSAM's extra candidates predict an
            IoU of about 0.25 on the left-atrium MR volumes, below ``min_score``, so its walks there stop at once.
        proposals: with an adapted model, let the learned class that matches the prompted object guide each
            next box (see the module docstring); no effect on a model without learned classes.
        base: with an adapted model whose segmenter holds the base model's decoder
            (:attr:`~medadapt.inference.Segmenter.base_decoder`), walk with that decoder too and average the
            two walks' probabilities on each slice (see the module docstring); no effect otherwise.
        patience: slices a walk may pass that fail the stopping rules (each still prompted from the last
            slice that passed); it stops when one more fails in a row. A failed slice keeps its answer
            when a later one passes.
        base_patience: ``patience`` of the base decoder's walk (``base``): its answers shrink inside the
            structure and fail the rules before the adapted walk's, and the average ends where it ends.
        base_threshold: with a base walk, a pixel of a slice that both walks reached belongs to the object
            where the mean of their two probabilities is above this. At 0.5 a pixel that one decoder is sure
            of and the other sure against is left out (their mean falls just below 0.5); at 0.45 it is kept
            where the sure decoder's probability is at least 0.9. A slice only one walk reached stays background.
        through: a walk from a prompted slice towards another prompted slice that holds the object goes on to it
            without the stopping rules: the object is there at both ends, so a dip in the predicted IoU or the
            area between them is not where it ends. Walks beyond the outermost prompts, or towards a prompted
            slice whose answer is empty, keep the rules.
        fusion: how a slice between two prompted slices, reached by both walks, combines their answers:
            ``"max"`` keeps each pixel's larger logit (the object wherever either walk sees it, so a walk that
            shrank or stopped early does not erase the other's answer); ``"mean"`` averages the logits with
            weights that favour the nearer prompt; ``"nearest"`` takes the nearer prompt's walk.
    """

    min_score: float = 0.5
    min_area_ratio: float = 0.2
    max_drop: float = 0.15
    margin: float = 0.05
    box_threshold: float = 0.5
    mask_prompt: bool = False
    point: bool = False
    overlap: bool = False
    proposals: bool = True
    base: bool = True
    patience: int = 0
    base_patience: int = 1
    base_threshold: float = 0.45
    through: bool = True
    fusion: str = "max"

    def __post_init__(self) -> None:
        check_fields(self, "propagation")
        for name in ("patience", "base_patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MedAdaptError(f"propagation.{name} must be a whole number >= 0; got {v!r}")
        unit = (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
        check_ranges(self, "propagation", {"min_score": unit, "min_area_ratio": unit, "max_drop": unit, "margin": unit,
                                           "box_threshold": (lambda v: 0.0 < v <= 0.5, "a probability in (0, 0.5]"),
                                           "base_threshold": (lambda v: 0.0 < v < 1.0, "a probability in (0, 1)"),
                                           "fusion": (lambda v: v in FUSIONS, f"one of {', '.join(FUSIONS)}")})


class SliceAnswer:
    """One slice's answer: low-resolution logits (1 x m x m), predicted IoU and the mask (display frame).

    Kept compact, since a volume holds one per slice: the logits in float16 and the mask as packed bits
    (a 512 x 512 slice's answer takes 160 KiB instead of 512 KiB); ``low`` and ``mask`` unpack on access.
    """

    __slots__ = ("_low", "score", "_bits", "_shape")

    def __init__(self, low: torch.Tensor, score: float, mask: np.ndarray) -> None:
        self._low = low.detach().to(torch.float16)
        self.score = score
        self._shape = tuple(mask.shape)
        self._bits = np.packbits(np.asarray(mask, bool), axis=None)

    @property
    def low(self) -> torch.Tensor:
        return self._low.float()

    @property
    def mask(self) -> np.ndarray:
        n = int(np.prod(self._shape))
        return np.unpackbits(self._bits, count=n).reshape(self._shape).astype(bool)


@dataclass
class SlicePrompts:
    """What the user gave on one slice (display frame)."""

    box: np.ndarray | None = None
    points: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    mask: np.ndarray | None = None
    dense: torch.Tensor | None = None  # the slice's previous answer, refined by later clicks


def touching(candidate: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The connected parts of ``candidate`` that overlap ``mask`` (empty where none does)."""
    parts, _ = ndimage.label(candidate)
    keep = np.unique(parts[mask])
    return np.isin(parts, keep[keep > 0])


def mean_probability(lows: list[torch.Tensor], count: int) -> torch.Tensor:
    """The logits of the mean probability of ``count`` answers, of which ``lows`` (logits) are given: the
    answers not given count as probability 0."""
    prob = sum(torch.sigmoid(low) for low in lows) / count
    return torch.logit(prob.clamp(1e-6, 1 - 1e-6))


def probability_mask(session: VolumeSession, low: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """The mask (display frame) of the pixels whose probability under the low-resolution logits ``low`` is
    above ``threshold``."""
    logits = session.seg.backbone.processor.postprocess_logits(low, session.meta)[0]
    return (logits > float(np.log(threshold / (1 - threshold)))).numpy()


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel farthest from the edge of the mask's largest component."""
    return most_interior(largest_component(mask))


class Propagation:
    """The prompts and answers of one object in one :class:`VolumeSession`."""

    def __init__(self, session: VolumeSession, config: PropagationConfig | None = None,
                 decoder: torch.nn.Module | None = None) -> None:
        """``decoder``: another mask decoder of the model's architecture answers instead of the model's own
        (the base walk of ``base``)."""
        self.session = session
        self.config = config or PropagationConfig()
        self.decoder = decoder
        base = session.seg.base_decoder
        # the base model's walk: same prompts, the base decoder, no learned classes to guide it
        self.partner = Propagation(session, replace(self.config, proposals=False, base=False,
                                                    patience=self.config.base_patience), decoder=base) \
            if self.config.base and decoder is None and base is not None else None
        self.prompts: dict[int, SlicePrompts] = {}
        self.answers: dict[int, SliceAnswer] = {}  # the prompted slices
        # (start, +1/-1) -> answers at start +- 1, 2, ... (None: a blank slice the walk passed)
        self.chains: dict[tuple[int, int], list[SliceAnswer | None]] = {}
        self.through: set[tuple[int, int]] = set()  # the walks that went on to the next prompt without the rules
        self.decoded = 0  # decoder passes so far
        self.guide: str | None = None  # the learned class whose proposals guide the walks (see proposals)
        self._proposals: tuple[int | None, dict[str, np.ndarray]] = (None, {})  # the last slice's class proposals

    # ------------------------------------------------------------------ decoding
    def _decode(self, k: int, direction: int, prompts: Prompts, like: np.ndarray | None = None) -> SliceAnswer:
        """Slice ``k``'s answer to ``prompts``; with ``like``, the candidate that overlaps it most."""
        session = self.session
        pred = session.seg.decode_embedding(session.embedding(k, direction), session.meta, prompts,
                                            multimask=like is not None, mask_decoder=self.decoder)
        self.decoded += 1
        if like is None:
            return SliceAnswer(torch.from_numpy(pred.logits[:1]), float(pred.scores[0]), pred.masks[0])
        masks = pred.all_masks[0]
        inter = (masks & like).reshape(len(masks), -1).sum(1)
        union = (masks | like).reshape(len(masks), -1).sum(1)
        best = int(np.argmax(inter / np.maximum(union, 1)))
        low = torch.from_numpy(pred.all_logits[0, best : best + 1])  # the candidate's own logits
        return SliceAnswer(low, float(pred.all_scores[0, best]), masks[best])

    def _answer_prompts(self, k: int, p: SlicePrompts) -> SliceAnswer:
        if p.mask is not None and p.box is None and not p.points:
            low = self.session.seg.backbone.processor.mask_to_low_res(p.mask, self.session.meta)[:, 0]
            return SliceAnswer(low, 1.0, p.mask.copy())
        dense = p.dense
        if p.mask is not None:
            dense = self.session.seg.backbone.processor.mask_to_low_res(p.mask, self.session.meta)[:, 0]
        pts = np.stack(p.points)[None] if p.points else None
        labels = np.array(p.labels, dtype=np.int64)[None] if p.points else None
        prompts = Prompts(boxes=None if p.box is None else p.box[None], points=pts, point_labels=labels,
                          masks=None if dense is None else dense.numpy())
        return self._decode(k, 1, prompts)

    def _step(self, k: int, direction: int, prev: SliceAnswer, best: float = 1.0) -> tuple[SliceAnswer | None, bool]:
        """Slice ``k``'s answer prompted from its neighbour's, and whether it passes the stopping rules (no
        answer where there is nothing to prompt from or nothing to see)."""
        cfg = self.config
        last = prev.mask
        if not last.any() or self.session.is_blank(k):
            return None, False
        region = touching(self._proposal(k, self.guide), last) if self.guide is not None else None
        if region is None or not region.any():
            region = self._reach(prev, last)
        prompts = Prompts(
            boxes=mask_box(region, cfg.margin)[None],
            points=interior_point(last)[None, None] if cfg.point else None,
            point_labels=np.ones((1, 1), np.int64) if cfg.point else None,
            masks=prev.low.numpy() if cfg.mask_prompt else None,
        )
        answer = self._decode(k, direction, prompts, like=last if cfg.overlap else None)
        area = int(answer.mask.sum())
        passes = not (answer.score < cfg.min_score or area == 0 or area < cfg.min_area_ratio * last.sum()
                      or answer.score < best - cfg.max_drop)
        return answer, passes

    def _reach(self, prev: SliceAnswer, last: np.ndarray) -> np.ndarray:
        """What the next box surrounds: the mask, and with ``box_threshold`` below 0.5 the less sure pixels
        around it (only the parts connected to the mask)."""
        t = self.config.box_threshold
        if t >= 0.5:
            return last
        return touching(probability_mask(self.session, prev.low, t) | last, last)

    @torch.inference_mode()
    def _proposal(self, k: int, name: str) -> np.ndarray:
        """Class ``name``'s automatic mask on slice ``k`` (display frame), from the decode of all the learned
        classes together, as automatic mode shows it (the classes compete for pixels inside the decoder, so a
        class decoded alone would answer differently). One decoder pass per slice serves every class."""
        if self._proposals[0] != k:
            session = self.session
            pred = session.seg._predict_automatic(session.embedding(k, 1), session.meta, list(session.seg.classes))
            self._proposals = (k, dict(zip(pred.labels, pred.masks)))
        return self._proposals[1][name]

    def _choose_guide(self) -> str | None:
        """The learned class whose proposal on the prompted slices overlaps their answers best, if any reaches
        ``GUIDE_IOU``; None for a model without learned classes or with ``proposals`` off."""
        seg = self.session.seg
        if not self.config.proposals or not seg.classes:
            return None
        inter = dict.fromkeys(seg.classes, 0)
        union = dict.fromkeys(seg.classes, 0)
        for z, answer in self.answers.items():
            m = answer.mask
            for name in seg.classes:
                p = self._proposal(z, name)
                inter[name] += int((p & m).sum())
                union[name] += int((p | m).sum())
        best, guide = GUIDE_IOU, None
        for name in seg.classes:
            iou = inter[name] / max(union[name], 1)
            if iou >= best:
                best, guide = iou, name
        return guide

    def _walk(self, start: int, direction: int) -> None:
        """Answers from ``start`` towards ``direction`` until the structure ends or a prompted slice."""
        chain: list[SliceAnswer] = []
        prev = self.answers[start]
        given = self.prompts[start]
        mask_only = given.mask is not None and given.box is None and not given.points
        # a user's mask has no predicted IoU of its own (1.0 stands in): the drop counts from the first step
        best, k = (0.0 if mask_only else prev.score), start + direction
        skipped: list[SliceAnswer] = []  # answers that failed the rules, kept if a later slice passes
        ahead = [s for s in self.prompts if (s - start) * direction > 0]
        end = min(ahead, key=lambda s: abs(s - start)) if ahead else None
        through = self.config.through and end is not None and prev.mask.any() and self.answers[end].mask.any()
        (self.through.add if through else self.through.discard)((start, direction))
        while 0 <= k < len(self.session) and k not in self.prompts:
            if self.session.is_blank(k):  # a dropped or zero-filled slice: no answer there, and no sign of an end
                (chain if through or not skipped else skipped).append(None)
                k += direction
                continue
            answer, passes = self._step(k, direction, prev, best)
            if through:  # the object reaches the next prompted slice: no rule ends the walk before it
                if answer is None:
                    break
                chain.append(answer)
                prev = answer if answer.mask.any() else prev
                k += direction
                continue
            if not passes:
                if answer is None or sum(a is not None for a in skipped) >= self.config.patience:
                    break
                skipped.append(answer)  # the next slice is prompted from the last answer that passed
                k += direction
                continue
            chain += skipped + [answer]
            skipped = []
            prev, k, best = answer, k + direction, max(best, answer.score)
        self.chains[(start, direction)] = chain

    # ------------------------------------------------------------------ prompts
    def start(self, prompts: dict[int, dict]) -> None:
        """The first prompts (``{z: {box, points, labels, mask}}``, display frame): every slice with a box or a
        mask is decoded, then the walks run between and beyond them. Clicks on a slice without a box or mask
        (when another slice has one) then refine what the walks gave that slice, as :meth:`add` does: clicks
        alone would make it a prompted slice that every walk stops at, answered from the clicks only."""
        anchors = {z: g for z, g in prompts.items() if g.get("box") is not None or g.get("mask") is not None}
        clicks = {z: g for z, g in prompts.items() if z not in anchors} if anchors else {}
        prompts = anchors or prompts
        for z, given in prompts.items():
            p = SlicePrompts(box=given.get("box"), mask=given.get("mask"))
            if given.get("points") is not None:
                p.points = list(np.asarray(given["points"], np.float32).reshape(-1, 2))
                p.labels = [int(v) for v in np.asarray(given["labels"]).reshape(-1)]
            self.prompts[z] = p
        for z in sorted(self.prompts):
            self.answers[z] = self._answer_prompts(z, self.prompts[z])
        self.guide = self._choose_guide()
        for z in sorted(self.prompts):
            self._walk(z, 1)
            self._walk(z, -1)
        if self.partner is not None:
            self.partner.start(prompts)
        for z in sorted(clicks):
            self.add(z, points=clicks[z]["points"], labels=clicks[z]["labels"])

    def add(self, z: int, box=None, points=None, labels=None, mask=None) -> None:
        """Prompts on slice ``z`` (display frame), added to what the slice already has; walks again from ``z``."""
        if self.partner is not None:
            self.partner.add(z, box=box, points=points, labels=labels, mask=mask)
        current = self._own(z)
        p = self.prompts.get(z, SlicePrompts())
        if z not in self.prompts and box is None and mask is None and current is not None and current.mask.any():
            # clicks on a slice a walk answered: keep a box around that answer, as the box stays in 2-D, or the
            # decoder would answer the clicks alone (LiteMedSAM reads a click alone poorly)
            p.box = np.asarray(mask_box(current.mask, self.config.margin), np.float32)
        if box is not None:
            p.box = np.asarray(box, np.float32)
        if mask is not None:
            p.mask = np.asarray(mask, bool)
            p.dense = None
        if points is not None:
            p.points.extend(np.asarray(points, np.float32).reshape(-1, 2))
            p.labels.extend(int(v) for v in np.asarray(labels).reshape(-1))
            if mask is None and current is not None:
                p.dense = current.low  # clicks refine what the slice shows now, as in 2-D
        self.prompts[z] = p
        self.answers[z] = self._answer_prompts(z, p)
        below = [s for s in self.prompts if s < z]
        above = [s for s in self.prompts if s > z]
        if below:
            self._cut(max(below), 1, z)
        if above:
            self._cut(min(above), -1, z)
        self._walk(z, 1)
        self._walk(z, -1)

    def _cut(self, s: int, direction: int, z: int) -> None:
        """The walk from prompted slice ``s`` towards ``z``, which has just been prompted (a correction).

        Where ``z`` holds the object, the walk keeps the slices nearer to ``s`` than to ``z``: the others are
        answered by the walk from ``z`` alone, so a correction that removes a leak is not undone by the max of
        the two walks. Where ``z``'s answer is empty (the object is absent there), a walk that went through to
        ``z`` without the stopping rules walks again with them; any other walk is cut before ``z``."""
        gap = abs(z - s) - 1
        if self.answers[z].mask.any():
            keep = -(-(gap + 1) // 2) - 1  # the slices strictly nearer to s than to z
            self.chains[(s, direction)] = self.chains.get((s, direction), [])[:keep]
        elif (s, direction) in self.through:
            self._walk(s, direction)
        else:
            self.chains[(s, direction)] = self.chains.get((s, direction), [])[:gap]

    # ------------------------------------------------------------------ answers
    def answer(self, k: int) -> SliceAnswer | None:
        """Slice ``k``'s answer: its own prompts', or the walks' that reach it (fused), or None; with a base
        walk (``base``), the average of both walks' probabilities."""
        own = self._own(k)
        given = self.prompts.get(k)
        if self.partner is None or (given is not None and given.mask is not None and given.box is None
                                    and not given.points):
            return own  # a slice the user gave a mask alone keeps that mask as drawn
        found = [a for a in (own, self.partner.answer(k)) if a is not None]
        if not found:
            return None
        low = mean_probability([a.low for a in found], 2)  # the walk that did not reach k counts as background
        mask = probability_mask(self.session, low, self.config.base_threshold) if len(found) == 2 \
            else np.zeros(found[0].mask.shape, bool)  # a slice only one walk reached stays background
        return SliceAnswer(low, sum(a.score for a in found) / len(found), mask)

    def _own(self, k: int) -> SliceAnswer | None:
        """Slice ``k``'s answer from this walk alone (see :meth:`answer`)."""
        if k in self.answers:
            return self.answers[k]
        below = max((s for s in self.prompts if s < k), default=None)
        above = min((s for s in self.prompts if s > k), default=None)
        found = []
        for start, direction in ((below, 1), (above, -1)):
            if start is None:
                continue
            chain = self.chains.get((start, direction), [])
            i = abs(k - start) - 1
            if i < len(chain) and chain[i] is not None:
                found.append((abs(k - start), chain[i]))
        if not found:
            return None
        if len(found) == 1:
            return found[0][1]
        (d0, a0), (d1, a1) = found
        if self.config.fusion == "nearest":
            return a0 if d0 <= d1 else a1
        if self.config.fusion == "max":
            low = torch.maximum(a0.low, a1.low)
            return SliceAnswer(low, max(a0.score, a1.score), probability_mask(self.session, low))
        w0 = d1 / (d0 + d1)  # the nearer prompt weighs more
        low = w0 * a0.low + (1 - w0) * a1.low
        return SliceAnswer(low, w0 * a0.score + (1 - w0) * a1.score, probability_mask(self.session, low))

    def volume(self) -> np.ndarray:
        """The object's mask, a bool array of the volume's shape (the user's frame)."""
        out = np.zeros(self.session.data.shape, dtype=bool)
        for k in range(len(self.session)):
            answer = self.answer(k)
            if answer is not None and answer.mask.any():
                self.session.write_plane(out, k, answer.mask)
        return out

    def scores(self) -> dict[int, float]:
        """Predicted IoU of each answered slice."""
        return {k: a.score for k in range(len(self.session)) if (a := self.answer(k)) is not None}


__all__ = ["FUSIONS", "GUIDE_IOU", "Propagation", "PropagationConfig", "SliceAnswer", "SlicePrompts",
           "interior_point", "mean_probability", "probability_mask", "touching"]
