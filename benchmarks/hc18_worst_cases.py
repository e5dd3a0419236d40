"""Where an HC18 run's automatic mode fails: its worst validation images, overlaid.

    .venv/bin/python benchmarks/hc18_worst_cases.py runs/hc18_10labeled [--exams 100-129] [--n 6]
        [--result DATASET/EXPERIMENT]

Prints the lowest per-image Dice values and writes a grid to
``worst_val.png`` in the run's result folder (run ``hc18_10labeled`` ->
``benchmarks/results/hc18/finetune_10labeled/``): blue = predicted, yellow = the
part of the ground truth that the prediction misses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    add_run_arguments,
    hc18_images,
    parse_result,
    result_dir,
    result_name,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: from the run name)")
    args = ap.parse_args(argv)

    from PIL import Image

    from medadapt import Segmenter
    from medadapt.core.files import atomic_write
    from medadapt.evaluation.metrics import binary_dice
    from medadapt.io.imaging import load_image, load_mask
    from medadapt.io.overlay import overlay

    root, files = hc18_images(args.data_root, args.exams)
    seg = Segmenter.from_pretrained("litemedsam", adapter=args.run)
    res = []
    for f in files:
        img, gt = load_image(f), load_mask(root / "masks" / f.name) > 0
        seg.set_image(img)
        m = seg.predict().masks[0]
        res.append((binary_dice(m, gt), f.name, m, gt, img))
    res.sort(key=lambda r: r[0])
    print("lowest Dice:", ", ".join(f"{n} {d:.3f}" for d, n, *_ in res[: 2 * args.n]))
    cols, w, h = 3, 320, 216
    grid = Image.new("RGB", (cols * w, h * -(-args.n // cols)))
    for i, (_, _, m, gt, img) in enumerate(res[: args.n]):
        tile = Image.fromarray(overlay(img, np.stack([m, gt & ~m]))).resize((w, h))
        grid.paste(tile, ((i % cols) * w, (i // cols) * h))
    out = result_dir(*(parse_result(args.result) if args.result else result_name(Path(args.run).name, "finetune")))
    out = atomic_write(out / "worst_val.png", lambda tmp: grid.save(tmp))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
