"""A distilled run's student under each test-time augmentation, chosen on val and reported on the others.

    .venv/bin/python benchmarks/student_tta.py RUN --splits val test [--result DATASET/EXPERIMENT] [--about TEXT]

Scores the run's student in automatic mode (``medadapt evaluate RUN --student-tta T``) with each of
``none`` (the slice once), ``flip`` (averaged with the mirrored slice, what students are saved with) and
``dihedral`` (averaged over the 8 flips and quarter turns they train on). The augmentation is chosen on
the first split (val) by mean 3-D Dice; the others show every variant with the chosen one marked, so no
test figure is the best of several there. Scores are kept in ``RUN/eval_SPLIT_student_tta_T/`` and
reused while the run's student is the one that made them. Written to
``benchmarks/results/DATASET/EXPERIMENT/`` (default: the run's dataset, ``student_tta_<rest of its name>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cached_report, mode_summary, write_run_result  # noqa: E402

VARIANTS = ("none", "flip", "dihedral")


def _score(run: Path, split: str, tta: str) -> tuple[dict, float | None]:
    """(summary of automatic mode, seconds or None when the scores were reused)."""
    from medadapt.evaluation.evaluate import evaluate_run

    out = run / f"eval_{split}_student_tta_{tta}"
    report = cached_report(out, run, student=True)
    if report is not None:
        return mode_summary(report, "automatic"), None
    t0 = time.perf_counter()
    report = evaluate_run(run, split=split, modes=["automatic"], out_dir=out, units="px", metrics=["dice"],
                          student_tta=tta)
    return mode_summary(report, "automatic"), round(time.perf_counter() - t0, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--splits", nargs="+", default=["val", "test"], help="the first is where the variant is chosen")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT")
    ap.add_argument("--about", default="", help="what was measured, in prose: the model, the splits (summary.md)")
    args = ap.parse_args(argv)
    from medadapt.student import has_student

    run = Path(args.run)
    if not has_student(run):
        raise SystemExit(f"{run} holds no distilled student (RUN/student/): run medadapt distill RUN first")
    results: dict = {s: {} for s in args.splits}
    seconds: dict = {s: {} for s in args.splits}
    for split in args.splits:
        for tta in VARIANTS:
            results[split][tta], seconds[split][tta] = _score(run, split, tta)
    choose = args.splits[0]
    chosen = max(VARIANTS, key=lambda v: results[choose][v]["mean"])  # ties keep the cheaper, listed first
    classes = list(results[choose][VARIANTS[0]]["per_class"])
    lines = []
    for split in args.splits:
        lines.append(f"\n### {split} split\n\n| test-time augmentation | " + " | ".join(classes)
                     + " | mean Dice | seconds |\n|---|" + "---|" * (len(classes) + 2))
        for v in VARIANTS:
            r = results[split][v]
            mark = f" (chosen on {choose})" if v == chosen else ""
            cells = " | ".join(f"{r['per_class'][c]:.3f}" for c in classes)
            took = seconds[split][v]
            lines.append(f"| {v}{mark} | {cells} | **{r['mean']:.3f}** | {'reused' if took is None else took} |")
    md = (f"Run `{run}`: its student in automatic mode, each slice read once (`none`), averaged with the mirrored "
          f"slice (`flip`, what students are saved with) or over the 8 flips and quarter turns (`dihedral`); mean "
          f"3-D Dice per case, classes averaged. The augmentation is chosen on `{choose}`; the other splits show "
          f"every variant, the one chosen on `{choose}` marked. Seconds: the split's evaluation (prediction and "
          f"scoring), `reused` where the scores of this student were already in the run folder.\n"
          + (f"\n{args.about}\n" if args.about else "") + "\n".join(lines) + "\n")
    write_run_result(args.result, run, "student_tta", {"run": str(run), "chosen_on": choose, "chosen": chosen,
                                                       "splits": results, "seconds": seconds}, md)


if __name__ == "__main__":
    main()
