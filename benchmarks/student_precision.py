"""The distilled student trained under bfloat16 autocast against float32, from the same pseudo-labels and seed.

    .venv/bin/python benchmarks/student_precision.py RUN [--result DATASET/EXPERIMENT]

RUN is a distilled run (``benchmarks/distill_benchmark.py`` or ``medadapt
distill``) whose first round was trained in float32. Its adapter, config and
foundation pseudo-labels are copied to ``RUN_bf16/``, and one round of the
same length is distilled there with ``distill.amp=bf16`` (resumable: run the
same command again). The report compares the two first rounds' validation
Dice and wall time, step by step; nothing is scored on a test split.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, result_name, write_result  # noqa: E402


def _log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT")
    args = ap.parse_args(argv)
    from medadapt.recipes import distill

    run = Path(args.run)
    twin = run.parent / f"{run.name}_bf16"
    if not (twin / "student" / "student.json").is_file():
        if not (twin / "config.yaml").is_file():
            twin.mkdir(exist_ok=True)
            shutil.copyfile(run / "config.yaml", twin / "config.yaml")
            shutil.copytree(run / "adapter", twin / "adapter", dirs_exist_ok=True)
            shutil.copytree(run / "distill" / "pseudo", twin / "distill" / "pseudo", dirs_exist_ok=True)
        distill(twin, ["distill.amp=bf16", "distill.rounds=1"], resume=(twin / "distill" / "state.pt").is_file())
    f32, b16 = _log(run / "distill" / "log.csv"), _log(twin / "distill" / "log.csv")
    lines = ["| step | float32 val Dice | bf16 val Dice | float32 seconds | bf16 seconds |", "|---|---|---|---|---|"]
    for a, b in zip(f32, b16):
        lines.append(f"| {a['step']} | {float(a['val_dice_ema']):.3f} | {float(b['val_dice_ema']):.3f} | "
                     f"{float(a['seconds']):.0f} | {float(b['seconds']):.0f} |")
    last_a, last_b = f32[min(len(f32), len(b16)) - 1], b16[min(len(f32), len(b16)) - 1]
    speed = float(last_a["seconds"]) / float(last_b["seconds"])
    md = (f"The first round of `{run}` (float32) against the same round trained again under bfloat16 autocast "
          f"(`distill.amp=bf16`) in `{twin}`: the same config, adapter, foundation pseudo-labels and seed. "
          f"Validation Dice of the EMA teacher (the student) on the run's val split, and wall time with "
          f"validation. At step {last_b['step']}: float32 {float(last_a['val_dice_ema']):.3f}, bf16 "
          f"{float(last_b['val_dice_ema']):.3f}; bf16 {speed:.2f}x as fast. One pair of runs: the spread between "
          f"runs of the same precision is not measured here.\n\n" + "\n".join(lines) + "\n")
    dataset, experiment = parse_result(args.result) if args.result else result_name(run.name.rsplit("_s", 1)[0],
                                                                                    "student_precision")
    path = write_result(dataset, experiment, {"run": str(run), "twin": str(twin), "float32": f32, "bf16": b16},
                        md, files={"log_float32.csv": run / "distill" / "log.csv",
                                   "log_bf16.csv": twin / "distill" / "log.csv"})
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
