"""Shared fixtures: synthetic images whose right answer is known, and small real models."""

from __future__ import annotations

import numpy as np
import pytest


def disc_image(h: int = 180, w: int = 240, center=(90, 120), radius=40, bright=200.0, dark=30.0, seed=0):
    """A bright disc on a darker, slightly noisy background; returns (image, mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2
    image = np.where(mask, bright, dark) + rng.normal(0, 3, (h, w))
    return image.astype(np.float32), mask


@pytest.fixture(scope="session")
def disc():
    return disc_image()


@pytest.fixture(scope="session")
def litemedsam():
    """The real pretrained LiteMedSAM (bundled weights), shared across tests."""
    from medadapt import Segmenter

    return Segmenter.from_pretrained("litemedsam", device="cpu")


@pytest.fixture()
def tiny_sam():
    from medadapt import Segmenter

    return Segmenter.from_pretrained("tiny_sam_vit", device="cpu")
