"""A simulated annotator, to measure interactive segmentation the way its benchmarks do.

The user looks at the current mask, clicks at the centre (the most interior
pixel) of the largest wrong region, positive where the object was missed and
negative where background was taken, and stops once Dice reaches the target or
after ``max_clicks``. The number of clicks to reach Dice 0.85 / 0.90 (NoC@85,
NoC@90) and Dice after 1, 3 and 5 clicks summarise a session.

:func:`annotate_stream` runs that user over a stream of images, on a
:class:`~medadapt.inference.Segmenter` that may learn between images
(:class:`~medadapt.training.OnlineLearner`): each image opens with the model's
automatic proposal for the class once it has one, every click decodes the
object again with all clicks so far and the previous low-resolution logits
(SAM's iterative protocol), and the finished mask (the reference: a real user
fixes what is left by hand) is handed to the learner before the next image.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..core.errors import MedAdaptError
from ..inference import Segmenter
from ..inference.guidance import guidance, uncertainty_map
from ..inference.local import local_update
from ..prompts.regions import mask_box
from ..prompts.simulate import most_interior
from ..training import OnlineLearner
from .metrics import binary_dice as dice

REPORTED_CLICKS = (1, 3, 5)
FOCUS_SHARE = 0.25  # a guided user clicks inside the shown region if its error is this share of the largest
THRESHOLDS = (0.85, 0.90)


def next_click(pred: np.ndarray, target: np.ndarray, focus: np.ndarray | None = None,
               clicked: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
    """The click that fixes most: at the most interior pixel of the largest connected wrong region.

    Missed object pixels and spurious ones compete as regions (one region of
    either kind, whichever is larger); the label is 1 for a missed region and
    0 for a spurious one. Returns ``((x, y) float32, label)``, or None when
    ``pred`` equals ``target``. ``focus`` (H x W bool, the region guidance
    points at): a user who follows guidance looks there first, and clicks on
    the largest wrong region inside it when it is worth a click (at least a
    quarter the size of the largest wrong region anywhere); otherwise the user
    looks elsewhere, as without guidance. ``clicked`` (H x W bool, the pixels
    clicked so far): a user whose click changed nothing does not click the same
    pixel again, but the most interior pixel of the region that is not one of
    them.
    """
    p, t = np.asarray(pred, bool), np.asarray(target, bool)
    if p.shape != t.shape or p.ndim != 2:
        raise MedAdaptError(f"pred and target must be H x W masks of one shape; got {p.shape} and {t.shape}")
    if focus is not None:
        f = np.asarray(focus, bool)
        if f.shape != t.shape:
            raise MedAdaptError(f"focus must be an H x W mask like the target; got {f.shape} and {t.shape}")
        if (f & (p != t)).any() and _largest_error(p & f, t & f)[1] >= FOCUS_SHARE * _largest_error(p, t)[1]:
            return next_click(p & f, t & f, clicked=clicked)
    best, best_size, label = _largest_error(p, t)
    if best is None:
        return None
    if clicked is not None and (best & ~clicked).any():
        best = best & ~np.asarray(clicked, bool)  # a clicked pixel counts as the region's border
    return most_interior(best), label  # the image edge counts as the region's border


def _largest_error(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray | None, int, int]:
    """(the largest connected wrong region, its size, 1 if missed / 0 if spurious)."""
    best, best_size, label = None, 0, 1
    for error, lab in ((t & ~p, 1), (p & ~t, 0)):
        components, n = ndimage.label(error)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:
            best, best_size, label = components == k, int(sizes[k]), lab
    return best, best_size, label


@dataclass
class ClickSession:
    """One object annotated by the simulated user.

    ``dice[k]`` is Dice after k clicks (``dice[0]``: the proposal the image
    opened with, empty without one), carried forward after the user stopped,
    so every session has ``max_clicks + 1`` values. ``clicks`` holds
    ``(x, y, label)`` per click; ``seconds`` the model's time on the image
    (encoding, proposal, decoding), not the learner's.
    """

    dice: list[float]
    clicks: list[tuple[float, float, int]] = field(default_factory=list)
    seconds: float = 0.0
    image_id: str = ""
    stop_at: float = 0.90  # the Dice at which the user stopped clicking

    def noc(self, threshold: float) -> int:
        """Clicks until Dice reached ``threshold``; ``max_clicks`` when it never did (the usual convention)."""
        for k, d in enumerate(self.dice):
            if d >= threshold:
                return k
        return len(self.dice) - 1


Decode = Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None], tuple[np.ndarray, np.ndarray]]
# (an answer's low-resolution logits, the answer's before the last click or None) -> H x W uncertainty
Guide = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def simulate_clicks(decode: Decode, target: np.ndarray, proposal: tuple[np.ndarray, np.ndarray | None] | None = None,
                    *, max_clicks: int = 20, stop_at: float = 0.90, box: np.ndarray | None = None,
                    guide: Guide | None = None) -> ClickSession:
    """Click until Dice reaches ``stop_at`` or ``max_clicks`` clicks.

    ``decode(points K x 2, labels K, previous_logits or None, box or None) -> (mask H x W bool, logits)``
    answers the interactions so far; ``proposal`` is the ``(mask, logits)`` the image opened with (None:
    empty, no logits). With ``box`` (``[x0, y0, x1, y1]``), the first interaction draws that box instead of
    clicking (it counts as one click, and stays with every later click). ``guide(logits, before) -> H x W
    uncertainty`` (``before``: the logits the last click refined, None at first) makes the user follow guidance: each click goes to a wrong region inside the region
    :func:`~medadapt.inference.guidance.guidance` shows, when it holds one.
    """
    if max_clicks < 1:
        raise MedAdaptError(f"max_clicks must be >= 1; got {max_clicks}")
    t = np.asarray(target, bool)
    if not t.any():
        raise MedAdaptError("the target mask is empty: a simulated user has nothing to click on")
    mask, logits = proposal if proposal is not None else (np.zeros_like(t), None)
    scores = [dice(mask, t)]
    points, labels, clicks = [], [], []
    clicked = np.zeros_like(t)
    before = None
    if box is not None and scores[-1] < stop_at:
        mask, logits = decode(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), logits, box)
        scores.append(dice(mask, t))
        clicks.append((float("nan"), float("nan"), -1))  # the box, in the click count
    while scores[-1] < stop_at and len(clicks) < max_clicks:
        shown = guidance(guide(logits, before)) if guide is not None and logits is not None else None
        click = next_click(mask, t, None if shown is None else shown.region, clicked)
        if click is None:
            break
        xy, lab = click
        clicked[int(round(float(xy[1]))), int(round(float(xy[0])))] = True
        points.append(xy)
        labels.append(lab)
        clicks.append((float(xy[0]), float(xy[1]), int(lab)))
        before = logits
        mask, logits = decode(np.stack(points), np.array(labels, np.int64), logits, box)
        scores.append(dice(mask, t))
    scores += [scores[-1]] * (max_clicks + 1 - len(scores))
    return ClickSession(dice=scores, clicks=clicks, stop_at=stop_at)


def _decoder(seg: Segmenter, local: bool = False) -> Decode:
    shown: dict[str, np.ndarray] = {}  # the last answer given: its mask, and the logits it came with

    def decode(points, labels, previous, box):
        # a lone first click without a mask is ambiguous: let the decoder pick among its three answers
        multimask = previous is None and box is None and len(points) == 1
        pred = seg.predict(boxes=None if box is None else [box], points=points if len(points) else None,
                           point_labels=labels if len(points) else None,
                           mask_input=previous if (len(points) or box is None) else None, multimask=multimask)
        answer = pred.masks[0], pred.logits[0]
        if local and previous is not None and len(points):
            mask = shown["mask"] if shown.get("logits") is previous else seg.full_size_logits(previous) > 0
            answer = local_update((mask, np.asarray(previous, np.float32)), answer, points[-1], seg.low_res_mask)
        shown["mask"], shown["logits"] = answer
        return answer
    return decode


def _proposal(seg: Segmenter, class_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if class_name not in seg.classes:
        return None
    pred = seg.predict(classes=[class_name])
    return pred.masks[0], pred.logits[0]


def _guide(seg: Segmenter, proposal: tuple[np.ndarray, np.ndarray] | None) -> Guide:
    """The app's rule (:meth:`medadapt.app.Annotator`): disagreement with a non-empty proposal, else with the
    answer before the last click, and the answer's own margin."""
    shown = proposal is not None and bool(np.asarray(proposal[0]).any())
    fixed = seg.full_size_logits(proposal[1]) if shown else None

    def guide(logits, before):
        reference = fixed if shown else None if before is None else seg.full_size_logits(before)
        return uncertainty_map(seg.full_size_logits(logits), reference)
    return guide


