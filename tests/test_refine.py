"""Self-prompting: an automatic answer refined by box prompts drawn from itself, with the real LiteMedSAM."""

from __future__ import annotations

import numpy as np
import pytest

from medadapt import MedAdaptError
from medadapt.evaluation.metrics import binary_dice as dice
from medadapt.inference import refine_automatic
from medadapt.inference.predictor import Prediction
from medadapt.prompts import largest_component
from medadapt.prompts import mask_box as loose_box

H, W = 180, 240


def two_discs(seed: int = 0):
    """Two bright discs on a noisy background; returns (image, [mask A, mask B])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    a = (yy - 90) ** 2 + (xx - 70) ** 2 <= 35**2
    b = (yy - 90) ** 2 + (xx - 170) ** 2 <= 30**2
    image = np.where(a | b, 200.0, 30.0) + rng.normal(0, 3, (H, W))
    return image.astype(np.float32), [a, b]


def as_automatic(seg, masks: np.ndarray) -> Prediction:
    """The Prediction automatic mode would return for these masks (logits +/-10, as a mask prompt has)."""
    _, meta = seg._require_image()
    logits = seg.backbone.processor.mask_to_low_res(masks, meta)[:, 0].numpy()
    n = len(masks)
    return Prediction(masks=masks, scores=np.ones(n, np.float32), logits=logits,
                      labels=[f"class {k}" for k in range(n)], label_values=list(range(1, n + 1)))


@pytest.fixture()
def ragged(litemedsam):
    """Automatic masks with holes and a far-away speck for disc A, holes for disc B, nothing for a third class."""
    image, (a, b) = two_discs()
    rng = np.random.default_rng(1)
    holes = rng.random((H, W)) < 0.3
    auto_a = a & ~holes
    auto_a[8:12, 225:229] = True  # a speck: the box must not stretch to it
    masks = np.stack([auto_a, b & ~holes, np.zeros((H, W), bool)])
    litemedsam.set_image(image)
    return as_automatic(litemedsam, masks), (a, b)


def test_self_prompting_outlines_ragged_masks_and_drops_specks(litemedsam, ragged):
    auto, (a, b) = ragged
    auto.logits[2] = 5.0  # positive but absent from the automatic masks (it lost to the others there)
    out = refine_automatic(litemedsam, auto)
    assert out.masks.shape == (3, H, W) and out.labels == auto.labels and out.label_values == [1, 2, 3]
    assert dice(out.masks[0], a) > 0.9 and dice(out.masks[0], a) > dice(auto.masks[0], a) + 0.05
    assert dice(out.masks[1], b) > 0.9 and dice(out.masks[1], b) > dice(auto.masks[1], b) + 0.05
    assert not out.masks[0, 8:12, 225:229].any()  # the speck lay outside the box of the largest component
    assert not out.masks[2].any()  # a class the automatic answer did not find stays absent
    assert not (out.masks[0] & out.masks[1]).any()  # classes still do not overlap
    assert out.scores.shape == (3,) and out.scores[0] > 0.5 and out.scores[2] == 0
    assert not np.array_equal(out.logits[0], auto.logits[0]) and np.array_equal(out.logits[2], auto.logits[2])


def test_an_answer_that_disagrees_keeps_the_automatic_mask(litemedsam, ragged):
    auto, (a, _) = ragged
    out = refine_automatic(litemedsam, auto, min_iou=1.0)  # no box answer overlaps its component perfectly
    np.testing.assert_array_equal(out.logits, auto.logits)
    assert out.masks[0, 8:12, 225:229].sum() >= 12  # the speck stays (up to low-res rounding): nothing was replaced
    assert dice(out.masks[0], a) < 0.9  # still the ragged automatic mask, not the outlined disc


def test_refine_errors(litemedsam, ragged):
    auto, _ = ragged
    with pytest.raises(MedAdaptError, match="min_iou"):
        refine_automatic(litemedsam, auto, min_iou=1.5)
    with pytest.raises(MedAdaptError, match="margin"):
        refine_automatic(litemedsam, auto, margin=-0.1)
    with pytest.raises(MedAdaptError, match="C x H x W"):
        refine_automatic(litemedsam, Prediction(masks=auto.masks[:, :10], scores=auto.scores, logits=auto.logits))
    with pytest.raises(MedAdaptError, match="refines automatic mode"):
        litemedsam.predict(boxes=[[10, 10, 50, 50]], refine=True)


def test_largest_component_counts_diagonal_neighbours():
    m = np.zeros((10, 10), bool)
    m[0, 0] = m[1, 1] = m[2, 2] = True  # one 8-connected component of 3 pixels
    m[6:8, 6:8] = True  # 4 pixels
    np.testing.assert_array_equal(largest_component(m), np.pad(np.ones((2, 2), bool), ((6, 2), (6, 2))))
    m[3, 3] = m[4, 4] = True  # now the diagonal has 5
    assert largest_component(m)[4, 4] and not largest_component(m)[6, 6]
    single = np.zeros((5, 5), bool)
    single[2, 2] = True
    np.testing.assert_array_equal(largest_component(single), single)


def test_loose_box_has_area_and_stays_inside():
    m = np.zeros((20, 30), bool)
    m[5, 7] = True  # one pixel: still a box the decoder accepts
    x0, y0, x1, y1 = loose_box(m)
    assert x1 > x0 and y1 > y0 and (x0, y0) == (7, 5)
    m[5:15, 7:27] = True  # tight box [7, 5, 26, 14]: 19 wide, 9 high
    np.testing.assert_allclose(loose_box(m, 0.1), [5.1, 4.1, 27.9, 14.9], atol=1e-5)
    m[5:15, 27:] = True  # reaches the right edge: the loosened box stops there
    np.testing.assert_allclose(loose_box(m, 0.1), [4.8, 4.1, 29.0, 14.9], atol=1e-5)
