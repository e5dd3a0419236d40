"""The object being annotated on one image or slice: its prompts and the decoder's answer after each.

Every prompt re-decodes the object with all of its prompts so far plus the
previous answer's low-resolution logits as ``mask_input`` (SAM's iterative
protocol): clicks accumulate, the latest box is the object's box, and
scribbles go to :meth:`Segmenter.predict` as ``scribbles``. A lone first click
asks the decoder for three candidates and keeps the best (``multimask``), as
SAM does for ambiguous single clicks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError
from ..inference.local import local_update


@dataclass(frozen=True)
class Click:
    x: float
    y: float
    label: int  # 1 foreground, 0 background


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Scribble:
    points: tuple[tuple[float, float], ...]  # polyline vertices (x, y)
    label: int  # 1 foreground, 0 background


Prompt = Click | Box | Scribble


def prompt_from_dict(data: dict[str, Any]) -> Prompt:
    """``{"kind": "point" | "box" | "scribble", ...}`` (the API's body) -> a prompt."""
    kind = data.get("kind")
    if kind == "point":
        return Click(float(data["x"]), float(data["y"]), int(data["label"]))
    if kind == "box":
        return Box(float(data["x0"]), float(data["y0"]), float(data["x1"]), float(data["y1"]))
    if kind == "scribble":
        return Scribble(tuple((float(x), float(y)) for x, y in data["points"]), int(data["label"]))
    raise MedAdaptError(f"unknown prompt kind {kind!r}: use point, box or scribble")


def prompt_to_dict(prompt: Prompt) -> dict[str, Any]:
    if isinstance(prompt, Click):
        return {"kind": "point", "x": prompt.x, "y": prompt.y, "label": prompt.label}
    if isinstance(prompt, Box):
        return {"kind": "box", "x0": prompt.x0, "y0": prompt.y0, "x1": prompt.x1, "y1": prompt.y1}
    return {"kind": "scribble", "points": [list(p) for p in prompt.points], "label": prompt.label}


def _inside(x: float, y: float, size: tuple[int, int]) -> bool:
    h, w = size
    return 0 <= x <= w - 1 and 0 <= y <= h - 1


def check_prompt(prompt: Prompt, size: tuple[int, int]) -> None:
    """Refuse a prompt that is not on the image (``size`` = (H, W)), saying where the image is."""
    h, w = size
    where = f"the image is {w} x {h} pixels: x in 0..{w - 1}, y in 0..{h - 1}"
    if isinstance(prompt, Click):
        if not _inside(prompt.x, prompt.y, size):
            raise MedAdaptError(f"the click ({prompt.x:g}, {prompt.y:g}) lies outside the image; {where}")
    elif isinstance(prompt, Box):
        if prompt.x1 <= prompt.x0 or prompt.y1 <= prompt.y0:
            raise MedAdaptError("a box needs x1 > x0 and y1 > y0 (drag from one corner to the opposite one)")
        if not (_inside(prompt.x0, prompt.y0, size) and _inside(prompt.x1, prompt.y1, size)):
            raise MedAdaptError(f"the box [{prompt.x0:g}, {prompt.y0:g}, {prompt.x1:g}, {prompt.y1:g}] reaches "
                                f"outside the image; {where}")
    else:
        if not prompt.points:
            raise MedAdaptError("a scribble needs at least one point")
        bad = next((p for p in prompt.points if not _inside(p[0], p[1], size)), None)
        if bad is not None:
            raise MedAdaptError(f"the scribble point ({bad[0]:g}, {bad[1]:g}) lies outside the image; {where}")
    label = getattr(prompt, "label", 1)
    if label not in (0, 1):
        raise MedAdaptError(f"a prompt label is 1 (foreground) or 0 (background); got {label}")


@dataclass
class Answer:
    """The decoder's answer: the full-size mask, its low-res logits (m x m) and predicted IoU."""

    mask: np.ndarray
    logits: np.ndarray
    score: float


@dataclass
class AnnotatedObject:
    """One object of one class on one image or slice; ``steps[i]`` answers ``prompts[: i + 1]``."""

    class_name: str
    proposal: Answer | None = None  # the adapter's automatic answer the slice opened with
    version: Any = None  # model version the proposal came from
    prompts: list[Prompt] = field(default_factory=list)
    steps: list[Answer] = field(default_factory=list)
    cleared: tuple | None = None  # (prompts, steps, proposal) before the last clear: undo brings them back

    def current(self) -> Answer | None:
        return self.steps[-1] if self.steps else self.proposal

    def before_last(self) -> Answer | None:
        """The answer the last prompt was decoded from (its ``mask_input``)."""
        return self.steps[-2] if len(self.steps) >= 2 else self.proposal


def decode(seg, prompts: list[Prompt], previous: Answer | None, local: bool = False) -> Answer:
    """Decode one object from all its prompts on ``seg``'s current image, refining ``previous``; with
    ``local``, a click changes ``previous`` only near it (:func:`~medadapt.inference.local.local_update`)."""
    clicks = [p for p in prompts if isinstance(p, Click)]
    boxes = [p for p in prompts if isinstance(p, Box)]
    scribbles = [p for p in prompts if isinstance(p, Scribble)]
    kwargs: dict[str, Any] = {}
    if boxes:
        b = boxes[-1]
        kwargs["boxes"] = [[b.x0, b.y0, b.x1, b.y1]]
    if clicks:
        kwargs["points"] = [[c.x, c.y] for c in clicks]
        kwargs["point_labels"] = [c.label for c in clicks]
    if scribbles:
        kwargs["scribbles"] = [(np.asarray(s.points, dtype=np.float32), s.label) for s in scribbles]
    if previous is not None:
        kwargs["mask_input"] = previous.logits
    single_click = len(prompts) == 1 and len(clicks) == 1 and previous is None
    pred = seg.predict(multimask=single_click, **kwargs)
    mask, logits = np.asarray(pred.masks[0], dtype=bool), np.asarray(pred.logits[0], dtype=np.float32)
    last = prompts[-1] if prompts else None
    if local and previous is not None and isinstance(last, Click):
        mask, logits = local_update((previous.mask, previous.logits), (mask, logits), np.array([last.x, last.y]),
                                    seg.low_res_mask)
    return Answer(mask, logits, float(pred.scores[0]))


__all__ = ["AnnotatedObject", "Answer", "Box", "Click", "Prompt", "Scribble", "check_prompt", "decode",
           "prompt_from_dict", "prompt_to_dict"]