def annotate_stream(seg: Segmenter, stream: Iterable[tuple[str, np.ndarray, np.ndarray]], class_name: str, *,
                    learner: OnlineLearner | None = None, steps_per_image: int = 0, max_clicks: int = 20,
                    stop_at: float = 0.90, first: str = "click", guided: bool = False, local: bool = False,
                    on_image: Callable[[int, ClickSession], None] | None = None) -> list[ClickSession]:
    """The simulated user annotates ``stream`` (``(image_id, image, target mask)`` triples) one by one.

    With a ``learner`` (whose serving model is ``seg``), each finished image's mask and clicks are added to
    it and it trains ``steps_per_image`` steps before the next image: what its background worker does while
    the user moves on, made synchronous so that runs repeat exactly. Without one the model stays frozen.
    ``first="box"``: the user's first interaction is a tight box around the target (models trained with
    boxes, such as LiteMedSAM, barely answer a lone click); ``"click"``: clicks only. ``guided``: the user
    follows the app's guidance (:mod:`medadapt.inference.guidance`: the answer's own margin and its
    disagreement with the automatic proposal). ``local``: each click changes the answer only near it
    (:func:`~medadapt.inference.local.local_update`), as the app does with local corrections on.
    An image whose target is empty has nothing to annotate: it is skipped with a warning.
    """
    if first not in ("click", "box"):
        raise MedAdaptError(f"first must be 'click' or 'box'; got {first!r}")
    if learner is not None and learner.segmenter is not seg:
        raise MedAdaptError("the learner must serve the segmenter being annotated (OnlineLearner(seg, ...))")
    sessions, skipped = [], []
    for image_id, image, target in stream:
        if not np.asarray(target).any():  # nothing to click on: the stream goes on with the next image
            skipped.append(str(image_id))
            continue
        start = time.perf_counter()
        seg.set_image(image)
        proposal = _proposal(seg, class_name)
        box = mask_box(np.asarray(target, bool)) if first == "box" else None
        guide = _guide(seg, proposal) if guided else None
        session = simulate_clicks(_decoder(seg, local), target, proposal, max_clicks=max_clicks, stop_at=stop_at, box=box,
                                  guide=guide)
        session.seconds = time.perf_counter() - start
        session.image_id = image_id
        if learner is not None:
            embedding, meta = seg.embedding()
            learner.add(embedding, meta, np.asarray(target, np.int64), [class_name],
                        prompts={"box": None if box is None else [float(v) for v in box],
                                 "points": [c[:2] for c in session.clicks if c[2] >= 0],
                                 "labels": [c[2] for c in session.clicks if c[2] >= 0]},
                        image_id=image_id)
            if steps_per_image:
                learner.step(steps_per_image)
                learner.publish()
        sessions.append(session)
        if on_image is not None:
            on_image(len(sessions) - 1, session)
    if skipped:
        warnings.warn(f"{len(skipped)} images without any {class_name!r} were skipped (nothing to annotate): "
                      f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}", stacklevel=2)
    return sessions


def summarize_sessions(sessions: Sequence[ClickSession], last: int | None = None) -> dict:
    """NoC@85, NoC@90 and Dice after 1, 3 and 5 clicks, mean over the sessions (the ``last`` ones if given).

    A threshold above where a session's user stopped clicking (``stop_at``) cannot be told: its NoC (and for
    90, ``failed@90``) is nan, not the click budget."""
    chosen = list(sessions)[-last:] if last else list(sessions)
    if not chosen:
        raise MedAdaptError("no sessions to summarise")
    stopped = min(s.stop_at for s in chosen)
    out = {"images": len(chosen)}
    for th in THRESHOLDS:
        out[f"noc@{round(th * 100)}"] = float(np.mean([s.noc(th) for s in chosen])) if th <= stopped else math.nan
    for k in (0, *REPORTED_CLICKS):
        out[f"dice@{k}"] = float(np.mean([s.dice[min(k, len(s.dice) - 1)] for s in chosen]))
    out["failed@90"] = int(sum(s.dice[-1] < 0.90 for s in chosen)) if stopped >= 0.90 else math.nan
    return out


__all__ = ["ClickSession", "annotate_stream", "next_click", "simulate_clicks", "summarize_sessions"]
