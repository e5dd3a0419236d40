"""Weak-to-strong distillation on a recipe: teacher, student, and both scored on the held-out test split.

    .venv/bin/python benchmarks/distill_benchmark.py configs/acdc/3labeled_distill.yaml --seeds 0 1 \\
        [key=value ...] [--result DATASET/EXPERIMENT]

For each seed: ``medadapt finetune RECIPE train.seed=S name=NAME_sS`` (the
adapted foundation model; its ``distill:`` section then distils the student
into ``RUN/student/``), then ``medadapt evaluate`` on the recipe's ``test``
split and ``val`` split in automatic mode: the student, the student's masks
self-prompted through the decoder (``predict(refine=True)``; ``medadapt
evaluate``'s self-prompted mode for a run with a student), the adapted decoder alone
(``--no-student``) and the decoder self-prompted. Which of the student's two
answers a seed reports is chosen on val. Every stage resumes:
run the same command again after an interruption. Choices (the recipe's
settings, the decoder's best epoch) are made on val; the test split is never
used for a choice, and the student is the last step's EMA teacher.
Written to ``benchmarks/results/DATASET/EXPERIMENT`` (default: the recipe's
name, e.g. ``acdc/distill_3labeled``). Prose the tables cannot say (the split,
the wall time by stage, what falls short) is kept in ``about.md`` in that
folder and included in ``summary.md`` each time the script writes it.
``--finished-only`` writes the report from the seeds (and peers) already
finished, and trains nothing (scores not yet computed are computed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    cached_report,
    copy_for_distillation,
    has_student,
    mode_summary,
    parse_result,
    result_dir,
    timed_stage,
    write_result,
)

ARMS = ("student", "student, self-prompted", "UNet peer (no pseudo-labels)", "decoder", "decoder, self-prompted")
STUDENT_ANSWERS = ("student", "student, self-prompted")  # the student's automatic answers; one is chosen on val


def _evaluate(run: Path, split: str, answer: str) -> tuple[dict, float | None]:
    """{arm: summary} for ``answer``: ``student`` (automatic), ``refined`` (the student's masks self-prompted
    through the decoder) or ``decoder`` (automatic and self-prompted, one encoding)."""
    from medadapt.evaluation.evaluate import evaluate_run

    out = run / f"eval_{split}_{answer}"
    student, modes = {"student": (True, ["automatic"]), "refined": (True, ["self-prompted"]),
                      "decoder": (False, ["automatic", "self-prompted"])}[answer]
    t0 = time.perf_counter()
    report, seconds = cached_report(out, run, student), None
    if report is None:
        report = evaluate_run(run, split=split, modes=modes, out_dir=out, student=student, units="px")
        seconds = time.perf_counter() - t0
    if answer == "student":
        return {"student": mode_summary(report, "automatic")}, seconds
    if answer == "refined":
        return {"student, self-prompted": mode_summary(report, "self-prompted")}, seconds
    return {"decoder": mode_summary(report, "automatic"), "decoder, self-prompted": mode_summary(report, "self-prompted")}, seconds


def _chosen(results: dict, splits: list[str]) -> list[str]:
    """Table rows: per seed, the student's answer with the higher val Dice, and its Dice on every split."""
    if "val" not in splits:
        return []
    rows = ["\n### The student's answer chosen on val\n",
            "| seed | chosen on val | " + " | ".join(f"{s} mean Dice" for s in splits) + " |",
            "|---|---" + "|---" * len(splits) + "|"]
    means = {s: [] for s in splits}
    for seed, r in results.items():
        have = [a for a in STUDENT_ANSWERS if all(f"{s}:{a}" in r for s in splits)]
        if not have:
            continue
        pick = max(have, key=lambda a: r[f"val:{a}"]["mean"])  # ties keep the plain student
        for s in splits:
            means[s].append(r[f"{s}:{pick}"]["mean"])
        rows.append(f"| {seed} | {pick} | " + " | ".join(f"**{r[f'{s}:{pick}']['mean']:.3f}**" for s in splits) + " |")
    n = len(means[splits[0]])
    if n > 1:
        rows.append(f"| mean of {n} | | " + " | ".join(f"**{sum(v) / n:.3f}**" for v in means.values()) + " |")
    return rows if n else []


