"""Scribbles: validation, drawing, clicks along strokes, simulated scribbles, and Segmenter.predict(scribbles=...)."""

from __future__ import annotations

import numpy as np
import pytest

from medadapt import MedAdaptError
from medadapt.demo import demo_root
from medadapt.evaluation.metrics import binary_dice
from medadapt.io.imaging import load_image, load_mask
from medadapt.prompts import (
    encode_strokes,
    rasterize_strokes,
    scribble_prompts,
    simulate_scribble_labels,
    simulate_scribbles,
)
from medadapt.prompts.scribbles import DENSE_MASK, MASK_LOGITS


def _disc(h=120, w=160, centre=(60, 80), outer=30, inner=None):
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - centre[0], xx - centre[1])
    return (r <= outer) & (r > inner) if inner is not None else r <= outer


@pytest.mark.parametrize("strokes, size, message", [
    ([], (10, 10), "non-empty list of strokes"),
    ([([[1, 2]], 1, 0)], (10, 10), "pair"),
    ([([[1, 2, 3]], 1)], (10, 10), "K x 2"),
    ([(np.zeros((0, 2)), 1)], (10, 10), "K >= 1"),
    ([(["a", "b"], 1)], (10, 10), "must be numbers"),
    ([([[1, np.nan]], 1)], (10, 10), "NaN"),
    ([([[1, 2], [10, 2]], 1)], (10, 10), r"vertex \(10, 2\) lies outside the image \(width 10"),
    ([([[1, 2]], 2)], (10, 10), "label must be 1"),
    ([([[1, 2]], True)], (10, 10), "label must be 1"),
    ([([[1, 2]], 1)], (0, 10), "size must be"),
])
def test_bad_strokes_are_explained(strokes, size, message):
    with pytest.raises(MedAdaptError, match=message):
        rasterize_strokes(strokes, size)


def test_other_bad_arguments_are_explained():
    good = [([[1, 2]], 1)]
    with pytest.raises(MedAdaptError, match="width"):
        rasterize_strokes(good, (10, 10), width=0)
    with pytest.raises(MedAdaptError, match="points_per_stroke"):
        scribble_prompts(good, (10, 10), points_per_stroke=0)
    with pytest.raises(MedAdaptError, match="mask is empty"):
        simulate_scribbles(np.zeros((10, 10), bool))
    with pytest.raises(MedAdaptError, match="length"):
        simulate_scribbles(_disc(), length=1.5)
    with pytest.raises(MedAdaptError, match="integer array"):
        simulate_scribble_labels(np.zeros((10, 10), np.float32))


def test_rasterize_draws_a_brush_of_the_given_width_and_later_strokes_win():
    canvas = rasterize_strokes([([[2, 5], [12, 5]], 1), ([[7, 0], [7, 10]], 0)], (11, 16), width=3)
    assert canvas.dtype == np.int8 and canvas.shape == (11, 16)
    expected = np.full((11, 16), -1, np.int8)
    expected[4:7, 1:14] = 1  # centres within 1.5 px of the segment, round caps included
    expected[:, 7] = 0  # the 1.5-px brush of the vertical stroke covers columns 6-8
    expected[:, 6] = expected[:, 8] = 0
    assert np.array_equal(canvas, expected)
    dot = rasterize_strokes([([[3, 4]], 0)], (6, 6), width=1)
    assert np.argwhere(dot == 0).tolist() == [[4, 3]] and (dot == -1).sum() == 35
    between = rasterize_strokes([([[3.5, 3.4]], 1)], (6, 6), width=1)  # between pixel centres: still a dot
    assert (between == 1).sum() >= 1


def test_clicks_are_spread_evenly_along_each_stroke():
    strokes = [([[0, 0], [10, 0], [10, 10]], 1), ([[5, 9], [5, 9]], 0)]  # an L of length 20, and a dot
    prompt = scribble_prompts(strokes, (12, 12), points_per_stroke=4)
    assert prompt.points.shape == (1, 5, 2) and prompt.point_labels.tolist() == [[1, 1, 1, 1, 0]]
    assert np.allclose(prompt.points[0], [[2.5, 0], [7.5, 0], [10, 2.5], [10, 7.5], [5, 9]])
    assert (prompt.masks is not None) == DENSE_MASK


def test_dense_mask_prompt_lands_on_the_decoders_grid():
    strokes = [([[100, 400], [100, 400]], 1), ([[250, 10]], 0)]  # x, y on a 512 x 256 (H x W) image
    grid = encode_strokes(strokes, (512, 256), width=1)
    assert grid.shape == (256, 256) and grid.dtype == np.float32
    pos, neg, rest = MASK_LOGITS
    assert grid[200, 50] == pos and grid[5, 125] == neg  # longest side resized to the 256 grid: half size
    assert (grid == pos).sum() == 1 and (grid == rest).sum() == 256 * 256 - 2
    stretched = encode_strokes(strokes, (512, 256), width=1, keep_aspect=False)
    assert stretched[200, 100] == pos and stretched[5, 250] == neg
    prompt = scribble_prompts(strokes, (512, 256), mask=True)
    assert prompt.masks.shape == (1, 256, 256) and np.array_equal(prompt.masks[0], encode_strokes(strokes, (512, 256)))


