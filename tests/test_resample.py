"""Label maps resampled onto the grid their image is resized to: centred, so targets sit on the image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medadapt.core.resample import resize_labels, resize_weights
from medadapt.student.network import to_input, to_target


def _ring(h: int, w: int, r: float, t: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - h / 2 + 3.3, xx - w / 2 + 1.7)
    lab = np.zeros((h, w), np.int64)
    lab[d < r] = 2
    lab[(d >= r) & (d < r + t)] = 1
    return lab


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_a_label_map_lands_where_its_image_does():
    """A 4-pixel bar in a 512-pixel image, shrunk 2x: the label's centre stays on the image's (plain nearest puts
    it half a pixel to the right); a myocardium-like ring survives the round trip back."""
    image = np.zeros((512, 512), np.float32)
    image[200:300, 101:105] = 1.0
    x = to_input(image[None], 256)[0].numpy()
    y = to_target((image > 0).astype(np.int64), 256).numpy()
    cols = np.arange(256)
    image_col = (x.sum(0) * cols).sum() / x.sum()
    assert abs((y.sum(0) * cols).sum() / y.sum() - image_col) < 0.05
    for h, w, r, t in ((232, 256, 30, 6), (800, 540, 90, 8)):
        lab = _ring(h, w, r, t)
        oh = F.one_hot(to_target(lab, 256), 3).permute(2, 0, 1).float()[None]
        back = F.interpolate(oh, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        assert _dice(back == 1, lab == 1) > 0.94  # plain nearest: 0.95 and 0.86


def test_labels_keep_their_values_and_weights_their_range():
    lab = torch.zeros(40, 30, dtype=torch.long)
    lab[5:20, 5:20] = 7
    lab[22:35, 10:25] = 300
    out = resize_labels(lab, (20, 15))
    assert set(out.unique().tolist()) == {0, 7, 300} and out.shape == (20, 15)
    assert torch.equal(resize_labels(lab, (40, 30)), lab)
    w = resize_weights(torch.rand(40, 30), (17, 23))
    assert w.shape == (17, 23) and float(w.min()) >= 0 and float(w.max()) <= 1


def test_decoder_targets_sit_on_the_image_and_class_strokes_beat_background_strokes():
    """SAM's 1024/256 frame shrinks a 1024-pixel slice 4x: the target grid must hold the mask where the
    processor's own mapping (mask_to_low_res) puts it, and a class stroke keeps its cells beside a background
    stroke whichever of the two nearest sampling hits."""
    from medadapt.foundation import build_backbone
    from medadapt.training.samples import to_model_frame

    proc = build_backbone("tiny_litemedsam").processor
    _, meta = proc.preprocess(np.zeros((1024, 1024), np.float32))
    disc = _ring(1024, 1024, 90, 0) == 2
    target = to_model_frame(disc.astype(np.int64), meta, proc.image_size, proc.mask_size).numpy() == 1
    low = (proc.mask_to_low_res(disc, meta)[0, 0] > 0).numpy()
    assert _dice(target, low) > 0.995
    for background_row, class_row in ((203, 202), (200, 201)):
        strokes = np.full((1024, 1024), -1)
        strokes[class_row, 100:900] = 2
        strokes[background_row, 100:900] = 0
        grid = to_model_frame(strokes, meta, proc.image_size, proc.mask_size)
        assert int((grid == 2).sum()) == 200