def keep_reported(path: Path, results: dict) -> dict:
    """The seeds of the report at ``path`` (its results.json) that ``results`` does not hold, each with a
    ``measured`` block: the machine and command of the report that measured it."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    return {int(seed): {**r, "measured": r.get("measured") or {"machine": old.get("machine", {}),
                                                                "command": old.get("command", "?")}}
            for seed, r in old.get("seeds", {}).items() if int(seed) not in results}


def _peer(run: Path) -> Path:
    """RUN_peer: the run's config, adapter and cached slices, distilled with ``distill.pseudo_weight=0``."""
    from medadapt.recipes import distill

    peer = run.parent / f"{run.name}_peer"
    if (peer / "student" / "student.json").is_file():
        return peer
    copy_for_distillation(run, peer)
    with timed_stage(peer / "benchmark_times.json", "peer_s"):
        # relabel=student: relabelled slices carry no weight here, so nothing is refined through the decoder
        distill(peer, ["distill.pseudo_weight=0", "distill.relabel=student", "distill.compare_peer=false"],
                resume=(peer / "distill" / "state.pt").is_file())
    return peer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--splits", nargs="+", default=["test", "val"], help="splits the student is scored on")
    ap.add_argument("--decoder-splits", nargs="+", default=["test"],
                    help="splits the adapted decoder is scored on (each costs an encoding of every slice; the "
                         "student's self-prompted answer costs one on every split of --splits when it holds val)")
    ap.add_argument("--peer", action="store_true",
                    help="also train the same-budget semi-supervised UNet peer: the same student, steps, batches, "
                         "augmentations and EMA-teacher consistency on the same unlabelled slices, without the "
                         "foundation pseudo-labels (distill.pseudo_weight=0), in RUN_peer/")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: from the recipe's name)")
    ap.add_argument("--keep-reported", action="store_true",
                    help="keep the seeds of the existing report that this command does not run, with the machine, "
                         "date and command that measured them (for a seed whose run folder is gone)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: report the seeds and peers already finished (scoring what is not scored "
                         "yet), leave out the rest")
    args = ap.parse_args(argv)

    from medadapt.core.files import atomic_write_text
    from medadapt.recipes import finetune, load_config

    results: dict = {}
    for seed in args.seeds:
        base = load_config(args.config, args.overrides)
        cfg = load_config(args.config, [*args.overrides, f"train.seed={seed}", f"name={base.name}_s{seed}"])
        if cfg.distill is None:
            raise SystemExit(f"{args.config} has no distill: section")
        run = Path(cfg.output) / cfg.name
        times_path = run / "benchmark_times.json"
        finished = has_student(run, cfg.distill, f"{args.config}: delete {run}/student and {run}/distill, or pass "
                               "the overrides it was made with")
        if not finished and args.finished_only:
            print(f"seed {seed}: no finished student in {run}; left out (--finished-only)", flush=True)
            continue
        if not finished:
            with timed_stage(times_path, "finetune_and_distill_s"):
                finetune(cfg, resume=(run / "checkpoints" / "last.pt").is_file())
        times = json.loads(times_path.read_text()) if times_path.is_file() else {}
        rounds = sorted((int(m.group(1)), p) for p in (run / "distill").glob("round*/log.csv")
                        if (m := re.fullmatch(r"round(\d+)", p.parent.name)) and int(m.group(1)) <= cfg.distill.rounds)
        log = (run / "distill" / "log.csv").read_text().splitlines()
        if rounds:
            log = [f"round1: {row}" for row in log]
        for r, later in rounds:
            log += [f"round{r}: {row}" for row in later.read_text().splitlines()]
        results[seed] = {"run": str(run), "times": times, "distill_log": log}
        for split in args.splits:
            # the student's self-prompted answer only where val can choose between it and the student alone
            answers = ["student", *(["refined"] if "val" in args.splits else [])]
            for answer in [*answers, *(["decoder"] if split in args.decoder_splits else [])]:
                arms, seconds = _evaluate(run, split, answer)
                results[seed].update({f"{split}:{arm}": v for arm, v in arms.items()})
                if seconds is not None:
                    times[f"evaluate_{split}_{answer}_s"] = seconds
        peer = run.parent / f"{run.name}_peer"
        if args.peer and args.finished_only and not (peer / "student" / "student.json").is_file():
            print(f"seed {seed}: no finished peer in {peer}; left out (--finished-only)", flush=True)
        elif args.peer:
            peer = _peer(run)
            for split in args.splits:
                arms, seconds = _evaluate(peer, split, "student")
                results[seed][f"{split}:UNet peer (no pseudo-labels)"] = arms["student"]
                if seconds is not None:
                    times[f"evaluate_{split}_peer_s"] = seconds
            times["peer_s"] = json.loads((peer / "benchmark_times.json").read_text())["peer_s"]
        atomic_write_text(times_path, json.dumps(times))
        print(json.dumps({k: v["mean"] for k, v in results[seed].items() if isinstance(v, dict) and "mean" in v}),
              flush=True)

    base = load_config(args.config, args.overrides)
    dataset, experiment = (parse_result(args.result) if args.result
                           else (base.name.partition("_")[0], "distill_" + base.name.partition("_")[2].replace("_distill", "")))
    kept = keep_reported(result_dir(dataset, experiment) / "results.json", results) if args.keep_reported else {}
    results = dict(sorted({**results, **kept}.items()))
    if not results:
        raise SystemExit("no seed has a finished student to report (--finished-only)")
    have = [r for r in results.values() if f"{args.splits[0]}:student" in r]
    if not have:
        raise SystemExit(f"no seed has the student scored on {args.splits[0]}")
    classes = list(have[0][f"{args.splits[0]}:student"]["per_class"])
    lines = []
    for split in args.splits:
        lines.append(f"\n### {split} split\n\n| seed | answer | " + " | ".join(classes) + " | mean Dice | HD95 (px) |\n|---"
                     + "|---" * (len(classes) + 3) + "|")
        for seed, r in results.items():
            for arm in (a for a in ARMS if f"{split}:{a}" in r):
                e = r[f"{split}:{arm}"]
                cells = " | ".join(f"{e['per_class'][c]:.3f}" for c in classes)
                lines.append(f"| {seed} | {arm} | {cells} | **{e['mean']:.3f}** | {e['hd95']:.1f} |")
        for arm in (a for a in ARMS if any(f"{split}:{a}" in r for r in results.values())):
            vals = [r[f"{split}:{arm}"]["mean"] for r in results.values() if f"{split}:{arm}" in r]
            lines.append(f"| mean of {len(vals)} | {arm} | " + " | " * (len(classes) - 1) + f" | **{sum(vals) / len(vals):.3f}** | |")
    about = result_dir(dataset, experiment) / "about.md"  # what the tables cannot say, kept beside them
    md = (f"Recipe `{args.config}` {' '.join(args.overrides)}, seeds {', '.join(map(str, results))}. "
          "Automatic mode throughout (no ground truth makes a prompt): the distilled student, its masks "
          "self-prompted through the adapted decoder (`predict(refine=True)`), the adapted decoder alone, and the "
          "decoder self-prompted. Mean 3-D Dice per volume, classes averaged; HD95 in pixels.\n"
          + ("\nUNet peer (no pseudo-labels): the student's network, steps, rounds, batches, augmentations and "
             "EMA-teacher consistency on the same unlabelled slices, with the foundation pseudo-labels given no "
             "weight (`distill.pseudo_weight=0`), in `RUN_peer/`: a FixMatch / mean-teacher-style semi-supervised "
             "UNet at the student's budget. Its later rounds train on from the previous round with the schedule "
             "restarted; the relabelled slices carry no weight there either.\n" if args.peer else "")
          + (f"\n{about.read_text().strip()}\n" if about.is_file() else "")
          + "".join(f"\nSeed {seed} is carried over from the report it was measured for (`--keep-reported`): "
                    f"{m['machine'].get('date', '?')}, commit {m['machine'].get('commit', '?')}, "
                    f"{m['machine'].get('cpu', '?')}, `{m['command']}`.\n"
                    for seed, m in ((seed, kept[seed]["measured"]) for seed in kept))
          + "\n".join(lines + _chosen(results, args.splits)) + "\n")
    path = write_result(dataset, experiment, {"seeds": results}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
