"""Scribbles as prompts: Dice of a simulated user's strokes, as clicks and as a dense mask prompt.

    python benchmarks/scribble_prompts.py [--draws 3]

On the objects bundled in ``medadapt/assets/demo`` (HC18 fetal heads and CT structures, CC BY 4.0; no other
data needed), frozen LiteMedSAM. For each object, ``--draws`` seeded :func:`medadapt.prompts.simulate_scribbles`
draws (one positive stroke along the object's middle, one negative stroke around it) are answered four ways:

* ``clicks``: ``Segmenter.predict(scribbles=...)``, the default: 5 clicks along each stroke;
* ``clicks + dense``: the same clicks plus the strokes as a dense mask prompt
  (``scribble_prompts(..., mask=True)``, passed as ``mask_input``);
* ``box``: the object's box with a 10% margin, no strokes (the prompt LiteMedSAM was trained on);
* ``box + clicks``: that box with the stroke clicks.

Mean Dice per object kind and overall go to ``benchmarks/results/demo/scribble_prompts/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402

WAYS = ("clicks", "clicks + dense", "box", "box + clicks")


def objects(root: Path) -> list[tuple[str, Path, Path]]:
    """(kind, image, mask) of every bundled object: ``fetal head`` or the CT structure's name."""
    out = [("fetal head", img, root / "hc18" / "masks" / img.name) for img in sorted((root / "hc18" / "images").glob("*.png"))]
    for img in sorted((root / "ct" / "images").glob("*.png")):
        for m in sorted((root / "ct" / "masks").glob(f"{img.stem}_*.png")):
            out.append((m.stem[len(img.stem) + 1 :].replace("_", " "), img, m))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args()

    from medadapt.demo import demo_root
    from medadapt.evaluation.metrics import binary_dice
    from medadapt.foundation import build_backbone
    from medadapt.inference import Segmenter
    from medadapt.io.imaging import load_image, load_mask
    from medadapt.prompts.regions import mask_box
    from medadapt.prompts.scribbles import scribble_prompts, simulate_scribbles

    seg = Segmenter(build_backbone("litemedsam"), device="cpu")
    proc = seg.backbone.processor
    rows = []
    start = time.perf_counter()
    for kind, image_path, mask_path in objects(demo_root()):
        truth = load_mask(mask_path) > 0
        seg.set_image(load_image(image_path))
        box = [float(v) for v in mask_box(truth, margin=0.1)]
        scores = {w: [] for w in WAYS}
        for draw in range(args.draws):
            strokes = simulate_scribbles(truth, np.random.default_rng(draw))
            dense = scribble_prompts(strokes, truth.shape, mask=True, mask_size=proc.mask_size)
            answers = {
                "clicks": seg.predict(scribbles=strokes),
                "clicks + dense": seg.predict(points=dense.points[0], point_labels=dense.point_labels[0],
                                              mask_input=dense.masks[0]),
                "box": seg.predict(boxes=[box]),
                "box + clicks": seg.predict(boxes=[box], scribbles=strokes),
            }
            for way, pred in answers.items():
                scores[way].append(binary_dice(pred.masks[0], truth))
        rows.append({"kind": kind, "image": image_path.name, **{w: float(np.mean(v)) for w, v in scores.items()}})
        print(f"{kind:28s} {image_path.name:22s} " + " ".join(f"{w} {rows[-1][w]:.3f}" for w in WAYS), flush=True)
    seconds = time.perf_counter() - start

    def mean(rs, way):
        return float(np.mean([r[way] for r in rs]))

    heads = [r for r in rows if r["kind"] == "fetal head"]
    ct = [r for r in rows if r["kind"] != "fetal head"]
    groups = [("all", rows), ("fetal heads", heads), ("CT structures", ct)]
    lines = [
        f"Frozen LiteMedSAM on the {len(rows)} objects bundled in `medadapt/assets/demo` ({len(heads)} HC18 fetal "
        f"heads, {len(ct)} CT structures), {args.draws} simulated scribble draws per object (one positive stroke "
        "along its middle, one negative stroke around it; 5 clicks per stroke). Mean Dice.", "",
        "| objects | n | " + " | ".join(WAYS) + " |", "|---|---|" + "---|" * len(WAYS),
    ]
    for name, rs in groups:
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(f"{mean(rs, w):.3f}" for w in WAYS) + " |")
    lines += ["", "Per CT structure:", "", "| structure | image | " + " | ".join(WAYS) + " |",
              "|---|---|" + "---|" * len(WAYS)]
    for r in ct:
        lines.append(f"| {r['kind']} | {r['image']} | " + " | ".join(f"{r[w]:.3f}" for w in WAYS) + " |")
    lines += ["", f"Wall time: {seconds:.0f} s."]
    payload = {"draws": args.draws, "rows": rows, "seconds": seconds,
               "summary": {name: {w: mean(rs, w) for w in WAYS} for name, rs in groups if rs}}
    write_result("demo", "scribble_prompts", payload, "\n".join(lines) + "\n",
                 title="Scribbles as prompts: clicks along the strokes, and the strokes as a dense mask prompt")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
