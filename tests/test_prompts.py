"""Prompt container and prompt simulation: exact on masks whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt.core.errors import MedAdaptError
from medadapt.prompts import (
    PAD_LABEL,
    Prompts,
    box_from_mask,
    corrective_click,
    iterative_clicks,
    nonempty,
    prompts_from_prediction,
    sample_points,
    simulate_prompts,
)


def rect(h=60, w=80, x0=10, y0=20, x1=39, y1=44):
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def disc(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def inside(mask, pts):
    pts = np.asarray(pts).astype(int).reshape(-1, 2)
    return mask[pts[:, 1], pts[:, 0]]


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


# ------------------------------------------------------------------ boxes
def test_box_of_rectangle_is_exact():
    np.testing.assert_array_equal(box_from_mask(rect()), [10, 20, 39, 44])
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    np.testing.assert_array_equal(box_from_mask(one), [3, 2, 4, 3])  # widened to a pixel: the decoder needs area
    assert box_from_mask(rect()).dtype == np.float32


def test_a_one_pixel_wide_object_gets_a_box_the_predictor_accepts():
    from medadapt.foundation.processor import check_boxes

    for col in (20, 39):  # inside, and on the last column (the box cannot grow right)
        line = np.zeros((40, 40), bool)
        line[10:30, col] = True
        box = box_from_mask(line)
        assert box[2] - box[0] == 1 and box[1] == 10 and box[3] == 29 and box[0] <= col <= box[2]
        np.testing.assert_array_equal(check_boxes([box], (40, 40))[0], box)
        for s in range(20):  # jittered boxes too
            jittered = box_from_mask(line, 0.3, np.random.default_rng(s))
            assert jittered[2] - jittered[0] >= 1 and jittered[3] - jittered[1] >= 1
            check_boxes([jittered], (40, 40))


def test_box_jitter_bounds_and_determinism():
    m = rect()
    tight = box_from_mask(m)
    w, h = 30, 25
    limit = np.array([w, h, w, h]) * 0.1 + 1e-4
    boxes = np.stack([box_from_mask(m, 0.1, np.random.default_rng(s)) for s in range(200)])
    assert np.all(np.abs(boxes - tight) <= limit)
    # every side moves, independently, in both directions
    diff = boxes - tight
    assert np.all((diff > 0).any(axis=0)) and np.all((diff < 0).any(axis=0))
    assert len({tuple(b) for b in boxes}) == 200
    a = box_from_mask(m, 0.1, np.random.default_rng(7))
    b = box_from_mask(m, 0.1, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_box_jitter_clipped_to_image():
    full = np.ones((20, 30), bool)
    for s in range(50):
        b = box_from_mask(full, 0.5, np.random.default_rng(s))
        assert b[0] >= 0 and b[1] >= 0 and b[2] <= 29 and b[3] <= 19
        assert b[2] >= b[0] and b[3] >= b[1]


def test_box_errors():
    with pytest.raises(MedAdaptError, match="empty"):
        box_from_mask(np.zeros((5, 5), bool))
    with pytest.raises(MedAdaptError, match="jitter"):
        box_from_mask(rect(), -0.1)
    with pytest.raises(MedAdaptError, match="2-D"):
        box_from_mask(np.ones((2, 5, 5), bool))


# ----------------------------------------------------------------- points
def test_sample_points_inside_outside_and_counts():
    m = rect()
    rng = np.random.default_rng(0)
    pts, lab = sample_points(m, 5, 4, rng)
    assert pts.shape == (9, 2) and lab.shape == (9,)
    assert pts.dtype == np.float32 and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, [1] * 5 + [0] * 4)
    assert inside(m, pts[:5]).all()
    assert not inside(m, pts[5:]).any()
    assert len({tuple(p) for p in pts}) == 9
    # positives avoid the boundary when the object is thick enough
    x, y = pts[:5, 0], pts[:5, 1]
    assert np.all((x >= 12) & (x <= 37) & (y >= 22) & (y <= 42))
    # "box" negatives stay near the object; "image" ones may be anywhere
    assert np.all((pts[5:, 0] >= 10 - 3) & (pts[5:, 0] <= 39 + 3) & (pts[5:, 1] >= 20 - 3) & (pts[5:, 1] <= 44 + 3))
    far = np.concatenate([sample_points(m, 0, 20, np.random.default_rng(s), neg_region="image")[0] for s in range(5)])
    assert not inside(m, far).any()
    assert (far[:, 0] > 45).any() or (far[:, 1] > 50).any() or (far[:, 0] < 5).any()


def test_sample_points_deterministic():
    a = sample_points(rect(), 3, 3, np.random.default_rng(3))
    b = sample_points(rect(), 3, 3, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sample_points_returns_fewer_instead_of_crashing():
    full = np.ones((10, 12), bool)
    for region in ("box", "image"):
        pts, lab = sample_points(full, 2, 3, np.random.default_rng(0), neg_region=region)
        assert pts.shape == (2, 2) and lab.tolist() == [1, 1]
    tiny = np.zeros((10, 10), bool)
    tiny[4, 4] = tiny[4, 5] = True
    pts, lab = sample_points(tiny, 5, 0, np.random.default_rng(0))
    assert len(pts) == 2 and inside(tiny, pts).all()  # thin object: deepest pixels are used
    pts, lab = sample_points(np.zeros((8, 8), bool), 2, 2, np.random.default_rng(0))
    assert pts.shape == (0, 2) and lab.shape == (0,)
    with pytest.raises(MedAdaptError, match="neg_region"):
        sample_points(tiny, 1, 1, np.random.default_rng(0), neg_region="ring")
    with pytest.raises(MedAdaptError, match="n_pos"):
        sample_points(tiny, -1, 1, np.random.default_rng(0))


# -------------------------------------------------------- corrective clicks
def test_corrective_click_false_negative_blob():
    target = disc(64, 64, 20, 30, 8) | disc(64, 64, 48, 30, 6)
    pred = disc(64, 64, 20, 30, 8)  # the second disc is missed
    xy, label = corrective_click(pred, target)
    assert label == 1
    assert inside(disc(64, 64, 48, 30, 6), xy).all()
    np.testing.assert_allclose(xy, [48, 30])  # most interior pixel = the disc's centre
    xy, label = corrective_click(pred, target, np.random.default_rng(0), mode="random")
    assert label == 1 and inside(disc(64, 64, 48, 30, 6), xy).all()


def test_corrective_click_false_positive_blob():
    target = disc(64, 64, 20, 30, 8)
    pred = target | disc(64, 64, 48, 30, 6)
    xy, label = corrective_click(pred, target)
    assert label == 0
    np.testing.assert_allclose(xy, [48, 30])


def test_corrective_click_picks_larger_error_region():
    target = disc(80, 80, 20, 20, 10) | disc(80, 80, 60, 60, 5) | disc(80, 80, 20, 60, 4)
    pred = disc(80, 80, 20, 20, 10) | disc(80, 80, 60, 20, 3)  # small FP, two FN blobs
    xy, label = corrective_click(pred, target)
    assert label == 1 and inside(disc(80, 80, 60, 60, 5), xy).all()  # largest FN component
    # a large false positive outweighs a small miss
    pred2 = disc(80, 80, 20, 20, 10) | disc(80, 80, 60, 20, 12) | disc(80, 80, 60, 60, 5)
    xy, label = corrective_click(pred2, target)
    assert label == 0 and inside(disc(80, 80, 60, 20, 12), xy).all()


def test_corrective_click_none_when_perfect_and_errors():
    t = rect()
    assert corrective_click(t.copy(), t) is None
    with pytest.raises(MedAdaptError, match="same shape"):
        corrective_click(t[:10], t)
    with pytest.raises(MedAdaptError, match="mode"):
        corrective_click(t, t, mode="edge")


def test_corrective_click_border_region_stays_off_the_edge():
    target = np.zeros((40, 40), bool)
    target[:, :10] = True  # a band along the left edge
    xy, label = corrective_click(np.zeros_like(target), target)
    assert label == 1 and 3 <= xy[0] <= 6  # the image edge counts as boundary


# ----------------------------------------------------------- simulate_prompts
def masks3():
    return np.stack([rect(), disc(60, 80, 60, 20, 8), disc(60, 80, 65, 48, 6)])


def test_simulate_prompts_modes():
    m = masks3()
    p = simulate_prompts(m, np.random.default_rng(0), mode="box", box_jitter=0.0)
    assert len(p) == 3 and p.points is None
    np.testing.assert_array_equal(p.boxes[0], [10, 20, 39, 44])
    p = simulate_prompts(m, np.random.default_rng(0), mode="points", n_pos=2, n_neg=1)
    assert p.boxes is None and p.points.shape == (3, 3, 2)
    for i in range(3):
        assert inside(m[i], p.points[i, :2]).all() and not inside(m[i], p.points[i, 2:]).any()
        assert p.point_labels[i].tolist() == [1, 1, 0]
    p = simulate_prompts(m, np.random.default_rng(0), mode="box+points")
    assert p.boxes.shape == (3, 4) and p.points.shape == (3, 1, 2)
    a = simulate_prompts(m, np.random.default_rng(5), mode="box+points", n_neg=2)
    b = simulate_prompts(m, np.random.default_rng(5), mode="box+points", n_neg=2)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.points, b.points)


def test_simulate_prompts_pads_missing_points():
    full = np.ones((1, 10, 10), bool)
    p = simulate_prompts(full, np.random.default_rng(0), mode="points", n_pos=1, n_neg=2)
    assert p.points.shape == (1, 3, 2)
    assert p.point_labels.tolist() == [[1, PAD_LABEL, PAD_LABEL]]


def test_simulate_prompts_mixed_and_split():
    m = np.stack([disc(64, 64, 32, 32, 5 + i % 4) for i in range(12)])
    p = simulate_prompts(m, np.random.default_rng(1), mode="mixed")
    hb, hp = p.has_box, p.has_points
    assert hb.any() and hp.any() and np.all(hb ^ hp)  # each object got exactly one kind
    with pytest.raises(MedAdaptError, match="decode_groups"):
        p.to_torch()
    groups = p.decode_groups()
    assert sorted(np.concatenate([g[0] for g in groups]).tolist()) == list(range(12))
    for idx, g in groups:
        t = g.to_torch()
        assert (t["boxes"] is None) != (t["points"] is None)
        assert len(g) == len(idx)


def test_simulate_prompts_errors():
    m = masks3()
    m[1] = False
    assert nonempty(m).tolist() == [0, 2]
    with pytest.raises(MedAdaptError, match="nonempty"):
        simulate_prompts(m, np.random.default_rng(0), mode="box")
    p = simulate_prompts(m[nonempty(m)], np.random.default_rng(0), mode="box")
    assert len(p) == 2
    with pytest.raises(MedAdaptError, match="mode must be"):
        simulate_prompts(masks3(), np.random.default_rng(0), mode="scribble")
    with pytest.raises(MedAdaptError, match="n_pos"):
        simulate_prompts(masks3(), np.random.default_rng(0), mode="points", n_pos=0, n_neg=2)


# --------------------------------------------------- prompts_from_prediction
def test_prompts_from_prediction_largest_first():
    h, w = 64, 96
    small = disc(h, w, 20, 30, 6)
    big = disc(h, w, 60, 30, 12)
    speck = np.zeros((h, w), bool)
    speck[2:4, 90:92] = True  # 4 pixels: noise
    prob = np.where(small | big | speck, 0.9, 0.1)
    p = prompts_from_prediction(prob, max_objects=None)
    assert len(p) == 2  # speck dropped
    np.testing.assert_array_equal(p.boxes[0], box_from_mask(big))
    np.testing.assert_array_equal(p.boxes[1], box_from_mask(small))
    assert inside(big, p.points[0]).all() and inside(small, p.points[1]).all()
    np.testing.assert_allclose(p.points[0, 0], [60, 30])
    assert p.point_labels.tolist() == [[1], [1]]
    one = prompts_from_prediction(prob)  # default max_objects=1
    assert len(one) == 1
    np.testing.assert_array_equal(one.boxes[0], box_from_mask(big))
    binary = prompts_from_prediction(small | big, max_objects=None)
    np.testing.assert_array_equal(binary.boxes, p.boxes)


def test_prompts_from_prediction_negatives_and_extra_positives():
    h, w = 64, 64
    blob = disc(h, w, 32, 32, 10)
    p = prompts_from_prediction(blob, n_pos=3, n_neg=4, rng=np.random.default_rng(0))
    assert p.points.shape == (1, 7, 2)
    assert p.point_labels.tolist() == [[1, 1, 1, 0, 0, 0, 0]]
    assert inside(blob, p.points[0, :3]).all() and not inside(blob, p.points[0, 3:]).any()
    d = np.hypot(p.points[0, 3:, 0] - 32, p.points[0, 3:, 1] - 32)
    assert np.all(d <= 10 + 3 + 1.5)  # just outside the object
    assert len({tuple(q) for q in p.points[0]}) == 7


def test_prompts_from_prediction_keeps_a_diagonal_vessel_whole():
    vessel = np.zeros((64, 64), bool)
    for i in range(30):
        vessel[10 + i, 10 + i] = True  # 8-connected only, as regions.largest_component counts it
    p = prompts_from_prediction(vessel, min_size=20)
    assert len(p) == 1
    np.testing.assert_array_equal(p.boxes[0], [10, 10, 39, 39])


def test_most_interior_refuses_an_empty_mask():
    from medadapt.prompts.simulate import most_interior

    np.testing.assert_array_equal(most_interior(rect()), [22, 32])  # first of the deepest, in raster order
    with pytest.raises(MedAdaptError, match="empty"):
        most_interior(np.zeros((5, 5), bool))


def test_prompts_from_prediction_empty():
    p = prompts_from_prediction(np.zeros((32, 32)))
    assert len(p) == 0 and p.boxes.shape == (0, 4) and p.points.shape == (0, 1, 2)
    p = prompts_from_prediction(np.where(disc(32, 32, 16, 16, 1), 1.0, 0.0), min_size=20)
    assert len(p) == 0
    with pytest.raises(MedAdaptError, match="NaN"):
        prompts_from_prediction(np.full((4, 4), np.nan))


# ---------------------------------------------------------- iterative_clicks
def toy_predict(shape, radius=6):
    """Fills a disc around each positive click, then erases one around each negative."""

    def fn(prompts: Prompts) -> np.ndarray:
        assert len(prompts) == 1
        out = np.zeros(shape, bool)
        pts, lab = prompts.points[0], prompts.point_labels[0]
        for (x, y), label in zip(pts, lab):
            if label == 1:
                out |= disc(*shape, x, y, radius)
        for (x, y), label in zip(pts, lab):
            if label == 0:
                out &= ~disc(*shape, x, y, radius)
        return out

    return fn


def test_iterative_clicks_improves_dice():
    shape = (64, 64)
    target = disc(*shape, 20, 20, 6) | disc(*shape, 44, 44, 6) | disc(*shape, 20, 46, 6)
    first = Prompts(points=[[[20, 20]]], point_labels=[[1]])
    calls = []
    fn = toy_predict(shape)

    def counting(p):
        calls.append(len(p.points[0]))
        return fn(p)

    preds = iterative_clicks(counting, target, first, n_clicks=4, rng=np.random.default_rng(0))
    assert len(preds) == 5
    d = [dice(p, target) for p in preds]
    assert d[0] < d[1] < d[2] and d[2] == pytest.approx(1.0)
    assert d[-1] == pytest.approx(1.0)
    assert calls == [1, 2, 3]  # stops calling once the prediction is perfect


def test_iterative_clicks_negative_click_removes_false_positive():
    shape = (64, 64)
    target = disc(*shape, 32, 32, 6)
    fn = toy_predict(shape, radius=6)
    # the first prompt wrongly adds a second blob
    first = Prompts(boxes=[[26, 26, 38, 38]], points=[[[32, 32], [50, 12]]], point_labels=[[1, 1]])
    preds = iterative_clicks(fn, target, first, n_clicks=1)
    assert dice(preds[1], target) > dice(preds[0], target)


def test_iterative_clicks_errors():
    two = Prompts(boxes=[[0, 0, 5, 5], [1, 1, 4, 4]])
    with pytest.raises(MedAdaptError, match="exactly one"):
        iterative_clicks(lambda p: np.zeros((8, 8), bool), np.zeros((8, 8), bool), two, 2)
    with pytest.raises(MedAdaptError, match="returned"):
        iterative_clicks(lambda p: np.zeros((4, 4), bool), np.zeros((8, 8), bool), two.select(0), 2)


# ------------------------------------------------------------------ Prompts
def test_prompts_scale_select_len():
    p = Prompts(
        boxes=[[0, 0, 10, 20], [5, 5, 6, 7]],
        points=[[[1, 2], [3, 4]], [[5, 6], [0, 0]]],
        point_labels=[[1, 0], [1, -1]],
        masks=np.zeros((2, 8, 8)),
    )
    assert len(p) == 2 and len(Prompts()) == 0
    s = p.scale(2.0, 0.5)
    np.testing.assert_allclose(s.boxes[0], [0, 0, 20, 10])
    np.testing.assert_allclose(s.points[0], [[2, 1], [6, 2]])
    assert s.masks.shape == (2, 8, 8)
    np.testing.assert_array_equal(p.boxes[0], [0, 0, 10, 20])  # original untouched
    one = p.select(1)
    assert len(one) == 1 and one.boxes.tolist() == [[5, 5, 6, 7]] and one.point_labels.tolist() == [[1, -1]]
    assert len(p.select([True, False])) == 1
    assert len(p.select(slice(0, 2))) == 2
    assert len(p.select([])) == 0
    with pytest.raises(MedAdaptError, match="out of range"):
        p.select([2])
    with pytest.raises(MedAdaptError, match="positive"):
        p.scale(0, 1)


def test_prompts_concat_points():
    p = Prompts(boxes=[[0, 0, 10, 10], [2, 2, 8, 8]])
    q = p.concat_points([[1, 1], [3, 3]], [1, 0])  # one click per object
    assert q.points.shape == (2, 1, 2) and q.point_labels.tolist() == [[1], [0]]
    r = q.concat_points(np.array([[[5, 5]], [[6, 6]]]), np.array([[0], [1]]))
    assert r.points.shape == (2, 2, 2) and r.point_labels.tolist() == [[1, 0], [0, 1]]
    assert p.points is None and q.points.shape == (2, 1, 2)  # no mutation
    with pytest.raises(MedAdaptError, match="concat_points"):
        p.concat_points([[1, 1]], [1])
    with pytest.raises(MedAdaptError, match="point_labels"):
        q.concat_points([[1, 1], [2, 2]], [1, 2])


def test_prompts_shape_validation():
    with pytest.raises(MedAdaptError, match="N x 4"):
        Prompts(boxes=[0, 0, 5, 5])
    with pytest.raises(MedAdaptError, match="x1 < x0"):
        Prompts(boxes=[[5, 0, 1, 5]])
    with pytest.raises(MedAdaptError, match="N x K x 2"):
        Prompts(points=[[1, 2]])
    with pytest.raises(MedAdaptError, match="one label per point"):
        Prompts(points=[[[1, 2]]], point_labels=[1, 1])
    with pytest.raises(MedAdaptError, match="-1"):
        Prompts(points=[[[1, 2]]], point_labels=[[3]])
    with pytest.raises(MedAdaptError, match="without points"):
        Prompts(point_labels=[[1]])
    with pytest.raises(MedAdaptError, match="disagree"):
        Prompts(boxes=[[0, 0, 1, 1]], points=np.zeros((2, 1, 2)))
    with pytest.raises(MedAdaptError, match="masks"):
        Prompts(masks=np.zeros((4, 4)))
    with pytest.raises(MedAdaptError, match="all NaN"):
        Prompts(boxes=[[np.nan, 0, 1, 1]])
    p = Prompts(points=[[[1, 2]]])
    assert p.point_labels.tolist() == [[1]] and p.point_labels.dtype == np.int64
    assert p.points.dtype == np.float32


def test_prompts_to_torch():
    p = Prompts(boxes=[[0, 0, 4, 4]], points=[[[1, 1]]], masks=np.zeros((1, 16, 16)))
    t = p.to_torch("cpu")
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (1, 4)
    coords, labels = t["points"]
    assert coords.shape == (1, 1, 2) and labels.dtype == torch.int64
    assert t["masks"].shape == (1, 1, 16, 16)
    t = Prompts(boxes=[[0, 0, 4, 4]]).to_torch()
    assert t["points"] is None and t["masks"] is None


def test_prompts_feed_sam_prompt_encoder():
    """The dict from to_torch plugs straight into segment-anything's prompt encoder, padding included."""
    pe_mod = pytest.importorskip("segment_anything.modeling.prompt_encoder")
    enc = pe_mod.PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(64, 64), mask_in_chans=4)
    m = np.stack([disc(64, 64, 20, 20, 8), np.ones((64, 64), bool)])
    p = simulate_prompts(m, np.random.default_rng(0), mode="box+points", n_pos=1, n_neg=1)
    assert p.point_labels[1].tolist() == [1, PAD_LABEL]  # full mask: no room for a negative
    with torch.no_grad():
        sparse, dense = enc(**p.to_torch("cpu"))
    assert sparse.shape == (2, 2 + 2, 32) and dense.shape == (2, 32, 16, 16)
    assert torch.isfinite(sparse).all()


