"""Clicks to annotate a stream of images: a frozen model against one that learns from each accepted mask.

A simulated user (:func:`medadapt.evaluation.interactive.annotate_stream`) annotates each image of a stream in
turn: it clicks at the centre of the largest wrong region until Dice reaches 0.90 or 20 clicks. Three systems:

* ``frozen``: pretrained LiteMedSAM, clicks only;
* ``frozen_box``: pretrained LiteMedSAM, a tight box first (counted as one click), then clicks: LiteMedSAM
  was trained with boxes and barely answers a lone click, so this is the fairer frozen reference;
* ``replay``: an :class:`~medadapt.training.OnlineLearner` that gets every finished mask and trains
  ``--steps`` decoder steps on a mix of the newest and earlier samples before the next image; each image
  opens with its learned automatic proposal once the class exists;
* ``no_replay``: the same, training on the newest sample only;
* ``replay_guided``: ``replay`` with a user who follows the app's guidance: each click goes to the largest
  wrong region inside the region the model is least sure of (:mod:`medadapt.inference.guidance`: the
  answer's margin and its disagreement with the automatic proposal), when that region holds an error.

Streams (reported): HC18 fetal heads, the first 50 images of exams 000-099; ACDC myocardium, the first 50
short-axis slices holding myocardium of train patients 001-... (ED and ES frames, in order). The learner
keeps `OnlineConfig`'s defaults (learning rate chosen on synthetic streams) and trains ``--steps`` steps per
image, fixed beforehand: nothing is chosen on the reported streams (``--sets hc18_dev acdc_dev``, HC18 exams
100-129 and ACDC val patients, are there for choosing settings). NoC@90 is reported over the last 25 images of each stream: a
learner is judged once it has seen some images. Each finished (set, system) is appended to
RUN/results.jsonl, so a stopped run resumes where it was.

    python benchmarks/interactive_stream.py --sets hc18 acdc --run runs/interactive
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_root, write_result  # noqa: E402

from medadapt.core.errors import MedAdaptError  # noqa: E402
from medadapt.evaluation.interactive import annotate_stream, summarize_sessions  # noqa: E402
from medadapt.foundation import build_backbone  # noqa: E402
from medadapt.inference import Segmenter  # noqa: E402
from medadapt.io.imaging import load_image, load_mask  # noqa: E402
from medadapt.training import OnlineConfig, OnlineLearner  # noqa: E402
from medadapt.training.config import apply_overrides  # noqa: E402

SYSTEMS = ("frozen", "frozen_box", "replay", "no_replay", "replay_guided")
CLASS = {"hc18": "fetal head", "hc18_dev": "fetal head", "acdc": "myocardium", "acdc_dev": "myocardium"}


def hc18_stream(root: Path, exams: range, n: int):
    folder = root / "hc18"
    images = sorted(p for p in (folder / "images").glob("*.png") if int(p.name[:3]) in exams)[:n]
    for p in images:
        yield p.stem, load_image(p), load_mask(folder / "masks" / p.name) > 0


def acdc_stream(root: Path, split: str, n: int, label: int = 2):
    img_dir, lab_dir = (("imagesTr", "labelsTr") if split == "train" else ("imagesVal", "labelsVal"))
    count = 0
    for p in sorted((root / "acdc" / img_dir).glob("*.nii.gz")):
        lab_path = root / "acdc" / lab_dir / p.name
        z = 0
        while count < n:
            try:
                target = load_mask(lab_path, slice_index=z, axis=2) == label
            except Exception:  # past the last slice
                break
            if target.sum() >= 20:
                count += 1
                yield f"{p.name[:-7]}_z{z}", load_image(p, slice_index=z, axis=2), target
            z += 1
        if count >= n:
            return


def stream(root: Path, name: str, n: int):
    if name == "hc18":
        return hc18_stream(root, range(0, 100), n)
    if name == "hc18_dev":
        return hc18_stream(root, range(100, 130), n)
    if name == "acdc":
        return acdc_stream(root, "train", n)
    if name == "acdc_dev":
        return acdc_stream(root, "val", n)
    raise SystemExit(f"unknown set {name}; choose from hc18, acdc, hc18_dev, acdc_dev")


def run_system(root: Path, name: str, system: str, args, folder: Path) -> dict:
    seg = Segmenter(build_backbone("litemedsam"), device="cpu")
    learner = None
    if system in ("replay", "no_replay", "replay_guided"):
        shutil.rmtree(folder, ignore_errors=True)
        config = OnlineConfig.from_dict({**online_overrides(args.online), "replay": system != "no_replay",
                                         "batch_size": args.batch, "seed": args.seed})
        learner = OnlineLearner(seg, folder, config)
    start = time.perf_counter()

    def show(i, s):
        print(f"  {name} {system} {i + 1:3d} {s.image_id:24s} noc90 {s.noc(0.9):2d} dice0 {s.dice[0]:.3f} "
              f"{s.seconds:.1f}s", flush=True)

    sessions = annotate_stream(seg, stream(root, name, args.images), CLASS[name], learner=learner,
                               steps_per_image=args.steps if learner else 0,
                               first="box" if system == "frozen_box" else "click",
                               guided=system.endswith("_guided"), local=args.local, on_image=show)
    wall = time.perf_counter() - start
    return {
        "set": name, "system": system, "wall_s": wall,
        "online": None if learner is None else learner.config.to_dict(),
        "overrides": online_overrides(args.online), "local": args.local, "steps": args.steps, "batch": args.batch,
        "last": summarize_sessions(sessions, last=args.last), "all": summarize_sessions(sessions),
        "sessions": [{"id": s.image_id, "dice": s.dice, "clicks": s.clicks, "seconds": s.seconds} for s in sessions],
    }


def online_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs (``--online proposal_clicks=2``) as an ``OnlineConfig`` section; values read as YAML."""
    try:
        return apply_overrides({}, pairs)  # as `medadapt annotate --online` reads them
    except MedAdaptError as exc:
        raise SystemExit(f"--online takes KEY=VALUE pairs of OnlineConfig: {exc}") from None


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"Simulated user: clicks at the centre of the largest wrong region until Dice 0.90 or 20 clicks; "
        f"{args.images} images per stream; learners train {args.steps} decoder steps (batch {args.batch}, "
        "`OnlineConfig` defaults otherwise) after each accepted image. `frozen_box` draws a tight box first "
        f"(one click). NoC and Dice@k: mean over the last {args.last} images (in brackets: over all). Wall time: "
        "the whole stream, model and learner, on the CPU. Each (stream, system) runs once and is kept in "
        "RUN/results.jsonl; the table holds every one finished there.", "",
        "| stream | system | NoC@85 | NoC@90 | Dice@0 | Dice@1 | Dice@3 | Dice@5 | not at 0.90 | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["last"], r["all"]
        lines.append(
            f"| {r['set']} | {r['system']} | {a['noc@85']:.2f} ({b['noc@85']:.2f}) | {a['noc@90']:.2f} "
            f"({b['noc@90']:.2f}) | {a['dice@0']:.3f} | {a['dice@1']:.3f} | {a['dice@3']:.3f} | {a['dice@5']:.3f} "
            f"| {a['failed@90']} | {r['wall_s']:.0f} |")
    by = {(r["set"], r["system"]): r["last"]["noc@90"] for r in rows}
    for name in dict.fromkeys(r["set"] for r in rows):
        if (name, "frozen") in by and (name, "replay") in by and by[(name, "frozen")] > 0:
            cut = 1 - by[(name, "replay")] / by[(name, "frozen")]
            line = (f"\n{name}: online learning with replay needs {100 * cut:.0f}% fewer clicks to Dice 0.90 than "
                    "the frozen model (last images)")
            if by.get((name, "frozen_box"), 0) > 0:
                line += f", {100 * (1 - by[(name, 'replay')] / by[(name, 'frozen_box')]):.0f}% fewer than the frozen " \
                        "model given a box first"
            lines.append(line + ".")
        if (name, "replay_guided") in by and (name, "replay") in by:
            lines.append(f"\n{name}: following guidance, the user needs {by[(name, 'replay_guided')]:.2f} clicks to Dice "
                         f"0.90 against {by[(name, 'replay')]:.2f} without (last images, both with replay).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["hc18", "acdc"])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--last", type=int, default=25)
    ap.add_argument("--steps", type=int, default=8, help="learner steps after each accepted image")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--local", action="store_true", help="clicks change the answer only near them "
                    "(medadapt.inference.local), for every system")
    ap.add_argument("--online", nargs="*", default=[], metavar="KEY=VALUE",
                    help="OnlineConfig settings for the learners (defaults otherwise), e.g. proposal_clicks=2")
    ap.add_argument("--data-root")
    ap.add_argument("--run", default="runs/interactive", help="resumable run folder")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results")
    ap.add_argument("--experiment", default=None, help="write the table under benchmarks/results/SET/EXPERIMENT, "
                    "the dev streams' too (a settings comparison on them); default: interactive_stream, reported "
                    "streams only")
    args = ap.parse_args()
    root = data_root(args.data_root)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    log = run / "results.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["set"], r["system"])] = r
    wanted = {"overrides": online_overrides(args.online), "local": args.local, "steps": args.steps,
              "batch": args.batch}
    for name in args.sets:
        for system in args.systems:
            if (name, system) in done:
                old = done[(name, system)]
                differ = [k for k, v in wanted.items() if k in old and old[k] != v]
                if differ:
                    raise SystemExit(f"{run} holds {name}/{system} run with other settings ({', '.join(differ)}); "
                                     "give another --run folder for these settings")
                continue
            r = run_system(root, name, system, args, run / f"learner_{name}_{system}")
            done[(name, system)] = r
            with log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{name} {system}: {r['last']} ({r['wall_s']:.0f} s)", flush=True)
    # the table holds every system finished in RUN for these sets, not only those run by this call
    rows = [done[(n, s)] for n in args.sets for s in SYSTEMS if (n, s) in done]
    text = markdown(rows, args)
    print(text)
    if not args.no_write:
        for name in dict.fromkeys(r["set"] for r in rows):
            if name.endswith("_dev") and args.experiment is None:
                continue
            mine = [r for r in rows if r["set"] == name]
            settings = {k: getattr(args, k) for k in ("images", "last", "steps", "batch", "seed", "online", "local")}
            payload = {"settings": settings, "rows": [{k: v for k, v in r.items() if k != "sessions"} for r in mine]}
            text = markdown(mine, args)
            if args.experiment:
                text += (f"\nSettings of this run: learner overrides {settings['online'] or 'none'}, local corrections "
                         f"{'on' if args.local else 'off'}.\n")
            write_result(name, args.experiment or "interactive_stream", payload, text,
                         title=f"Interactive annotation of a {name} stream: clicks with and without online learning")


if __name__ == "__main__":
    main()
