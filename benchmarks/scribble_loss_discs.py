"""The terms of ``scribble_loss`` on synthetic discs: the partial loss alone, with pseudo-labels, with affinity.

    python benchmarks/scribble_loss_discs.py [--background 0]

The disc dataset of ``tests/test_finetune.py`` (12 images of 96 x 96, bright discs on noise; 8 labelled,
4 validation), LiteMedSAM decoder and class tokens, 6 epochs, lr 3e-4, labels simulated as scribbles
(``simulate_scribble_labels``: one stroke along each disc, one around it, and ``--background`` strokes along
the background as a whole). Variants (``scribble_loss`` settings):

* ``partial``: the defaults (the partial loss alone);
* ``pseudo``: ``pseudo_weight: 1`` (agreement-gated pseudo-labels);
* ``pseudo_no_agree``: ``pseudo_weight: 1, agree: false``;
* ``affinity``: ``affinity_weight: 0.5``.

Validation Dice per epoch and the last epoch go to ``benchmarks/results/synthetic/scribble_loss_discs/``
(``scribble_loss_discs_backgroundN/`` with ``--background N``).
These data are synthetic and chosen on nothing else: they are where the defaults were set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchmarks.common import write_result  # noqa: E402

VARIANTS = {
    "partial": {},
    "pseudo": {"pseudo_weight": 1.0},
    "pseudo_no_agree": {"pseudo_weight": 1.0, "agree": False},
    "affinity": {"affinity_weight": 0.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--background", type=int, default=0, help="background strokes per slice")
    args = ap.parse_args()

    from test_finetune import config, make_disc_dataset

    from medadapt.recipes import config_from_dict, finetune
    from medadapt.training import scribbles

    work = Path(tempfile.mkdtemp(prefix="scribble_discs_"))
    root = make_disc_dataset(work / "discs")
    rows = {}
    for name, settings in VARIANTS.items():
        raw = config(root, work / "runs", "litemedsam", epochs=6, lr=3e-4, cache_dir=str(work / "cache"))
        raw["data"]["scribbles"] = "simulate"
        raw["name"], raw["scribble_loss"] = name, settings
        with mock.patch.object(scribbles, "SIMULATED_BACKGROUND_STROKES", args.background):
            run = finetune(config_from_dict(raw), log=lambda m: None)
        history = [h["val_dice"] for h in json.loads((run / "metrics.json").read_text())["history"]]
        rows[name] = history
        print(name, [round(v, 3) for v in history], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    lines = [f"Synthetic discs, LiteMedSAM, 6 epochs; {args.background} background strokes per slice besides the "
             "strokes along and around each disc. Validation Dice per epoch.", "",
             "| variant | scribble_loss | epochs 1-6 | last |", "|---|---|---|---|"]
    for name, history in rows.items():
        lines.append(f"| {name} | `{VARIANTS[name] or 'defaults'}` | {' / '.join(f'{v:.3f}' for v in history)} "
                     f"| {history[-1]:.3f} |")
    name = "scribble_loss_discs" + (f"_background{args.background}" if args.background else "")
    write_result("synthetic", name, {"background": args.background, "val_dice": rows},
                 "\n".join(lines) + "\n", title="scribble_loss terms on synthetic discs")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
