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


def two_class_dataset(root, n: int = 10, size: int = 64, seed: int = 0):
    """A 2-D ``folder`` dataset of ``n`` cases ``000``.. : a bright disc (label 1) and a darker
    square (label 2) at random places on a noisy background; masks hold the values 0/1/2 and
    ``dataset.json`` names them ``disc`` and ``square``."""
    import json

    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "disc", "2": "square"}}))
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        labels = np.zeros((size, size), np.uint8)
        cy, cx = rng.integers(12, size - 12, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2] = 1
        y0, x0 = rng.integers(2, size - 14, 2)
        labels[y0 : y0 + 12, x0 : x0 + 12][labels[y0 : y0 + 12, x0 : x0 + 12] == 0] = 2
        image = np.choose(labels, [60, 200, 130]) + rng.normal(0, 8, (size, size))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(labels).save(root / "masks" / f"{i:03d}.png")
    return root


def tiny_run(root, out, *, labeled, val, test=None, classes=("disc", "square"), data_extra=None):
    """One epoch of the tiny random SAM on a folder dataset (seconds on a CPU); returns the run folder.
    ``data_extra``: more ``data:`` settings (e.g. ``{"window": "abdomen"}``)."""
    from medadapt.recipes import config_from_dict, finetune

    data = {"root": str(root), "layout": "folder", "classes": list(classes), "labeled": list(labeled),
            "val": list(val), **(data_extra or {})}
    if test is not None:
        data["test"] = list(test)
    cfg = {
        "backbone": "tiny_sam_vit", "data": data, "adapter": {"train": ["mask_decoder"]},
        "prompts": {"automatic": True, "prompted": ["box"]},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "tensorboard": False},
        "output": str(out), "name": "run",
    }
    return finetune(config_from_dict(cfg), log=lambda m: None)


def with_changes(raw: dict, changes: dict) -> dict:
    """A recipe dict with ``section__key=value`` (or ``section=value``) changes applied in place."""
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[section] = value
    return raw


@pytest.fixture(scope="session")
def disc():
    return disc_image()


@pytest.fixture(scope="session")
def litemedsam():
    """The real pretrained LiteMedSAM (bundled weights), shared across tests."""
    from medadapt import Segmenter

    return Segmenter.from_pretrained("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def litemedsam_cache(tmp_path_factory):
    """One on-disk embedding cache (``train.cache_dir``) for the tests that fine-tune LiteMedSAM on the same
    synthetic images: it is keyed by content and model, so each image is encoded once in the session."""
    return tmp_path_factory.mktemp("litemedsam_cache")


@pytest.fixture()
def tiny_sam():
    from medadapt import Segmenter

    return Segmenter.from_pretrained("tiny_sam_vit", device="cpu")
