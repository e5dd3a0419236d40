"""Few-label fine-tuning benchmark: train from a config, then evaluate on its val (or test) cases.

    .venv/bin/python benchmarks/finetune_benchmark.py configs/acdc/3labeled.yaml [key=value ...]
        [--modes automatic,box] [--split val|test] [--result DATASET/EXPERIMENT]

Trains with ``medadapt finetune`` (best epoch chosen on the config's val split),
then runs ``medadapt evaluate`` on that same val split (or, with ``--split test``, on the
recipe's ``data.test`` cases, never used for a choice) and writes
``benchmarks/results/DATASET/EXPERIMENT/`` (by default run ``acdc_3labeled`` ->
``acdc/finetune_3labeled``): ``summary.md`` and ``results.json`` with mean 3-D
Dice per case for each class and mode, wall times and the machine, and the
run's ``log.csv``. Scored on val (the default, for recipes without a test
split: the ACDC test patients are not in ../shared/data), the numbers are
validation numbers and are reported as such. A run folder that
already has ``metrics.json`` (a finished ``medadapt finetune``) is evaluated, not
trained again; its training time is then read from that file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, result_name, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--modes", default="automatic,box")
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: from the run name)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--split", choices=["val", "test"], default="val",
                    help="the split scored: val (where the epoch was chosen) or the recipe's data.test, never "
                         "used for a choice")
    args = ap.parse_args(argv)

    from medadapt.evaluation.evaluate import evaluate_run
    from medadapt.recipes import finetune, load_config
    from medadapt.training.run_folder import config_changes, run_folder

    cfg = load_config(args.config, args.overrides)
    run = run_folder(cfg)
    if (run / "metrics.json").is_file():
        changed = config_changes(cfg, run)
        if changed:
            raise SystemExit(f"{run} is a finished run of another config (changed: {', '.join(changed)}); "
                             "pass the overrides it was trained with, or another name=")
        t_train = json.loads((run / "metrics.json").read_text())["seconds"]
    else:
        t0 = time.perf_counter()
        run = finetune(cfg, resume=args.resume)
        t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = evaluate_run(run, split=args.split, modes=args.modes.split(","), units="px")
    t_eval = time.perf_counter() - t0
    summary = report.summary()
    name = cfg.name or Path(args.config).stem
    dataset, experiment = parse_result(args.result) if args.result else result_name(name, "finetune")
    if args.split == "test" and not args.result:
        experiment += "_test"  # beside the val figures, not over them
    about = (
        f"Config `{args.config}` {' '.join(args.overrides)}; backbone {cfg.backbone}; adapter {cfg.adapter}; "
        f"{cfg.train.epochs} epochs; best epoch selected on the val split, evaluated on "
        + ("the same val split " if args.split == "val" else "the test split (`data.test`, never used for a choice) ")
        + "(mean 3-D Dice per case; HD95 in pixels).\n\n"
        f"Training {t_train / 60:.1f} min (the run's last `medadapt finetune` call: a resumed run's "
        f"earlier calls are not counted), evaluation {t_eval / 60:.1f} min.\n"
    )
    md = about + "\n" + report.table() + "\n"
    logs = {"log.csv": run / "log.csv"} if (run / "log.csv").is_file() else {}
    path = write_result(dataset, experiment, {"config": cfg.to_dict(), "split": args.split, "summary": summary, "train_s": t_train,
                                              "eval_s": t_eval, "run": str(run)},
                        about + "\n```\n" + report.table() + "\n```\n", files=logs)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
