"""How good are box-refined pseudo-labels? A run's automatic masks, re-prompted as boxes with margins.

    .venv/bin/python benchmarks/refine_boxes.py runs/hc18_10labeled [--exams 100-129] [--margins 0 0.05 0.1]
        [--result DATASET/EXPERIMENT]

For each validation image of HC18: the run's automatic mask, then the frozen
pretrained LiteMedSAM's answer to a box around that mask (all its pixels, or
its largest connected component: ``ssl.refine_box``), loosened by each
margin (a share of the box's width / height per side; ``ssl.refine_margin``).
This is the refinement step of the semi-supervised loop's ``refine: replace``
measured in isolation, on labelled images: it says which margin gives the
best pseudo-labels before any training run is spent on it. The ground-truth
box is the ceiling of box refinement. Written to
``benchmarks/results/hc18/box_refinement_<labels>/`` (run ``hc18_10labeled`` ->
``hc18/box_refinement_10labeled``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import add_run_arguments, hc18_images, parse_result, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: hc18/box_refinement_<labels>)")
    args = ap.parse_args(argv)

    import torch

    from medadapt import Segmenter
    from medadapt.evaluation.metrics import binary_dice
    from medadapt.io.imaging import load_image, load_mask
    from medadapt.prompts import box_from_mask, pad_boxes
    from medadapt.ssl import boxes_from_labels

    if args.threads:
        torch.set_num_threads(args.threads)
    root, files = hc18_images(args.data_root, args.exams)
    auto = Segmenter.from_pretrained("litemedsam", adapter=args.run)
    pre = Segmenter.from_pretrained("litemedsam")
    kinds = {"all its pixels": False, "its largest component": True}
    rows: dict[str, list[float]] = {"automatic mask": [], "ground-truth box": []}
    rows.update({f"box around {k}, margin {m:g}": [] for k in kinds for m in args.margins})
    for f in files:
        img, gt = load_image(f), load_mask(root / "masks" / f.name) > 0
        auto.set_image(img)
        pre.set_image(img)
        m = auto.predict().masks[0]
        rows["automatic mask"].append(binary_dice(m, gt))
        rows["ground-truth box"].append(binary_dice(pre.predict(boxes=[box_from_mask(gt)]).masks[0], gt))
        if not m.any():  # no box to draw: every refinement scores 0
            for key in rows:
                if key.startswith("box around"):
                    rows[key].append(0.0)
            continue
        for kind, largest in kinds.items():
            box, _ = boxes_from_labels(torch.from_numpy(m)[None].long(), 1, largest=largest)  # 1 x 1 x 4
            boxes = torch.cat([pad_boxes(box[0], mg, img.shape[:2]) for mg in args.margins]).tolist()
            for mg, mm in zip(args.margins, pre.predict(boxes=boxes).masks):
                rows[f"box around {kind}, margin {mg:g}"].append(binary_dice(mm, gt))
    summary = {k: float(np.mean(v)) for k, v in rows.items()}
    md = (f"HC18 exams {args.exams} ({len(files)} images); automatic masks of `{Path(args.run).name}`; boxes answered "
          "by the frozen pretrained LiteMedSAM. Mean Dice per image.\n\n| pseudo-label | Dice |\n|---|---|\n"
          + "\n".join(f"| {k} | {v:.3f} |" for k, v in summary.items()) + "\n")
    run_name = Path(args.run).name.removeprefix("hc18_")
    dataset, experiment = parse_result(args.result) if args.result else ("hc18", f"box_refinement_{run_name}")
    path = write_result(dataset, experiment, {"summary": summary, "per_image": rows,
                                              "images": [f.name for f in files]}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
