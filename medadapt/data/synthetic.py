"""A synthetic task with a known answer and a domain shift: checks that a training mechanism works.

    from medadapt.data.synthetic import shifted_ellipses, shifted_ellipses_config
    root = shifted_ellipses("runs/synthetic")                  # 40 images + masks, folder layout
    raw = shifted_ellipses_config(root, "runs/synthetic", seed=0, semi_supervised=True)
    finetune(config_from_dict(raw))

The first ``n_labeled`` images come from one "scanner" (bright ellipses on a
dark, clean ground), the rest from another (dimmer ellipses on a brighter,
noisier ground). A model fitted to the labelled images alone transfers
imperfectly to the shifted ones; unlabelled shifted images can close the gap.
That makes it the smallest task on which the semi-supervised loop can be
seen to help, cheap enough for a test (``tests/test_ssl.py``) and a benchmark
over seeds and thread counts (``benchmarks/ssl_synthetic.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def shifted_ellipses(root: str | os.PathLike, n_labeled: int = 2, n: int = 40, size: int = 96, seed: int = 0) -> Path:
    """Write ``images/NNN.png`` and 0/255 ``masks/NNN.png``; the first ``n_labeled`` from the source domain."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        a, b = rng.uniform(10, 26), rng.uniform(8, 20)
        cy, cx = rng.uniform(b + 4, size - b - 4), rng.uniform(a + 4, size - a - 4)
        th = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
        m = u**2 + v**2 <= 1
        if i < n_labeled:
            img = np.where(m, 210, 40) + rng.normal(0, 4, (size, size))
        else:
            fg, bg = rng.uniform(120, 170), rng.uniform(60, 90)
            img = np.where(m, fg, bg) + rng.normal(0, rng.uniform(8, 16), (size, size))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"{i:03d}.png")
    return root


def shifted_ellipses_config(
    root: str | os.PathLike, out: str | os.PathLike, seed: int = 0, semi_supervised: bool = True,
    n_labeled: int = 2, n_val: int = 8, n: int = 40, epochs: int = 8,
) -> dict[str, Any]:
    """The fine-tuning config of the protocol: decoder and class tokens on cached embeddings, automatic mode.

    Both arms share labels, schedule and seed; the semi-supervised arm adds
    the images after the validation ones as unlabelled data, 2 supervised
    warm-up epochs, an EMA teacher and pseudo-labels replaced by the frozen
    pretrained decoder's answer to a loosened box around each automatic mask.
    """
    ids = [f"{i:03d}" for i in range(n)]
    val = ids[n_labeled : n_labeled + n_val]
    raw: dict[str, Any] = {
        "backbone": "litemedsam",
        "data": {"root": str(root), "layout": "folder", "classes": [1], "labeled": ids[:n_labeled], "val": val},
        "adapter": {"train": ["mask_decoder"]},
        "prompts": {"automatic": True, "prompted": ["box"], "corrective_clicks": 0, "prompted_weight": 0.5},
        "train": {"epochs": epochs, "batch_size": 2, "lr": 3e-4, "tensorboard": False, "warmup_epochs": 1,
                  "cache_views": 4, "cache_dir": str(Path(out) / "cache"), "seed": seed},
        "output": str(Path(out) / "runs"),
        "name": f"{'ssl' if semi_supervised else 'sup'}_s{seed}",
    }
    if semi_supervised:
        raw["data"]["unlabeled"] = ids[n_labeled + n_val :]
        raw["ssl"] = {"unlabeled_batch_size": 4, "start_epoch": 2, "rampup_epochs": 1, "threshold": 0.9,
                      "ema_decay": 0.9, "refine": "replace", "refine_decoder": "pretrained", "refine_margin": 0.05}
    return raw


__all__ = ["shifted_ellipses", "shifted_ellipses_config"]
