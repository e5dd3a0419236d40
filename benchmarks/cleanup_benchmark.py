"""Clean-up of automatic label maps, measured: none, each class's largest 3-D component, holes, both.

    .venv/bin/python benchmarks/cleanup_benchmark.py RUN --splits val test [--no-student] [--modes automatic]
        [--result DATASET/EXPERIMENT]

Each case of each split is predicted once (the run's student when it has one,
else the adapted decoder; ``--modes`` adds ``self-prompted``), and its label
map is scored as it is and after each clean-up of
:mod:`medadapt.inference.cleanup` (3-D Dice per case, classes averaged). The
clean-up is chosen on the first split (val) by mean Dice; the others are
reported for every variant, the chosen one marked, so a figure on the test
split is never the best of several there. Written to
``benchmarks/results/DATASET/EXPERIMENT/`` (default: the run's dataset,
``cleanup_<rest of the run's name>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_run_result  # noqa: E402

VARIANTS = {"none": (), "largest": ("largest",), "holes": ("holes",), "largest + holes": ("largest", "holes")}


def _predict(run: Path, split: str, modes: list[str], student: bool) -> tuple[list[str], list[str], dict]:
    """(class names, case ids, {mode: [(prediction, ground truth)]}) for every case of ``split``."""
    from medadapt.evaluation import predict_split

    classes, ids, out = [], [], {m: [] for m in modes}
    for case in predict_split(run, split, modes, student=student):
        classes, ids = case.classes, ids + [case.case_id]
        for m in modes:
            out[m].append((case.predictions[m], case.label))
    return classes, ids, out


def _score(pairs: list, n_classes: int) -> dict:
    """{variant: {"per_class": [...], "mean": float, "per_case": [...]}} over the cases' label maps."""
    from medadapt.evaluation.metrics import dice_per_class
    from medadapt.inference.cleanup import clean_labels

    values = list(range(1, n_classes + 1))
    scores = {}
    for name, steps in VARIANTS.items():
        rows = np.array([[dice_per_class(clean_labels(p, steps, axis=0), g, values)[v] for v in values]
                         for p, g in pairs])
        scores[name] = {"per_class": rows.mean(0).tolist(), "mean": float(rows.mean()),
                        "per_case": rows.mean(1).round(4).tolist()}
    return scores


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], help="the first is where the clean-up is chosen")
    ap.add_argument("--modes", default="automatic", help="comma-separated: automatic, self-prompted")
    ap.add_argument("--no-student", action="store_true", help="the adapted decoder even when the run has a student")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT")
    ap.add_argument("--about", default="", help="what was measured, in prose: the model, the splits (summary.md)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results, seconds = {}, {}
    for split in args.splits:
        t0 = time.perf_counter()
        classes, ids, preds = _predict(run, split, modes, not args.no_student)
        seconds[split] = round(time.perf_counter() - t0, 1)
        results[split] = {m: {"cases": ids, **_score(pairs, len(classes))} for m, pairs in preds.items()}
    choose = args.splits[0]
    chosen = {m: max(VARIANTS, key=lambda v: results[choose][m][v]["mean"]) for m in modes}
    lines = []
    for split in args.splits:
        lines.append(f"\n### {split} split\n\n| answer | clean-up | " + " | ".join(classes) + " | mean Dice |\n|---|---"
                     + "|---" * (len(classes) + 1) + "|")
        for m in modes:
            for v in VARIANTS:
                r = results[split][m][v]
                mark = " (chosen on " + choose + ")" if v == chosen[m] else ""
                cells = " | ".join(f"{x:.3f}" for x in r["per_class"])
                lines.append(f"| {m} | {v}{mark} | {cells} | **{r['mean']:.3f}** |")
    answer = "the adapted decoder" if args.no_student else "the run's student when it has one, else the adapted decoder"
    md = (f"Run `{run}`: {answer}, modes {', '.join(modes)}. Each case is predicted once and scored as it is and "
          f"after each clean-up (`medadapt.inference.cleanup`); mean 3-D Dice per case, classes averaged. The "
          f"clean-up is chosen on `{choose}`; the other splits show every variant, with the one chosen on "
          f"`{choose}` marked. Prediction time per split (s): "
          + ", ".join(f"{s} {t}" for s, t in seconds.items()) + ".\n" + (f"\n{args.about}\n" if args.about else "")
          + "\n".join(lines) + "\n")
    write_run_result(args.result, run, "cleanup", {"run": str(run), "chosen_on": choose, "chosen": chosen,
                                                   "splits": results, "seconds": seconds}, md)


if __name__ == "__main__":
    main()
