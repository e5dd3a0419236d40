"""One place for coordinate and intensity transforms: check them against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medadapt import MedAdaptError
from medadapt.foundation.processor import SamProcessor, check_boxes, check_points


def test_longest_side_resize_and_zero_padding():
    proc = SamProcessor(256, normalization="minmax")
    image = np.linspace(0, 1000, 200 * 400, dtype=np.float32).reshape(200, 400)
    x, meta = proc.preprocess(image)
    assert x.shape == (1, 3, 256, 256)
    assert meta.original_size == (200, 400) and meta.input_size == (128, 256)
    assert torch.all(x[..., 128:, :] == 0)  # padding at the bottom
    valid = x[..., :128, :]
    assert valid.min() == 0 and abs(valid.max().item() - 1) < 1e-6  # min-max to [0, 1]


def test_stretch_policy_for_medsam():
    proc = SamProcessor(1024, normalization="minmax", keep_aspect=False)
    _, meta = proc.preprocess(np.random.rand(300, 500).astype(np.float32))
    assert meta.input_size == (1024, 1024)
    box = proc.transform_boxes(np.array([[50, 30, 250, 150]]), meta)
    assert torch.allclose(box, torch.tensor([[50 * 1024 / 500, 30 * 1024 / 300, 250 * 1024 / 500, 150 * 1024 / 300]]))


def test_imagenet_normalisation_rescales_16_bit_but_not_8_bit():
    proc = SamProcessor(64, normalization="imagenet")
    img8 = np.full((64, 64), 100, np.float32)
    img8[0, 0] = 255
    x8, _ = proc.preprocess(img8)
    assert abs(x8[0, 0, 10, 10].item() - (100 - 123.675) / 58.395) < 1e-3
    img16 = img8 * 200  # 20000..51000: min-max rescaled to 0..255 first, so 20000 -> 0
    img16[1, 1] = 0
    x16, _ = proc.preprocess(img16)
    assert abs(x16[0, 0, 10, 10].item() - (20000 / 51000 * 255 - 123.675) / 58.395) < 0.05


def test_boxes_and_points_scale_by_the_resize_factor():
    proc = SamProcessor(256)
    _, meta = proc.preprocess(np.random.rand(512, 384).astype(np.float32))
    assert meta.input_size == (256, 192)
    b = proc.transform_boxes(np.array([[0, 0, 384, 512]], np.float32), meta)
    assert torch.allclose(b, torch.tensor([[0.0, 0.0, 192.0, 256.0]]))
    p = proc.transform_points(np.array([[[100, 200]]], np.float32), meta)
    assert torch.allclose(p, torch.tensor([[[50.0, 100.0]]]))


def test_postprocess_crops_padding_before_resizing_back():
    proc = SamProcessor(256)
    _, meta = proc.preprocess(np.random.rand(100, 200).astype(np.float32))  # input 128 x 256
    low = -torch.ones(1, 256, 256)
    low[:, :128, :128] = 1.0  # left half of the valid region; the padding below stays negative
    full = proc.postprocess_logits(low, meta)
    assert full.shape == (1, 100, 200)
    mask = (full > 0)[0].numpy()
    assert mask[:, :95].all() and not mask[:, 105:].any()


def test_mask_prompt_from_a_full_size_mask():
    proc = SamProcessor(256)
    _, meta = proc.preprocess(np.random.rand(100, 200).astype(np.float32))
    m = np.zeros((100, 200), bool)
    m[:, :100] = True
    low = proc.mask_to_low_res(m, meta)
    assert low.shape == (1, 1, 256, 256)
    assert low[0, 0, 60, 60] > 0 and low[0, 0, 60, 200] < 0 and low[0, 0, 200, 60] < 0


def test_a_thin_structure_in_a_mask_prompt_does_not_vanish_and_a_blob_keeps_its_edge():
    """A one-pixel line in a 512-pixel image covers half a cell of the 256 grid: it stays in the prompt, as the
    cells it touches; a blob's cells are those it covers mostly, as before."""
    proc = SamProcessor(1024)
    _, meta = proc.preprocess(np.random.rand(512, 512).astype(np.float32))
    line = np.zeros((512, 512), bool)
    line[100:400, 201] = True  # a vessel one pixel wide
    blob = np.zeros((512, 512), bool)
    blob[300:420, 300:421] = True
    low = proc.mask_to_low_res(np.stack([line, blob, line | blob]), meta)[:, 0] > 0
    rows, cols = np.nonzero(low[0].numpy())
    assert set(range(50, 200)) <= set(rows) and set(cols) <= {100, 101}  # every cell row the line crosses, near it
    assert 150 <= low[0].sum() <= 2 * 152
    assert low[1].sum() == 60 * 60 and not low[1, :, 210].any()  # 120 x 121 pixels: the last half cell stays out
    assert (low[2] == (low[0] | low[1])).all()  # apart from the blob, the line is still its own part


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([[10, 10, 10, 50]], "zero or negative area"),
        ([[500, 10, 600, 50]], "outside the image"),
        ([[1, 2, 3]], "N x 4"),
        ([[0, 0, float("nan"), 4]], "NaN"),
    ],
)
def test_bad_boxes_are_explained(boxes, message):
    with pytest.raises(MedAdaptError, match=message):
        check_boxes(boxes, (100, 200))


def test_box_partly_outside_is_clipped():
    b = check_boxes([[-5, -5, 250, 50]], (100, 200))
    assert b.tolist() == [[0, 0, 199, 50]]


def test_bad_points_are_explained():
    with pytest.raises(MedAdaptError, match="1 \\(foreground\\) or 0 \\(background\\)"):
        check_points([[10, 10]], [2], (100, 100))
    with pytest.raises(MedAdaptError, match="outside the image"):
        check_points([[150, 10]], [1], (100, 100))
    with pytest.raises(MedAdaptError, match="one label per point"):
        check_points([[10, 10], [20, 20]], [1], (100, 100))
