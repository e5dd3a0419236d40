"""The simulated annotator: where it clicks, when it stops, and a stream on the real LiteMedSAM."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import disc_image

from medadapt.core.errors import MedAdaptError
from medadapt.evaluation.interactive import ClickSession, next_click, simulate_clicks, summarize_sessions


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_next_click_goes_to_the_centre_of_the_largest_wrong_region():
    target = _disc(100, 100, 50, 30, 12) | _disc(100, 100, 50, 75, 5)
    pred = np.zeros_like(target)
    (x, y), label = next_click(pred, target)
    assert label == 1 and (x, y) == (30, 50)  # the larger missed disc, at its centre


def test_next_click_prefers_a_large_spurious_region_over_a_small_miss():
    target = _disc(100, 100, 20, 20, 4)
    spurious = _disc(100, 100, 70, 70, 15)
    (x, y), label = next_click(spurious, target)
    assert label == 0 and (x, y) == (70, 70)
    assert next_click(target, target) is None


def test_next_click_counts_the_image_edge_as_border():
    target = np.zeros((40, 40), bool)
    target[:, :10] = True  # a band along the left edge: its centre is 5 px from the edge, not on it
    (x, _), _ = next_click(np.zeros_like(target), target)
    assert 3 <= x <= 6


def test_simulate_clicks_stops_at_the_target_and_pads_the_curve():
    target = _disc(64, 64, 32, 32, 10)
    calls = []

    def decode(points, labels, previous, box):  # a perfect model after two clicks
        calls.append(len(points))
        mask = target if len(points) >= 2 else _disc(64, 64, 32, 32, 5)
        return mask, np.zeros((4, 4), np.float32)

    s = simulate_clicks(decode, target, max_clicks=20, stop_at=0.9)
    assert calls == [1, 2] and len(s.dice) == 21 and len(s.clicks) == 2
    assert s.dice[0] == 0.0 and s.dice[-1] == 1.0 and s.noc(0.9) == 2 and s.noc(0.85) == 2
    assert all(c[2] in (0, 1) for c in s.clicks)


def test_a_click_that_changes_nothing_is_not_repeated_on_the_same_pixel():
    target = _disc(64, 64, 32, 32, 10)
    stuck = target.copy()
    stuck[:, 32:] = False  # a model that never gives the right half

    s = simulate_clicks(lambda points, labels, previous, box: (stuck, None), target, max_clicks=6, stop_at=0.99)
    positions = {(c[0], c[1]) for c in s.clicks}
    assert len(s.clicks) == 6 and len(positions) == 6


def test_a_session_that_never_gets_there_counts_max_clicks():
    s = ClickSession(dice=[0.1] * 21)
    assert s.noc(0.9) == 20
    summary = summarize_sessions([s, ClickSession(dice=[0.95] * 21)])
    assert summary["noc@90"] == 10.0 and summary["failed@90"] == 1 and summary["dice@1"] == pytest.approx(0.525)


def test_thresholds_above_where_the_user_stopped_are_not_told_as_failures():
    """A user who stops at Dice 0.85 never clicks on to 0.90: NoC@90 and failed@90 are unknown, not the budget."""
    target = _disc(64, 64, 32, 32, 10)
    almost = target.copy()
    almost[22:25] = False  # Dice about 0.87
    s = simulate_clicks(lambda points, labels, previous, box: (almost, None), target, max_clicks=4, stop_at=0.85)
    assert s.stop_at == 0.85 and s.noc(0.85) == 1
    summary = summarize_sessions([s])
    assert summary["noc@85"] == 1.0 and math.isnan(summary["noc@90"]) and math.isnan(summary["failed@90"])


def test_errors():
    with pytest.raises(MedAdaptError, match="empty"):
        simulate_clicks(lambda p, l, m, b: (None, None), np.zeros((8, 8), bool))
    with pytest.raises(MedAdaptError, match="same shape|one shape"):
        next_click(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(MedAdaptError, match="no sessions"):
        summarize_sessions([])


def test_frozen_litemedsam_from_a_box_then_clicks_on_discs(litemedsam):
    from medadapt.evaluation.interactive import annotate_stream

    stream = [(f"disc{i}", *disc_image(center=(80 + 10 * i, 110), radius=35, seed=i)) for i in range(2)]
    blank = ("blank", stream[0][1], np.zeros_like(stream[0][2]))  # no target: skipped, the stream goes on
    seen = []
    with pytest.warns(UserWarning, match="1 images without any 'disc'.*blank"):
        sessions = annotate_stream(litemedsam, [stream[0], blank, stream[1]], "disc", max_clicks=10, first="box",
                                   on_image=lambda i, s: seen.append((i, s.image_id)))
    assert [s.image_id for s in sessions] == ["disc0", "disc1"] and seen == [(0, "disc0"), (1, "disc1")]
    for s in sessions:
        assert s.dice[0] == 0.0  # no learned class: the image opens empty
        assert s.clicks[0][2] == -1 and s.dice[1] > 0.85  # LiteMedSAM answers a box well
        assert s.noc(0.9) <= 3
    with pytest.raises(MedAdaptError, match="first"):
        annotate_stream(litemedsam, stream, "disc", first="scribble")


def test_a_box_first_counts_as_one_interaction_and_stays_with_the_clicks():
    target = _disc(64, 64, 32, 32, 10)
    seen = []

    def decode(points, labels, previous, box):
        seen.append((len(points), None if box is None else tuple(box)))
        return (target if len(points) >= 1 else _disc(64, 64, 32, 32, 6)), np.zeros((4, 4), np.float32)

    s = simulate_clicks(decode, target, box=np.array([22, 22, 42, 42]))
    assert seen == [(0, (22, 22, 42, 42)), (1, (22, 22, 42, 42))]
    assert s.noc(0.9) == 2 and s.clicks[0][2] == -1 and s.clicks[1][2] == 1  # box, then a click adding what it missed
