"""One round of a distilled run's student trained again with other settings, from the same pseudo-labels and seed.

    .venv/bin/python benchmarks/student_variant.py RUN --name NAME --set distill.KEY=VALUE [...]
        [--result DATASET/EXPERIMENT] [--about TEXT]

RUN is a distilled run (``benchmarks/distill_benchmark.py`` or ``medadapt
distill``): its first round is the reference. Its config, adapter and
foundation pseudo-labels are copied to ``RUN_NAME/``, and one round of the
same length is distilled there with the ``--set`` overrides (resumable: run
the same command again; a finished variant is only read). The report
compares the two first rounds' validation Dice and wall time step by step;
nothing is scored on a test split, so a variant chosen on it is chosen on
validation, as the protocol asks. Examples: ``--name bf16 --set
distill.amp=bf16``; ``--name ctx1 --set distill.student.context=1``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import copy_for_distillation, has_student, parse_result, result_name, write_result  # noqa: E402


def _log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _variant(run: Path, twin: Path, overrides: list[str]) -> None:
    """Distil ``twin`` (a copy of ``run``'s config, adapter and pseudo-labels) with ``overrides``, unless it holds
    a student made with exactly these settings."""
    from medadapt.recipes import distill, load_config

    settings = load_config(twin / "config.yaml", overrides).distill if (twin / "config.yaml").is_file() else None
    if settings is not None and has_student(twin, settings, f"--set {' '.join(overrides)}: delete {twin} or pass "
                                            "the settings it was made with"):
        return
    copy_for_distillation(run, twin)
    distill(twin, overrides, resume=(twin / "distill" / "state.pt").is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--name", required=True, help="the variant's name: its folder is RUN_NAME")
    ap.add_argument("--set", nargs="+", required=True, dest="overrides", metavar="distill.KEY=VALUE",
                    help="the settings that differ from the run's first round")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT")
    ap.add_argument("--about", default="", help="what else the report should say, in prose")
    args = ap.parse_args(argv)
    if not args.name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--name {args.name!r}: letters, digits, - and _ only (it names the folder RUN_NAME)")
    run = Path(args.run)
    twin = run.parent / f"{run.name}_{args.name}"
    overrides = [*args.overrides, "distill.rounds=1"]
    _variant(run, twin, overrides)
    ref, var = _log(run / "distill" / "log.csv"), _log(twin / "distill" / "log.csv")
    label = " ".join(args.overrides)
    lines = [f"| step | reference val Dice | `{label}` val Dice | reference seconds | variant seconds |",
             "|---|---|---|---|---|"]
    for a, b in zip(ref, var):
        lines.append(f"| {a['step']} | {float(a['val_dice_ema']):.3f} | {float(b['val_dice_ema']):.3f} | "
                     f"{float(a['seconds']):.0f} | {float(b['seconds']):.0f} |")
    n = min(len(ref), len(var))
    last_a, last_b = ref[n - 1], var[n - 1]
    speed = float(last_a["seconds"]) / float(last_b["seconds"])
    md = (f"The first round of `{run}` (the reference) against the same round trained again with `{label}` in "
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
                        files={"log_reference.csv": run / "distill" / "log.csv",
                               f"log_{args.name}.csv": twin / "distill" / "log.csv"})
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
