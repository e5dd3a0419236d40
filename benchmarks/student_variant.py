"""One round of a distilled run's student trained again with other settings, from the same pseudo-labels and seed.

    .venv/bin/python benchmarks/student_variant.py RUN --name NAME --set distill.KEY=VALUE [...]
        [--round 2] [--result DATASET/EXPERIMENT] [--about TEXT]

RUN is a distilled run (``benchmarks/distill_benchmark.py`` or ``medadapt
distill``): its first round is the reference. Its config, adapter and
foundation pseudo-labels are copied to ``RUN_NAME/``, and one round of the
same length is distilled there with the ``--set`` overrides (resumable: run
the same command again; a finished variant is only read). The report
compares the two rounds' validation Dice and wall time step by step;
nothing is scored on a test split, so a variant chosen on it is chosen on
validation, as the protocol asks. Examples: ``--name bf16 --set
distill.amp=bf16``; ``--name ctx1 --set distill.student.context=1``.

``--round 2`` compares the run's second round instead, for settings that act
only after the first round (``distill.relabel``): the run's finished first
round is copied too, and the variant relabels from it and trains round 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import copy_for_distillation, has_student, parse_result, result_name, write_result  # noqa: E402


def _log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


LATER_ROUNDS = {"relabel"}  # settings that act only after the first round


def _variant(run: Path, twin: Path, overrides: list[str], round_: int) -> None:
    """Distil ``twin`` (a copy of ``run``'s config, adapter and pseudo-labels, and for ``round_`` 2 its finished
    first round) with ``overrides``, unless it holds a student made with exactly these settings."""
    from dataclasses import asdict

    from medadapt.core.files import atomic_write_text
    from medadapt.recipes import distill, load_config
    from medadapt.ssl.distill import recorded_settings

    copy_for_distillation(run, twin)  # nothing to copy when the twin has its config
    settings = load_config(twin / "config.yaml", overrides).distill
    if has_student(twin, settings, f"--set {' '.join(overrides)}: delete {twin} or pass the settings it was made with"):
        return
    if round_ == 2 and not (twin / "distill" / "settings.json").is_file():  # round 1 as the run finished it
        recorded = json.loads((run / "distill" / "settings.json").read_text())
        want = json.loads(json.dumps(asdict(settings)))
        had = recorded_settings(recorded["distill"])
        other = sorted(k for k in set(had) | set(want) if k not in {*LATER_ROUNDS, "rounds", "val_every"}
                       and had.get(k) != want.get(k))
        if other:
            raise SystemExit(f"{run}'s first round was distilled with other settings than its config.yaml says "
                             f"({', '.join(other)}): --round 2 would not start from the first round it claims")
        for name in ("state.pt", "log.csv"):
            shutil.copyfile(run / "distill" / name, twin / "distill" / name)
        atomic_write_text(twin / "distill" / "settings.json", json.dumps({**recorded, "distill": want}))
    distill(twin, overrides, resume=(twin / "distill" / "settings.json").is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--name", required=True, help="the variant's name: its folder is RUN_NAME")
    ap.add_argument("--set", nargs="+", required=True, dest="overrides", metavar="distill.KEY=VALUE",
                    help="the settings that differ from the run's first round")
    ap.add_argument("--round", type=int, choices=(1, 2), default=1, dest="round_",
                    help="the round compared: 1, or 2 for settings that act only after round 1 (distill.relabel)")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT")
    ap.add_argument("--about", default="", help="what else the report should say, in prose")
    args = ap.parse_args(argv)
    if not args.name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--name {args.name!r}: letters, digits, - and _ only (it names the folder RUN_NAME)")
    run = Path(args.run)
    twin = run.parent / f"{run.name}_{args.name}"
    keys = {o.partition("=")[0].removeprefix("distill.") for o in args.overrides}
    if args.round_ == 1 and keys & LATER_ROUNDS:
        raise SystemExit(f"{', '.join(sorted(keys & LATER_ROUNDS))} acts only after the first round: pass --round 2")
    if args.round_ == 2:
        if keys - LATER_ROUNDS:
            raise SystemExit(f"--round 2 copies the run's first round, so it takes only settings that act after it "
                             f"({', '.join(sorted(LATER_ROUNDS))}); got {', '.join(sorted(keys - LATER_ROUNDS))}")
        if not (run / "distill" / "round2" / "log.csv").is_file():
            raise SystemExit(f"{run} has no second round to compare with (distill/round2/log.csv)")
    overrides = [*args.overrides, f"distill.rounds={args.round_}"]
    _variant(run, twin, overrides, args.round_)
    logs = "distill/log.csv" if args.round_ == 1 else "distill/round2/log.csv"
    ref, var = _log(run / logs), _log(twin / logs)
    label = " ".join(args.overrides)
    lines = [f"| step | reference val Dice | `{label}` val Dice | reference seconds | variant seconds |",
             "|---|---|---|---|---|"]
    for a, b in zip(ref, var):
        lines.append(f"| {a['step']} | {float(a['val_dice_ema']):.3f} | {float(b['val_dice_ema']):.3f} | "
                     f"{float(a['seconds']):.0f} | {float(b['seconds']):.0f} |")
    n = min(len(ref), len(var))
    last_a, last_b = ref[n - 1], var[n - 1]
    speed = float(last_a["seconds"]) / float(last_b["seconds"])
    which = "first round" if args.round_ == 1 else "second round (from the same first round)"
    md = (f"The {which} of `{run}` (the reference) against the same round trained again with `{label}` in "
          f"`{twin}`: the same config otherwise, adapter, foundation pseudo-labels and seed. Validation Dice of the "
          f"EMA teacher (the student) on the run's val split, and wall time with validation. At step "
          f"{last_b['step']}: reference {float(last_a['val_dice_ema']):.3f}, variant "
          f"{float(last_b['val_dice_ema']):.3f}; the variant {speed:.2f}x as fast. One pair of runs: the spread "
          f"between runs of the same settings is not measured here.\n\n"
          + (f"{args.about.strip()}\n\n" if args.about.strip() else "") + "\n".join(lines) + "\n")
    dataset, experiment = parse_result(args.result) if args.result else result_name(
        run.name.rsplit("_s", 1)[0], f"student_{args.name}")
    path = write_result(dataset, experiment, {"run": str(run), "variant": str(twin), "overrides": args.overrides,
                                              "reference": ref, "variant_log": var}, md,
                        files={"log_reference.csv": run / logs, f"log_{args.name}.csv": twin / logs})
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
