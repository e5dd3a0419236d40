"""Self-prompting at inference: automatic mode against automatic mode refined by boxes drawn from itself.

    .venv/bin/python benchmarks/self_prompt.py runs/acdc_3labeled runs/acdc_7labeled ... [--result DATASET/EXPERIMENT]

For each finished run folder: ``medadapt evaluate`` on the run's own val split
with the modes ``automatic`` and ``self-prompted`` (each class's automatic mask
-> a box around its largest component -> the adapted decoder's answer, kept
where it agrees with the mask; :func:`medadapt.inference.refine_automatic`).
Both are automatic results: no ground truth makes a prompt. Mean 3-D Dice per
case (per image for 2-D data) and HD95 in pixels, per class. Evaluation
reports land in ``RUN/eval_val_self_prompt/``. The runs' best epochs were
chosen on the same val split, and the refinement's settings (margin 0, IoU
0.5) were chosen on these val splits too, so these are validation figures.
The table goes to ``benchmarks/results/DATASET/self_prompting/``, DATASET being
the first part of the run names (``acdc_3labeled`` -> ``acdc``); runs of several
datasets need one call each, or ``--result``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, write_result  # noqa: E402

MODES = ("automatic", "self-prompted")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run folders of `medadapt finetune`")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: DATASET/self_prompting)")
    args = ap.parse_args(argv)
    if args.result:
        dataset, experiment = parse_result(args.result)
    else:
        datasets = sorted({Path(run).name.partition("_")[0] for run in args.runs})
        if len(datasets) > 1:
            raise SystemExit(f"runs of several datasets ({', '.join(datasets)}): one call per dataset, "
                             "or --result DATASET/EXPERIMENT")
        dataset, experiment = datasets[0], "self_prompting"

    import torch

    from medadapt.evaluation.evaluate import evaluate_run

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, per_run = [], {}
    for run in args.runs:
        t0 = time.perf_counter()
        report = evaluate_run(run, split="val", modes=MODES, out_dir=Path(run) / "eval_val_self_prompt", units="px")
        seconds = time.perf_counter() - t0
        summary = report.summary()
        per_run[run] = {"summary": summary, "seconds": seconds}
        by_mode = {m: [r for r in summary if r["mode"] == m] for m in MODES}
        classes = [r["class"] for r in by_mode["automatic"] if r["value"] is not None]
        means = {}
        for m in MODES:
            dice = {r["class"]: r["dice_mean"] for r in by_mode[m] if r["value"] is not None}
            mean = next(r for r in by_mode[m] if r["value"] is None)
            means[m] = mean["dice_mean"]
            rows.append(f"| `{Path(run).name}` | {m} | " + ", ".join(f"{c} {dice[c]:.3f}" for c in classes)
                        + f" | **{mean['dice_mean']:.3f}** | {mean['hd95_mean']:.1f} |")
        gain = means["self-prompted"] - means["automatic"]
        rows.append(f"| `{Path(run).name}` | difference | | **{100 * gain:+.1f} points** | |")
        print(rows[-3], rows[-2], rows[-1], f"({seconds / 60:.1f} min)", sep="\n", flush=True)
    md = ("Each run's val split; mean Dice per case (3-D for volumes), classes averaged; HD95 in pixels. "
          "`self-prompted`: the run's automatic masks re-prompted as boxes around their largest component "
          "through the run's adapted decoder (margin 0, kept where IoU >= 0.5). No ground truth enters either "
          "mode. Best epochs and these settings were chosen on the same val splits.\n\n"
          "| run | mode | per class | mean Dice | HD95 |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    path = write_result(dataset, experiment, {"runs": per_run}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
