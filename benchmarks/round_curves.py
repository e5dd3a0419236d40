"""A distilled run's rounds side by side: the validation curve of each, and the last round's student scored.

    .venv/bin/python benchmarks/round_curves.py RUN [--score] [--result DATASET/EXPERIMENT] [--about TEXT]

RUN is a run distilled with ``medadapt distill`` over several rounds (``distill.rounds=N``; a run distilled with
fewer rounds goes on with ``medadapt distill RUN distill.rounds=N --resume``). Nothing is trained here. The
table gives the validation Dice of the student's EMA teacher at each logged step of every round
(``RUN/distill/log.csv``, ``RUN/distill/roundK/log.csv``): whether another round pays is read on val.
``--score`` then scores the run's student (the last round's) on the val and test splits, alone and
self-prompted through the decoder, and reports on test the answer chosen on val, as
``benchmarks/distill_benchmark.py`` does; the test split makes no choice here.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, result_name, write_result  # noqa: E402
from benchmarks.distill_benchmark import STUDENT_ANSWERS, _evaluate  # noqa: E402


def round_logs(run: Path) -> list[list[dict]]:
    """Each finished or started round's log rows, round 1 first."""
    logs, k = [], 1
    while True:
        path = run / "distill" / ("log.csv" if k == 1 else f"round{k}/log.csv")
        if not path.is_file():
            return logs
        with open(path, newline="") as f:
            logs.append(list(csv.DictReader(f)))
        k += 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--score", action="store_true", help="score the run's student on val and test")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT")
    ap.add_argument("--about", default="", help="what else the report should say, in prose")
    args = ap.parse_args(argv)
    run = Path(args.run)
    logs = round_logs(run)
    if len(logs) < 2:
        raise SystemExit(f"{run} has {len(logs)} round(s) logged: this compares two or more")
    steps = sorted({int(r["step"]) for log in logs for r in log})
    head = "| step | " + " | ".join(f"round {k} val Dice" for k in range(1, len(logs) + 1)) + " |"
    lines = [head, "|---" * (len(logs) + 1) + "|"]
    for s in steps:
        cells = [next((f"{float(r['val_dice_ema']):.3f}" for r in log if int(r["step"]) == s), "") for log in logs]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    last = [float(log[-1]["val_dice_ema"]) for log in logs]
    md = (f"Validation Dice of the student (its EMA teacher) at each logged step of every round of `{run}`; each "
          f"round after the first learns from the previous round's student's labels. Last logged step: "
          + ", ".join(f"round {k} {v:.3f}" for k, v in enumerate(last, start=1)) + ".\n\n"
          + (f"{args.about.strip()}\n\n" if args.about.strip() else "") + "\n".join(lines) + "\n")
    payload = {"run": str(run), "rounds": logs}
    if args.score:
        scores = {}
        for split in ("val", "test"):
            for answer, arm in (("student", "student"), ("refined", "student, self-prompted")):
                scores[f"{split}:{arm}"] = _evaluate(run, split, answer)[0][arm]
        pick = max(STUDENT_ANSWERS, key=lambda a: scores[f"val:{a}"]["mean"])  # ties keep the plain student
        rows = ["| answer | val mean Dice | test mean Dice | test per class |", "|---|---|---|---|"]
        for a in STUDENT_ANSWERS:
            per = ", ".join(f"{c} {v:.3f}" for c, v in scores[f"test:{a}"]["per_class"].items())
            mark = " (chosen on val)" if a == pick else ""
            rows.append(f"| {a}{mark} | {scores[f'val:{a}']['mean']:.3f} | {scores[f'test:{a}']['mean']:.3f} | {per} |")
        md += (f"\n### The last round's student, scored\n\nThe answer chosen on val: **{pick}**, test mean 3-D Dice "
               f"**{scores[f'test:{pick}']['mean']:.3f}** (the test split makes no choice).\n\n" + "\n".join(rows) + "\n")
        payload.update(scores=scores, chosen=pick)
    dataset, experiment = parse_result(args.result) if args.result else result_name(
        run.name.rsplit("_s", 1)[0], "student_rounds")
    files = {f"log_round{k}.csv": run / "distill" / ("log.csv" if k == 1 else f"round{k}/log.csv")
             for k in range(1, len(logs) + 1)}
    path = write_result(dataset, experiment, payload, md, files=files)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
