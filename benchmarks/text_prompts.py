"""Learned text prompts on a fine-tuned run: texts (seen and unseen phrasings) against automatic mode.

    .venv/bin/python benchmarks/text_prompts.py runs/acdc_3labeled [--alias "left ventricle=LV" ...]
        [--text "LV cavity=left ventricle" ...] [--result DATASET/EXPERIMENT]

Fits the run's text head with :func:`medadapt.training.train_text_prompts`
(the function ``medadapt finetune`` calls when the config has ``prompts.text``;
the fit reads only the class names, aliases and templates, never images, so
fitting it after training gives the head training would have given), saves the
adapter with it to ``RUN/adapter_text/``, then runs ``medadapt evaluate`` on
the run's validation split in automatic mode plus one mode per text. Writes
``benchmarks/results/DATASET/text_prompts/`` (DATASET: the first part of the
run's name, ``acdc_3labeled`` -> ``acdc``): mean 3-D Dice per case of each text
next to automatic mode for the class it names.

The defaults are the ACDC protocol of issue #7: training names = the dataset's
class names plus the abbreviations ACDC itself uses (RV, MYO, LV); texts =
the training name "left ventricle" and three phrasings never seen in training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, write_result  # noqa: E402

ALIASES = ["right ventricle=RV", "myocardium=MYO", "left ventricle=LV"]
TEXTS = ["left ventricle=left ventricle", "LV cavity=left ventricle", "left ventricular blood pool=left ventricle",
         "heart muscle=myocardium", "RV cavity=right ventricle", "myocardial wall=myocardium"]
SEEN = {"left ventricle"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--alias", action="append", default=None, help="CLASS=ALIAS added to the training names")
    ap.add_argument("--text", action="append", default=None, help="TEXT=CLASS scored against CLASS")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: DATASET/text_prompts)")
    args = ap.parse_args(argv)

    from medadapt.adapters import LearnedTextConfig, load_adapted, read_adapter_info, save_adapter
    from medadapt.cli import split_pair
    from medadapt.evaluation.evaluate import evaluate_run
    from medadapt.training import train_text_prompts

    run = Path(args.run)
    aliases: dict[str, list[str]] = {}
    for cls, alias in (split_pair(a, "--alias", "CLASS=ALIAS") for a in args.alias or ALIASES):
        aliases.setdefault(cls, []).append(alias)
    texts = dict(split_pair(t) for t in args.text or TEXTS)
    t0 = time.perf_counter()
    info = read_adapter_info(run / "adapter")
    model = load_adapted(run / "adapter")
    cfg = LearnedTextConfig(aliases=aliases)
    fit = train_text_prompts(model, cfg)
    save_adapter(model, run / "adapter_text", metadata=info.get("metadata"))
    t_fit = time.perf_counter() - t0
    report = evaluate_run(run / "adapter_text", split="val", modes=["automatic"], texts=texts, student=False,
                          out_dir=run / "eval_val_text", limit=args.limit, units="px")
    t_eval = time.perf_counter() - t0 - t_fit
    summary = report.summary()

    def mean_dice(mode: str, cls: str) -> float:
        return next(float(r["dice_mean"]) for r in summary if r["mode"] == mode and r["class"] == cls)

    rows, data = [], {}
    for text, cls in texts.items():
        auto, got = mean_dice("automatic", cls), mean_dice(f"text:{text}", cls)
        seen = "seen in training" if text in SEEN or text in aliases.get(cls, []) else "unseen"
        rows.append(f"| {text} | {seen} | {cls} | {auto:.3f} | {got:.3f} | {100 * (got - auto):+.1f} |")
        data[text] = {"class": cls, "seen": seen, "automatic_dice": auto, "text_dice": got}
    md = (
        f"Run `{run}`; text head fitted on {len(cfg.templates)} templates x (class names + aliases {aliases}) "
        f"with {cfg.encoder} (fit: loss {fit['loss']:.4f}, training accuracy {fit['accuracy']:.2f}); "
        f"evaluated on the run's val split (mean 3-D Dice per case). Fit {t_fit:.0f} s, evaluation "
        f"{t_eval / 60:.1f} min.\n\n"
        "| text | in training | class | automatic Dice | text Dice | difference (points) |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
    )
    dataset, experiment = parse_result(args.result) if args.result else (run.name.partition("_")[0], "text_prompts")
    path = write_result(dataset, experiment, {"run": str(run), "aliases": aliases, "fit": fit, "texts": data,
                               "summary": summary, "fit_s": t_fit, "eval_s": t_eval}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
