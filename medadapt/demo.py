"""``medadapt demo``: the main job, on real bundled medical images, in a few minutes on a CPU.

It runs on the few CC BY 4.0 images shipped in ``medadapt/assets/demo`` (see
ATTRIBUTION.md there): fetal-head ultrasound (HC18) and CT slices (AMOS,
TotalSegmentator).

1. Promptable segmentation: each structure is prompted with the tight box
   around its expert mask (labelled as such: it is not automatic segmentation).
2. Few-label fine-tuning: LiteMedSAM's decoder and learned class tokens are
   fine-tuned on 12 labelled HC18 images (4 more select the best epoch), and
   automatic (prompt-free) Dice on 8 held-aside exams is printed before and after,
   and after with self-prompting (the tuned model's masks re-prompted as boxes
   drawn from themselves; still no prompt from anyone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from .adapters import AdapterConfig, AutomaticConfig, apply
from .core.config import load_yaml
from .core.errors import MedAdaptError
from .evaluation.metrics import binary_dice
from .foundation import build_backbone
from .inference.predictor import Segmenter
from .io.imaging import load_image, load_mask
from .io.overlay import save_overlay
from .prompts.simulate import box_from_mask
from .recipes import config_from_dict, finetune


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


def demo_finetune_config(out_dir: Path, epochs: int = 20) -> dict:
    """The fine-tuning part of the demo as a config dict (the same schema as configs/<dataset>/*.yaml)."""
    root = demo_root() / "hc18"
    return {
        "backbone": "litemedsam",
        "data": {
            "root": str(root), "layout": "folder", "images": "images", "labels": "masks", "classes": [1],
            "case_pattern": r"^(\d+)_",
            "labeled": [f"{i:03d}" for i in range(12)],
            "val": [f"{i:03d}" for i in range(12, 16)],  # model selection: never the held-aside exams
            "test": [f"{i:03d}" for i in range(100, 108)],
        },
        "adapter": {"train": ["mask_decoder"]},
        "prompts": {"automatic": True, "tokens_per_class": 4, "prompted": ["box", "points"], "prompted_weight": 0.5,
                    "corrective_clicks": 0},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-4, "warmup_epochs": 1, "tensorboard": False},
        "output": str(out_dir), "name": "finetune",
    }


#: a file in the demo's run folder: the demo replaces only a folder that holds it
DEMO_MARKER = ".medadapt-demo"


def _written_by_demo(run: Path) -> bool:
    """The folder holds the demo's marker, or (written before the marker) a config that trains on the bundled images."""
    if (run / DEMO_MARKER).is_file():
        return True
    try:
        data = load_yaml((run / "config.yaml").read_text()).get("data") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return data.get("root") == str(demo_root() / "hc18") and data.get("labeled") == [f"{i:03d}" for i in range(12)]


def run_finetune_demo(out_dir: str | Path = "medadapt-demo", epochs: int = 20, device: str | None = None) -> dict:
    """Fine-tune on the bundled HC18 images; automatic Dice on held-aside exams before and after."""
    import shutil

    out = Path(out_dir)
    run = out / "finetune"
    cfg = config_from_dict(demo_finetune_config(out, epochs))  # checked before the last run is replaced
    if device:
        cfg.train.device = device
    if run.exists():  # the demo starts fresh, but removes only a run folder it wrote itself
        if not _written_by_demo(run):
            raise MedAdaptError(f"{run} exists and was not written by the demo: it is left alone; give the demo "
                                "another --out folder")
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / DEMO_MARKER).write_text("written by medadapt demo; the demo replaces this folder when it runs again\n")
    held = sorted((demo_root() / "hc18" / "images").glob("1*_HC.png"))
    gts = [load_mask(demo_root() / "hc18" / "masks" / p.name) > 0 for p in held]
    images = [load_image(p) for p in held]

    def automatic_dice(seg: Segmenter, refine: tuple[bool, ...] = (False,)) -> list[list[float]]:
        """Dice per held-aside image for each refine setting, encoding each image once."""
        scores: list[list[float]] = [[] for _ in refine]
        for img, gt in zip(images, gts):
            seg.set_image(img)
            for row, r in zip(scores, refine):
                row.append(binary_dice(seg.predict(refine=r).masks[0], gt))
        return scores

    untrained, _ = apply(build_backbone("litemedsam"), AdapterConfig(
        automatic=AutomaticConfig(["fetal head"], [1], cfg.prompts.tokens_per_class)))
    (before,) = automatic_dice(Segmenter(untrained, device=device))
    print(f"\nFine-tuning LiteMedSAM (decoder + class tokens) on 12 labelled HC18 images "
          f"(4 more to choose the epoch on), {epochs} epochs ...")
    finetune(cfg, log=lambda msg: None)
    tuned = Segmenter.from_pretrained("litemedsam", adapter=run, device=device)
    # self-prompted: still no prompts from anyone, boxes drawn from the tuned model's own masks
    after, refined = automatic_dice(tuned, refine=(False, True))
    for p, img in zip(held, images):
        tuned.set_image(img)
        save_overlay(out / f"{p.stem}_automatic.png", img, tuned.predict().masks)
    print("\nAutomatic segmentation (no prompts) of 8 held-aside HC18 exams; self-prompted: the tuned model's")
    print("masks refined by boxes drawn from themselves (Segmenter.predict(refine=True))")
    print(f"{'image':<12} {'before':>8} {'after':>8} {'self-prompted':>14}")
    for p, b, a, r in zip(held, before, after, refined):
        print(f"{p.name:<12} {b:>8.3f} {a:>8.3f} {r:>14.3f}")
    print(f"{'mean':<12} {np.mean(before):>8.3f} {np.mean(after):>8.3f} {np.mean(refined):>14.3f}")
    print(f"run folder: {run.resolve()} (adapter/, log.csv, metrics.json, val_overlays.png)")
    return {"before": before, "after": after, "self_prompted": refined, "run": str(run)}


def run_demo(out_dir: str | Path = "medadapt-demo", device: str | None = None, model: str = "litemedsam",
             finetune: bool = True, epochs: int = 20) -> list[dict]:
    """Box-prompted segmentation of every bundled structure, then the fine-tuning demo."""
    if finetune:  # a bad setting is refused before anything runs or is replaced
        config_from_dict(demo_finetune_config(Path(out_dir), epochs))
    rows = run_prompted_demo(out_dir, device=device, model=model)
    if finetune:
        run_finetune_demo(out_dir, epochs=epochs, device=device)
    return rows


def run_prompted_demo(out_dir: str | Path = "medadapt-demo", device: str | None = None, model: str = "litemedsam") -> list[dict]:
    """Segment every bundled structure from its box, print Dice, write overlays; return the rows."""
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
        boxes = [box_from_mask(g).tolist() for g in gts]
        seg.set_image(image)
        pred = seg.predict(boxes=boxes)  # all structures of the image in one decoder batch
        for name, gt, m in zip(names, gts, pred.masks):
            rows.append({"image": case.image.name, "structure": name, "dice": binary_dice(m, gt)})
        save_overlay(out / f"{case.image.stem}_overlay.png", image, pred.masks, boxes=boxes)
    width = max(len(r["image"]) for r in rows)
    print("\nBox-prompted segmentation (prompts: tight boxes around the expert masks)\n")
    print(f"{'image':<{width}}  {'structure':<24} Dice")
    for r in rows:
        print(f"{r['image']:<{width}}  {r['structure']:<24} {r['dice']:.3f}")
    print(f"\nmean Dice over {len(rows)} structures: {np.mean([r['dice'] for r in rows]):.3f}")
    print(f"overlays written to {out.resolve()}  ({time.perf_counter() - t0:.1f} s)")
    return rows


__all__ = ["run_demo", "run_prompted_demo", "run_finetune_demo", "demo_finetune_config", "demo_cases", "demo_root"]