@pytest.mark.parametrize("mask", [_disc(), _disc(outer=35, inner=25)], ids=["blob", "ring"])
def test_simulated_scribbles_are_inside_and_outside_the_object(mask):
    strokes = simulate_scribbles(mask, np.random.default_rng(0))
    assert [label for _, label in strokes] == [1, 0]
    drawn = rasterize_strokes(strokes, mask.shape)
    assert (drawn == 1).sum() > 40 and mask[drawn == 1].all()
    assert (drawn == 0).sum() > 40 and not mask[drawn == 0].any()
    again = simulate_scribbles(mask, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(strokes, again))
    other = simulate_scribbles(mask, np.random.default_rng(1))
    assert not np.array_equal(other[0][0], strokes[0][0])


def test_positive_scribble_follows_the_shape():
    for seed in range(4):  # across a blob of radius 30, near its middle
        (xy, _), = simulate_scribbles(_disc(), np.random.default_rng(seed), length=1.0, negative=0)
        assert np.hypot(xy[:, 0] - 80, xy[:, 1] - 60).min() < 10 and np.hypot(*np.ptp(xy, axis=0)) > 30
    ring = simulate_scribbles(_disc(outer=35, inner=25), np.random.default_rng(2), length=1.0, negative=0)
    (xy, _), = ring
    angles = np.unwrap(np.arctan2(xy[:, 1] - 60, xy[:, 0] - 80))
    assert np.ptp(angles) > 2.5  # about half way around the ring, not across its hole
    assert np.all(np.abs(np.hypot(xy[:, 0] - 80, xy[:, 1] - 60) - 30) < 3)


def test_simulated_scribble_labels_for_training():
    labels = np.zeros((120, 160), np.int32)
    labels[_disc()] = 1
    labels[5:25, 5:45] = 7
    out = simulate_scribble_labels(labels, np.random.default_rng(0))
    assert out.dtype == np.int64 and out.shape == labels.shape
    assert set(np.unique(out).tolist()) == {-1, 0, 1, 7}
    scribbled = out >= 0
    assert np.array_equal(out[scribbled], labels[scribbled])  # every scribbled pixel carries its true label
    assert scribbled.mean() < 0.1
    empty = simulate_scribble_labels(np.zeros((40, 50), np.int64), np.random.default_rng(0))
    assert set(np.unique(empty).tolist()) == {-1, 0}


@pytest.fixture(scope="module")
def fetal_head(litemedsam):
    """LiteMedSAM with a bundled HC18 ultrasound image set, and the head's expert mask."""
    root = demo_root() / "hc18"
    litemedsam.set_image(load_image(root / "images" / "100_HC.png"))
    return litemedsam, load_mask(root / "masks" / "100_HC.png") > 0


def test_predict_from_scribbles_segments_a_real_object(fetal_head):
    seg, head = fetal_head
    strokes = simulate_scribbles(head, np.random.default_rng(0))
    out = seg.predict(scribbles=strokes)
    assert out.masks.shape == (1, *head.shape)
    proc = seg.backbone.processor
    same = seg.predict_prompts(scribble_prompts(strokes, head.shape, mask_size=proc.mask_size))
    assert np.allclose(out.logits, same.logits, atol=1e-5)
    # LiteMedSAM was trained on boxes: clicks along a scribble give a rough mask (see scribble_prompts)
    assert binary_dice(out.masks[0], head) > 0.4
    drawn = rasterize_strokes(strokes, head.shape)
    assert out.masks[0][drawn == 1].mean() > 0.5 and out.masks[0][drawn == 0].mean() < 0.02
    positive_only = seg.predict(scribbles=strokes[:1]).masks[0]
    assert binary_dice(out.masks[0], head) > binary_dice(positive_only, head) + 0.2  # the negative stroke helps


def test_scribbles_add_to_a_box_and_clicks_and_yield_to_an_explicit_mask_input(fetal_head):
    seg, head = fetal_head
    strokes = [([[120, 60], [130, 90]], 1), ([[20, 150], [60, 160]], 0)]
    prompt = scribble_prompts(strokes, head.shape)
    box = [[50, 20, 200, 160]]
    together = seg.predict(boxes=box, points=[[150, 100]], scribbles=strokes)
    points = np.concatenate([[[150, 100]], prompt.points[0]])
    labels = np.concatenate([[1], prompt.point_labels[0]])
    assert np.allclose(together.logits, seg.predict(boxes=box, points=points, point_labels=labels).logits, atol=1e-5)
    mask_input = together.logits
    explicit = seg.predict(scribbles=strokes, mask_input=mask_input)
    assert np.allclose(explicit.logits, seg.predict(points=prompt.points[0], point_labels=prompt.point_labels[0],
                                                    mask_input=mask_input).logits, atol=1e-5)


def test_scribbles_describe_one_object(fetal_head):
    seg, _ = fetal_head
    strokes = [([[120, 60], [130, 90]], 1)]
    with pytest.raises(MedAdaptError, match="one object; give at most one box"):
        seg.predict(boxes=[[10, 10, 50, 50], [60, 60, 90, 90]], scribbles=strokes)
    with pytest.raises(MedAdaptError, match="one object; give one point set"):
        seg.predict(points=[[[20, 20]], [[30, 30]]], scribbles=strokes)
    with pytest.raises(MedAdaptError, match="text= is a prompt of its own"):
        seg.predict(text="head", scribbles=strokes)
    with pytest.raises(MedAdaptError, match="refine=True"):
        seg.predict(refine=True, scribbles=strokes)
    with pytest.raises(MedAdaptError, match="outside the image"):
        seg.predict(scribbles=[([[120, 60], [300, 90]], 1)])
