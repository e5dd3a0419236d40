"""ACDC-3 trained from scribbles against full masks on the same slices: the comparison of two finished runs.

    python benchmarks/finetune_benchmark.py configs/acdc/3labeled_scribbles.yaml --modes automatic
    python benchmarks/finetune_benchmark.py configs/acdc/3labeled.yaml name=acdc_3labeled_masks \\
        --modes automatic --result acdc/finetune_3labeled_masks
    python benchmarks/scribbles_vs_masks.py

Reads the two results folders those commands write (the same recipe, the same code; only
``data.scribbles`` differs) and writes ``benchmarks/results/acdc/scribbles_vs_masks/``: the validation Dice
of the last epoch (no choice made on the scored split) and of the best epoch on the same split (labelled
as such), per class, and the share of the full-mask figure that scribbles reach.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import result_dir, write_result  # noqa: E402

CLASSES = ("right ventricle", "myocardium", "left ventricle")
RUNS = {"scribbles": "finetune_3labeled_scribbles", "full masks": "finetune_3labeled_masks"}


def read(experiment: str) -> dict:
    folder = result_dir("acdc", experiment)
    rows = list(csv.DictReader((folder / "log.csv").open()))
    last = rows[-1]
    best = json.loads((folder / "results.json").read_text())["summary"]
    return {
        "last": {c: float(last[f"val_{c}"]) for c in CLASSES} | {"mean": float(last["val_dice"])},
        "best": {r["class"]: r["dice_mean"] for r in best if r["mode"] == "automatic"},
        "best_epoch": 1 + max(range(len(rows)), key=lambda i: float(rows[i]["val_dice"])),
        "epochs": len(rows),
    }


def main() -> None:
    runs = {name: read(exp) for name, exp in RUNS.items()}
    s, m = runs["scribbles"], runs["full masks"]
    lines = [
        "ACDC, 3 labelled patients (67 slices with a target class, each also seen as 4 cached augmented views), "
        "LiteMedSAM decoder and class tokens on cached embeddings, 8 epochs, the recipe of "
        "`configs/acdc/3labeled.yaml`. Scribbles: strokes simulated from the same slices' masks "
        "(`configs/acdc/3labeled_scribbles.yaml`: one stroke along each structure, one around it, two along the "
        "background; about 3.5% of the pixels), trained with the partial loss alone (the `scribble_loss` "
        "defaults). Validation: the 10 val patients, 20 volumes, mean 3-D Dice per volume, automatic mode.", "",
        "| labels | epoch | RV | myocardium | LV | mean | share of full masks |", "|---|---|---|---|---|---|---|",
    ]
    for which in ("last", "best"):
        for name in runs:
            r = runs[name][which]
            share = r["mean"] / m[which]["mean"]
            epoch = (f"{runs[name]['epochs']} (last)" if which == "last"
                     else f"{runs[name]['best_epoch']} (best on val, the scored split)")
            lines.append(f"| {name} | {epoch} | {r['right ventricle']:.3f} | {r['myocardium']:.3f} | "
                         f"{r['left ventricle']:.3f} | {r['mean']:.3f} | {100 * share:.1f}% |")
    share_last = s["last"]["mean"] / m["last"]["mean"]
    lines += ["", f"At the last epoch, scribbles reach {100 * share_last:.1f}% of the automatic Dice that full masks "
              "on the same slices give."]
    write_result("acdc", "scribbles_vs_masks", {"runs": runs, "share_last": share_last}, "\n".join(lines) + "\n",
                 title="ACDC-3 from scribbles against full masks on the same slices")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
