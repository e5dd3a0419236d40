"""Guidance: where the model is least sure, and a simulated user who follows it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disc_image

from medadapt import Segmenter
from medadapt.core.errors import MedAdaptError
from medadapt.evaluation.interactive import next_click, simulate_clicks
from medadapt.foundation import build_backbone
from medadapt.inference.guidance import guidance, uncertainty_map


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_uncertainty_is_high_near_even_odds_and_where_two_answers_disagree():
    logits = np.array([[0.0, 12.0], [-12.0, 0.5]], np.float32)
    u = uncertainty_map(logits)
    assert u[0, 0] == pytest.approx(1.0) and u[0, 1] < 1e-3 and u[1, 0] < 1e-3 and 0.7 < u[1, 1] < 1.0
    other = np.array([[0.0, -12.0], [-12.0, 0.5]], np.float32)  # confident both times, but opposite
    assert uncertainty_map(logits, other)[0, 1] > 0.99 and uncertainty_map(logits, other)[1, 0] < 1e-3
    with pytest.raises(MedAdaptError, match="must match"):
        uncertainty_map(logits, np.zeros((3, 3), np.float32))


def test_guidance_shows_the_most_uncertain_region_and_a_point_inside_it():
    u = np.zeros((80, 80), np.float32)
    u[_disc(80, 80, 20, 20, 6)] = 0.9  # small and very unsure
    u[_disc(80, 80, 55, 55, 12)] = 0.6  # larger, less unsure: more uncertainty in all
    g = guidance(u)
    assert g is not None and g.region[55, 55] and not g.region[20, 20]
    x, y = g.point
    assert g.region[int(y), int(x)] and abs(x - 55) <= 1 and abs(y - 55) <= 1
    assert guidance(np.full((10, 10), 0.2, np.float32)) is None
    with pytest.raises(MedAdaptError, match="threshold"):
        guidance(u, threshold=1.5)


def test_a_guided_click_goes_to_the_error_inside_the_shown_region():
    target = _disc(100, 100, 30, 30, 15) | _disc(100, 100, 70, 70, 9)  # 707 and 253 pixels
    pred = np.zeros_like(target)
    (x, y), _ = next_click(pred, target)
    assert (x, y) == (30, 30)  # unguided: the larger miss
    focus = _disc(100, 100, 70, 70, 12)
    (x, y), label = next_click(pred, target, focus)
    assert (x, y) == (70, 70) and label == 1  # guided: the miss the user was shown
    (x, y), _ = next_click(pred, target, _disc(100, 100, 90, 10, 5))  # the shown region is right: look elsewhere
    assert (x, y) == (30, 30)
    sliver = np.zeros_like(target)
    sliver[70, 60:66] = True  # the shown region holds only a sliver of the small miss: not worth a click there
    (x, y), _ = next_click(pred, target, sliver)
    assert (x, y) == (30, 30)


def test_simulate_clicks_follows_the_guide():
    target = _disc(64, 64, 20, 20, 8) | _disc(64, 64, 45, 45, 6)
    clicks = []

    def decode(points, labels, previous, box):
        clicks.append(tuple(points[-1]))
        return np.zeros_like(target), np.zeros((4, 4), np.float32)

    def guide(logits, before):  # always shows the small disc as unsure
        return _disc(64, 64, 45, 45, 8).astype(np.float32)

    proposal = (np.zeros_like(target), np.zeros((4, 4), np.float32))
    simulate_clicks(decode, target, proposal, max_clicks=2, guide=guide)
    assert len(clicks) == 2 and all(np.hypot(x - 45, y - 45) <= 6 for x, y in clicks)  # inside the small disc


def test_full_size_logits_follow_the_image_geometry():
    seg = Segmenter(build_backbone("tiny_sam_vit"), device="cpu")
    image, _ = disc_image(90, 120)
    seg.set_image(image)
    pred = seg.predict(boxes=[[20, 20, 80, 70]])
    full = seg.full_size_logits(pred.logits[0])
    assert full.shape == (90, 120) and full.dtype == np.float32
    assert np.array_equal(full > 0, pred.masks[0])
    with pytest.raises(MedAdaptError, match="low-resolution"):
        seg.full_size_logits(np.zeros((5, 5), np.float32))
