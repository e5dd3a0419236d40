"""Augmentation keeps image and label aligned; cached views multiply the decoder's training set."""

from __future__ import annotations

import numpy as np
from conftest import disc_image

from medadapt.training.augment import random_view


def test_random_view_moves_image_and_label_together():
    image, mask = disc_image(seed=1)
    label = mask.astype(np.int64) * 2  # label value 2
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(5):
        img, lab = random_view(image, label, rng, rotate_deg=20, scale=0.15, shift=0.1, gamma=0.0)
        assert img.shape == image.shape and lab.shape == label.shape
        assert set(np.unique(lab)) <= {0, 2}
        bright = img > (image.min() + image.max()) / 2  # the disc is the bright object
        inter = (bright & (lab == 2)).sum()
        assert 2 * inter / (bright.sum() + (lab == 2).sum()) > 0.9
        changed += int((lab != label).any())
    assert changed == 5  # every view actually moved the object


def test_gamma_keeps_the_intensity_range():
    image, mask = disc_image(seed=2)
    img, lab = random_view(image, mask.astype(np.int64), np.random.default_rng(3), rotate_deg=0, scale=0, shift=0)
    assert np.array_equal(lab, mask.astype(np.int64))
    assert img.min() >= image.min() - 1e-3 and img.max() <= image.max() + 1e-3
    assert not np.allclose(img, image)
