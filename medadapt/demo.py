"""``medadapt demo``: promptable segmentation of real, bundled medical images.

It runs on the few CC BY 4.0 images shipped in ``medadapt/assets/demo`` (see
ATTRIBUTION.md there): fetal-head ultrasound (HC18) and CT slices (AMOS,
TotalSegmentator). Each structure is prompted with the tight box around its
expert mask: this measures how well the model follows a box, and is labelled
as such; it is not automatic segmentation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .predictor import Segmenter


@dataclass
class DemoCase:
    image: Path
    masks: dict[str, Path]  # structure name -> mask file


def demo_root() -> Path:
    """Folder of the bundled demo data."""
    return Path(str(resources.files("medadapt") / "assets" / "demo"))


def demo_cases(root: Path | None = None) -> list[DemoCase]:
    """The bundled held-aside HC18 images (exams 100-107) and the CT slices."""
    root = root or demo_root()
    cases = []
    for img in sorted((root / "hc18" / "images").glob("1*_HC.png")):
        cases.append(DemoCase(img, {"fetal head": root / "hc18" / "masks" / img.name}))
    for img in sorted((root / "ct" / "images").glob("*.png")):
        masks = {
            m.stem[len(img.stem) + 1:].replace("_", " "): m
            for m in sorted((root / "ct" / "masks").glob(f"{img.stem}_*.png"))
        }
        cases.append(DemoCase(img, masks))
    return cases


def box_of(mask: np.ndarray) -> list[float]:
    """Tight [x0, y0, x1, y1] box of a binary mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    pred, target = pred.astype(bool), target.astype(bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def run_demo(out_dir: str | Path = "medadapt-demo", device: str | None = None, model: str = "litemedsam") -> list[dict]:
    """Segment every bundled structure from its box, print Dice, write overlays; return the rows."""
    from .imaging import load_image, load_mask, save_overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seg = Segmenter.from_pretrained(model, device=device)
    print(f"backbone {model} on {seg.device}: {seg.backbone.info.weights}")
    rows = []
    for case in demo_cases():
        image = load_image(case.image)
        names = list(case.masks)
        gts = [load_mask(case.masks[n]) > 0 for n in names]
        boxes = [box_of(g) for g in gts]
        seg.set_image(image)
        pred = seg.predict(boxes=boxes)  # all structures of the image in one decoder batch
        for name, gt, m in zip(names, gts, pred.masks):
            rows.append({"image": case.image.name, "structure": name, "dice": dice(m, gt)})
        save_overlay(out / f"{case.image.stem}_overlay.png", image, pred.masks, boxes=boxes)
    width = max(len(r["image"]) for r in rows)
    print("\nBox-prompted segmentation (prompts: tight boxes around the expert masks)\n")
    print(f"{'image':<{width}}  {'structure':<24} Dice")
    for r in rows:
        print(f"{r['image']:<{width}}  {r['structure']:<24} {r['dice']:.3f}")
    print(f"\nmean Dice over {len(rows)} structures: {np.mean([r['dice'] for r in rows]):.3f}")
    print(f"overlays written to {out.resolve()}  ({time.perf_counter() - t0:.1f} s)")
    return rows


__all__ = ["run_demo", "demo_cases", "demo_root", "box_of", "dice"]
