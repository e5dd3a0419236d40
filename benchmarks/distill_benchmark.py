"""Weak-to-strong distillation on a recipe: teacher, student, and both scored on the held-out test split.

    .venv/bin/python benchmarks/distill_benchmark.py configs/acdc/3labeled_distill.yaml --seeds 0 1 \\
        [key=value ...] [--result DATASET/EXPERIMENT]

For each seed: ``medadapt finetune RECIPE train.seed=S name=NAME_sS`` (the
adapted foundation model; its ``distill:`` section then distils the student
into ``RUN/student/``), then ``medadapt evaluate`` on the recipe's ``test``
split and ``val`` split in automatic mode: the student, the adapted decoder
alone (``--no-student``) and the decoder self-prompted. Every stage resumes:
run the same command again after an interruption. Choices (the recipe's
settings, the decoder's best epoch) are made on val; the test split is never
used for a choice, and the student is the last step's EMA teacher.
Written to ``benchmarks/results/DATASET/EXPERIMENT`` (default: the recipe's
name, e.g. ``acdc/distill_3labeled``). Prose the tables cannot say (the split,
the wall time by stage, what falls short) is kept in ``about.md`` in that
folder and included in ``summary.md`` each time the script writes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import copy_for_distillation, has_student, parse_result, result_dir, write_result  # noqa: E402

ARMS = ("student", "UNet peer (no pseudo-labels)", "decoder", "decoder, self-prompted")


def _summary(report, mode: str) -> dict:
    rows = [r for r in report.summary() if r["mode"] == mode]
    mean = next(r for r in rows if r["value"] is None)
    return {"per_class": {r["class"]: r["dice_mean"] for r in rows if r["value"] is not None},
            "mean": mean["dice_mean"], "hd95": mean["hd95_mean"], "cases": mean["n"]}


def _evaluate(run: Path, split: str, student: bool) -> tuple[dict, float | None]:
    """{arm: summary} for the student (automatic) or the decoder (automatic and self-prompted, one encoding)."""
    from medadapt.evaluation.evaluate import evaluate_run
    from medadapt.evaluation.report import EvaluationReport

    out = run / f"eval_{split}_{'student' if student else 'decoder'}"
    modes = ["automatic"] if student else ["automatic", "self-prompted"]
    t0 = time.perf_counter()
    if (out / "evaluation.json").is_file():
        report, seconds = EvaluationReport.from_json(out / "evaluation.json"), None
    else:
        report = evaluate_run(run, split=split, modes=modes, out_dir=out, student=student, units="px")
        seconds = time.perf_counter() - t0
    if student:
        return {"student": _summary(report, "automatic")}, seconds
    return {"decoder": _summary(report, "automatic"), "decoder, self-prompted": _summary(report, "self-prompted")}, seconds


def _peer(run: Path) -> Path:
    """RUN_peer: the run's config, adapter and cached slices, distilled with ``distill.pseudo_weight=0``."""
    from medadapt.recipes import distill

    peer = run.parent / f"{run.name}_peer"
    if (peer / "student" / "student.json").is_file():
        return peer
    copy_for_distillation(run, peer)
    t0 = time.perf_counter()
    distill(peer, ["distill.pseudo_weight=0"], resume=(peer / "distill" / "state.pt").is_file())
    times_path = peer / "benchmark_times.json"
    before = json.loads(times_path.read_text())["peer_s"] if times_path.is_file() else 0.0
    times_path.write_text(json.dumps({"peer_s": before + time.perf_counter() - t0}))
    return peer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--splits", nargs="+", default=["test", "val"], help="splits the student is scored on")
    ap.add_argument("--decoder-splits", nargs="+", default=["test"],
                    help="splits the adapted decoder is scored on (each costs an encoding of every slice)")
    ap.add_argument("--peer", action="store_true",
                    help="also train the same-budget semi-supervised UNet peer: the same student, steps, batches, "
                         "augmentations and EMA-teacher consistency on the same unlabelled slices, without the "
                         "foundation pseudo-labels (distill.pseudo_weight=0), in RUN_peer/")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: from the recipe's name)")
    args = ap.parse_args(argv)

    from medadapt.recipes import finetune, load_config

    results: dict = {}
    for seed in args.seeds:
        base = load_config(args.config, args.overrides)
        cfg = load_config(args.config, [*args.overrides, f"train.seed={seed}", f"name={base.name}_s{seed}"])
        if cfg.distill is None:
            raise SystemExit(f"{args.config} has no distill: section")
        run = Path(cfg.output) / cfg.name
        times_path = run / "benchmark_times.json"
        times = json.loads(times_path.read_text()) if times_path.is_file() else {}
        t0 = time.perf_counter()
        if not has_student(run, cfg.distill, f"{args.config}: delete {run}/student and {run}/distill, or pass the "
                           "overrides it was made with"):
            finetune(cfg, resume=(run / "checkpoints" / "last.pt").is_file())
            times["finetune_and_distill_s"] = times.get("finetune_and_distill_s", 0.0) + time.perf_counter() - t0
            run.mkdir(parents=True, exist_ok=True)
            times_path.write_text(json.dumps(times))
        rounds = sorted((int(m.group(1)), p) for p in (run / "distill").glob("round*/log.csv")
                        if (m := re.fullmatch(r"round(\d+)", p.parent.name)) and int(m.group(1)) <= cfg.distill.rounds)
        log = (run / "distill" / "log.csv").read_text().splitlines()
        if rounds:
            log = [f"round1: {row}" for row in log]
        for r, later in rounds:
            log += [f"round{r}: {row}" for row in later.read_text().splitlines()]
        results[seed] = {"run": str(run), "times": times, "distill_log": log}
        for split in args.splits:
            for student in (True, False) if split in args.decoder_splits else (True,):
                arms, seconds = _evaluate(run, split, student)
                results[seed].update({f"{split}:{arm}": v for arm, v in arms.items()})
                if seconds is not None:
                    times[f"evaluate_{split}_{'student' if student else 'decoder'}_s"] = seconds
        if args.peer:
            peer = _peer(run)
            for split in args.splits:
                arms, seconds = _evaluate(peer, split, True)
                results[seed][f"{split}:UNet peer (no pseudo-labels)"] = arms["student"]
                if seconds is not None:
                    times[f"evaluate_{split}_peer_s"] = seconds
            times["peer_s"] = json.loads((peer / "benchmark_times.json").read_text())["peer_s"]
        times_path.write_text(json.dumps(times))
        print(json.dumps({k: v["mean"] for k, v in results[seed].items() if isinstance(v, dict) and "mean" in v}),
              flush=True)

    base = load_config(args.config, args.overrides)
    dataset, experiment = (parse_result(args.result) if args.result
                           else (base.name.partition("_")[0], "distill_" + base.name.partition("_")[2].replace("_distill", "")))
    classes = list(next(iter(results.values()))[f"{args.splits[0]}:student"]["per_class"])
    lines = []
    for split in args.splits:
        lines.append(f"\n### {split} split\n\n| seed | answer | " + " | ".join(classes) + " | mean Dice | HD95 (px) |\n|---"
                     + "|---" * (len(classes) + 3) + "|")
        for seed, r in results.items():
            for arm in (a for a in ARMS if f"{split}:{a}" in r):
                e = r[f"{split}:{arm}"]
                cells = " | ".join(f"{e['per_class'][c]:.3f}" for c in classes)
                lines.append(f"| {seed} | {arm} | {cells} | **{e['mean']:.3f}** | {e['hd95']:.1f} |")
        for arm in (a for a in ARMS if f"{split}:{a}" in next(iter(results.values()))):
            vals = [r[f"{split}:{arm}"]["mean"] for r in results.values()]
            lines.append(f"| mean of {len(vals)} | {arm} | " + " | " * (len(classes) - 1) + f" | **{sum(vals) / len(vals):.3f}** | |")
    about = result_dir(dataset, experiment) / "about.md"  # what the tables cannot say, kept beside them
    md = (f"Recipe `{args.config}` {' '.join(args.overrides)}, seeds {', '.join(map(str, args.seeds))}. "
          "Automatic mode throughout (no ground truth makes a prompt): the distilled student, the adapted decoder "
          "alone, and the decoder self-prompted. Mean 3-D Dice per volume, classes averaged; HD95 in pixels.\n"
          + ("\nUNet peer (no pseudo-labels): the student's network, steps, rounds, batches, augmentations and "
             "EMA-teacher consistency on the same unlabelled slices, with the foundation pseudo-labels given no "
             "weight (`distill.pseudo_weight=0`), in `RUN_peer/`: a FixMatch / mean-teacher-style semi-supervised "
             "UNet at the student's budget. Its later rounds train on from the previous round with the schedule "
             "restarted; the relabelled slices carry no weight there either.\n" if args.peer else "")
          + (f"\n{about.read_text().strip()}\n" if about.is_file() else "")
          + "\n".join(lines) + "\n")
    path = write_result(dataset, experiment, {"seeds": results}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
