"""Semi-supervised vs supervised-only, same labels, schedule and seed.

    .venv/bin/python benchmarks/ssl_benchmark.py configs/acdc/3labeled_ssl.yaml --seeds 0 1 [key=value ...]
        [--result DATASET/EXPERIMENT]

For each seed it trains the config as given (semi-supervised) and its twin
with ``ssl=null`` (supervised-only), both with ``train.seed`` set, in
``OUTPUT/NAME_ssl_s{seed}`` and ``OUTPUT/NAME_sup_s{seed}``. A run folder
that already has ``metrics.json`` is read, not trained again, so the arms can
be trained separately (e.g. in parallel, or one after another) and summarised
here. The table gives automatic-mode mean 3-D Dice on the config's val split
at the best epoch (selected on that same split, the only held-out one here)
and at the last epoch (no selection), per class, and the difference. It goes
to ``benchmarks/results/DATASET/EXPERIMENT/`` (by default run ``acdc_3labeled_ssl``
-> ``acdc/ssl_3labeled``) with each arm's ``log.csv`` as ``log_seed{seed}.csv``
(semi-supervised) and ``log_supervised_seed{seed}.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, write_result  # noqa: E402


def arm_runs(config: str, seed: int, overrides: list[str]) -> dict[str, list[str]]:
    """The overrides of each arm: the same seed, and run names ``NAME_sup_sSEED`` / ``NAME_ssl_sSEED``."""
    from medadapt.recipes import load_config

    base = load_config(config, overrides).name or Path(config).stem
    common = [*overrides, f"train.seed={seed}"]
    return {"supervised": [*common, "ssl=null", f"name={base}_sup_s{seed}"],
            "semi-supervised": [*common, f"name={base}_ssl_s{seed}"]}


def default_result(config: str, overrides: list[str]) -> tuple[str, str]:
    """``acdc_3labeled_ssl`` -> ``("acdc", "ssl_3labeled")``: the run name's dataset, then ``ssl_`` and the rest."""
    from medadapt.recipes import load_config

    dataset, _, rest = (load_config(config, overrides).name or Path(config).stem).partition("_")
    rest = "_".join(t for t in rest.split("_") if t and t != "ssl")
    return dataset, f"ssl_{rest}" if rest else "ssl"


def summarise(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    hist = [h for h in m["history"] if "val_dice" in h]
    best = max(hist, key=lambda h: h["val_dice"])
    last = hist[-1]
    return {"best_epoch": best["epoch"], "best": best["val_dice"], "best_per_class": best["per_class"],
            "last_epoch": last["epoch"], "last": last["val_dice"], "last_per_class": last["per_class"],
            "pseudo_dice_last": last.get("pseudo_dice"), "seconds": m["seconds"], "run": str(run)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: from the run name)")
    args = ap.parse_args(argv)

    from medadapt.recipes import finetune, load_config
    from medadapt.training.run_folder import run_folder

    rows, out, logs = [], {"config": args.config, "overrides": args.overrides, "seeds": {}}, {}
    for seed in args.seeds:
        res = {}
        for arm, ov in arm_runs(args.config, seed, args.overrides).items():
            cfg = load_config(args.config, ov)
            run = run_folder(cfg)
            if not (run / "metrics.json").is_file():
                finetune(cfg, resume=(run / "checkpoints" / "last.pt").is_file())
            res[arm] = summarise(run)
            if (run / "log.csv").is_file():
                logs[f"log_{'supervised_' if arm == 'supervised' else ''}seed{seed}.csv"] = run / "log.csv"
        out["seeds"][seed] = res
        s, u = res["supervised"], res["semi-supervised"]
        classes = list(s["best_per_class"])
        for arm, r in res.items():
            rows.append(f"| {seed} | {arm} | {r['best']:.3f} (epoch {r['best_epoch']}) | "
                        + " | ".join(f"{r['best_per_class'][c]:.3f}" for c in classes)
                        + f" | {r['last']:.3f} | {r['seconds'] / 60:.0f} min |")
        rows.append(f"| {seed} | **difference** | **{u['best'] - s['best']:+.3f}** | "
                    + " | ".join(f"{u['best_per_class'][c] - s['best_per_class'][c]:+.3f}" for c in classes)
                    + f" | **{u['last'] - s['last']:+.3f}** | |")
    classes = list(next(iter(out["seeds"].values()))["supervised"]["best_per_class"])
    md = (f"Config `{args.config}` {' '.join(args.overrides)}; automatic mode, mean 3-D Dice per case on the val "
          "split; best epoch selected on that split; last epoch without selection. Wall times include the "
          "one-off encoding of uncached slices.\n\n"
          f"| seed | arm | best | {' | '.join(classes)} | last epoch | wall |\n"
          f"|---|---|---|{'---|' * len(classes)}---|---|\n" + "\n".join(rows) + "\n")
    dataset, experiment = parse_result(args.result) if args.result else default_result(args.config, args.overrides)
    path = write_result(dataset, experiment, out, md, files=logs)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
