"""Geometric strong views: the 8 flips and turns move images, labels, boxes and points together."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medadapt.ssl import dihedral, dihedral_boxes, dihedral_each, dihedral_points


def _blob(size: int = 32) -> torch.Tensor:
    """An asymmetric mask (an L shape), so that every view differs from every other."""
    m = torch.zeros(size, size, dtype=torch.bool)
    m[4:20, 6:10] = True
    m[16:20, 6:26] = True
    return m


def _box(mask: torch.Tensor) -> torch.Tensor:
    """Continuous [x0, y0, x1, y1] corners of a mask: pixel i covers [i, i + 1)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def test_the_eight_views_are_distinct_and_view_0_is_the_identity():
    m = _blob()
    views = [dihedral(m, k) for k in range(8)]
    assert torch.equal(views[0], m)
    assert len({v.numpy().tobytes() for v in views}) == 8
    with pytest.raises(ValueError, match="0..7"):
        dihedral(m, 8)


@pytest.mark.parametrize("k", range(8))
def test_boxes_and_points_move_as_the_pixels_do(k):
    m = _blob()
    turned = dihedral(m, k)
    assert torch.equal(dihedral_boxes(_box(m), k, 32), _box(turned))
    ys, xs = torch.nonzero(m, as_tuple=True)
    centres = torch.stack([xs, ys], dim=-1).float() + 0.5
    moved = dihedral_points(centres, k, 32) - 0.5
    assert torch.equal(turned[moved[:, 1].long(), moved[:, 0].long()], torch.ones(len(xs), dtype=torch.bool))


@pytest.mark.parametrize("k", range(8))
def test_every_grid_of_the_frame_moves_alike(k):
    """Image (S = 32) and decoder grid (m = 8) cover one square: turning then pooling = pooling then turning."""
    image = _blob().float()[None, None]
    coarse = F.max_pool2d(image, 4)
    assert torch.equal(F.max_pool2d(dihedral(image, k), 4), dihedral(coarse, k))


def test_each_item_of_a_batch_takes_its_own_view():
    x = torch.stack([_blob(), _blob()]).long()
    out = dihedral_each(x, [0, 5])
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], dihedral(x[1], 5))
    with pytest.raises(ValueError, match="one view per item"):
        dihedral_each(x, [1])
