"""Promptable-inference cost on this machine: encode once, decode per prompt.

Measures with the real LiteMedSAM (bundled weights) on a real HC18 image
(or a synthetic one with ``--synthetic``):

* encoder time per image (``set_image``),
* decoder time per prompt (``predict`` with 1 and 16 boxes),
* end-to-end cost of one image with 16 boxes relative to one box. Encoding
  once, it should be at most 2.5x; re-encoding per prompt would be ~16x.

Medians over ``--repeats`` runs after ``--warmup`` runs. Written to
``benchmarks/results/speed/predict_<device>/``.

    .venv/bin/python benchmarks/predict_speed.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import median_time, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model", default="litemedsam")
    args = ap.parse_args(argv)

    from medadapt import Segmenter
    from medadapt.demo import demo_root
    from medadapt.io.imaging import load_image

    seg = Segmenter.from_pretrained(args.model)
    image = load_image(demo_root() / "hc18" / "images" / "100_HC.png")
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, w * 0.5, 16)
    y0 = rng.uniform(0, h * 0.5, 16)
    boxes = np.stack([x0, y0, x0 + w * 0.4, y0 + h * 0.4], 1).tolist()

    t_encode = median_time(lambda: seg.set_image(image), args.repeats, args.warmup)
    seg.set_image(image)
    t_dec1 = median_time(lambda: seg.predict(boxes=boxes[:1]), args.repeats, args.warmup)
    t_dec16 = median_time(lambda: seg.predict(boxes=boxes), args.repeats, args.warmup)

    def e2e(n):
        seg.set_image(image)
        seg.predict(boxes=boxes[:n])

    t_e2e1 = median_time(lambda: e2e(1), args.repeats, args.warmup)
    t_e2e16 = median_time(lambda: e2e(16), args.repeats, args.warmup)
    ratio = t_e2e16 / t_e2e1
    md = (
        f"Backbone `{args.model}` on {seg.device}, one HC18 image ({w}x{h}); medians of {args.repeats} runs "
        f"after {args.warmup} warm-up runs; {torch.get_num_threads()} torch threads.\n\n"
        "| what | time |\n|---|---|\n"
        f"| image encoding (`set_image`) | {t_encode * 1000:.0f} ms |\n"
        f"| decoding, 1 box (`predict`) | {t_dec1 * 1000:.1f} ms |\n"
        f"| decoding, 16 boxes in one batch | {t_dec16 * 1000:.1f} ms ({t_dec16 / 16 * 1000:.1f} ms per prompt) |\n"
        f"| end to end, 1 box | {t_e2e1 * 1000:.0f} ms |\n"
        f"| end to end, 16 boxes | {t_e2e16 * 1000:.0f} ms |\n\n"
        f"16 boxes cost {ratio:.2f}x one box (limit 2.5x; re-encoding per prompt would be about 16x): "
        f"{'PASS' if ratio <= 2.5 else 'FAIL'}.\n"
    )
    path = write_result(
        "speed", f"predict_{seg.device.type}",
        {"model": args.model, "device": str(seg.device), "encode_s": t_encode, "decode_1_s": t_dec1,
         "decode_16_s": t_dec16, "e2e_1_s": t_e2e1, "e2e_16_s": t_e2e16, "ratio_16_vs_1": ratio},
        md,
    )
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