def test_decode_groups_split_by_box_and_drop_padding_columns():
    nan = [np.nan] * 4
    p = Prompts(
        boxes=[[0, 0, 5, 5], nan, [1, 1, 4, 4], nan],
        points=[[[1, 1], [0, 0], [0, 0]], [[2, 2], [3, 3], [0, 0]], [[0, 0], [0, 0], [0, 0]], [[4, 4], [0, 0], [0, 0]]],
        point_labels=[[1, -1, -1], [1, 0, -1], [-1, -1, -1], [0, -1, -1]],
    )
    (boxed_idx, boxed), (free_idx, free) = p.decode_groups()
    assert boxed_idx.tolist() == [0, 2] and free_idx.tolist() == [1, 3]
    assert boxed.boxes.shape == (2, 4) and boxed.points.shape == (2, 1, 2)  # one real click column among the boxed
    assert boxed.point_labels.tolist() == [[1], [-1]]
    assert free.boxes is None and free.point_labels.tolist() == [[1, 0], [0, -1]]
    assert all(t.is_contiguous() for t in (free.to_torch()["points"][0], boxed.to_torch()["boxes"]))
    only_boxes = Prompts(boxes=[[0, 0, 5, 5]], points=[[[0, 0]]], point_labels=[[-1]]).decode_groups()
    assert len(only_boxes) == 1 and only_boxes[0][1].points is None  # no real click: no points tensor at all
    with pytest.raises(MedAdaptError, match=r"objects \[1\] have no box, no click"):
        Prompts(boxes=[[0, 0, 5, 5], nan], points=[[[1, 1]], [[0, 0]]], point_labels=[[1], [-1]]).decode_groups()


def test_backbone_decodes_a_mixed_batch_in_the_prompts_order():
    """decode_prompts answers each object as its own group's call does, in the order given."""
    import torch

    from medadapt.foundation import build_backbone

    torch.manual_seed(0)
    model = build_backbone("tiny_sam_vit")
    s = model.processor.image_size
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 3, s, s))
        p = Prompts(boxes=[[2, 3, 20, 30], [np.nan] * 4, [5, 5, 40, 44]], points=[[[9, 9]], [[30, 12]], [[6, 7]]],
                    point_labels=[[1], [1], [0]])
        low, iou = model.decode_prompts(emb, p)
        assert low.shape[0] == 3 and iou.shape[0] == 3
        for idx, group in p.decode_groups():
            sparse, dense = model.encode_prompts(**group.to_torch())
            want, _ = model.decode(emb, sparse, dense)
            assert torch.equal(low[torch.as_tensor(idx)], want.float())
