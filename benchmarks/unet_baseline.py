"""From-scratch baseline: a MONAI 2-D UNet trained on the same labelled slices.

    .venv/bin/python benchmarks/unet_baseline.py configs/acdc/3labeled.yaml [key=value ...] [--iterations 3000]
        [--result DATASET/EXPERIMENT]

Same data config, same labelled cases, same validation cases and the same
metric (mean 3-D Dice per case via medadapt.evaluation) as the fine-tuned
model; the UNet sees 256 x 256 resized slices with flips/rotations, Dice+CE
loss, Adam. The last iteration is evaluated (no selection on validation).
Written to ``benchmarks/results/DATASET/unet_baseline/`` (DATASET: the first
part of the config's name, ``acdc_3labeled`` -> ``acdc``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parse_result, write_result  # noqa: E402

SIZE = 256


def norm(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    if x.ndim == 3:
        x = x.mean(-1)
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    return F.interpolate(x[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", default=None, help="DATASET/EXPERIMENT (default: DATASET/unet_baseline)")
    args = ap.parse_args(argv)

    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from medadapt.data import DataConfig, SliceDataset, discover_cases, load_volume_case, split_cases
    from medadapt.evaluation.metrics import dice_per_class
    from medadapt.recipes import load_config

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dcfg = DataConfig.from_dict(cfg.data)
    splits = split_cases(dcfg, discover_cases(dcfg))
    train = SliceDataset(splits["labeled"], dcfg, keep="labeled")
    c = len(train.class_names)
    xs = torch.stack([norm(s.image) for s in train.slices])
    ys = torch.stack([F.interpolate(torch.from_numpy(s.label).float()[None, None], size=(SIZE, SIZE), mode="nearest")[0]
                      for s in train.slices]).long()
    net = UNet(spatial_dims=2, in_channels=1, out_channels=c + 1, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=args.iterations, power=0.9)
    t0 = time.perf_counter()
    net.train()
    for it in range(args.iterations):
        idx = rng.integers(0, len(xs), args.batch)
        x, y = xs[idx], ys[idx]
        k = int(rng.integers(4))
        x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))
        if rng.random() < 0.5:
            x, y = x.flip(3), y.flip(3)
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        if it % 200 == 0:
            print(f"iteration {it} loss {loss.item():.4f}", flush=True)
    t_train = time.perf_counter() - t0
    net.eval()
    values = list(range(1, c + 1))
    per_case = []
    with torch.no_grad():
        for case in splits["val"]:
            vol, lab = load_volume_case(case, dcfg)
            pred = np.zeros(lab.shape, np.int64)
            for z in range(vol.shape[0]):
                if np.ptp(vol[z]) == 0:
                    continue
                logits = net(norm(vol[z])[None])
                logits = F.interpolate(logits, size=lab.shape[1:], mode="bilinear", align_corners=False)
                pred[z] = logits.argmax(1)[0].numpy()
            per_case.append(dice_per_class(pred, lab, values))
    per_class = {n: float(np.mean([d[v] for d in per_case])) for n, v in zip(train.class_names, values)}
    mean = float(np.mean(list(per_class.values())))
    md = (
        f"MONAI UNet (2-D, channels 16-256, 2 residual units) from scratch on the labelled slices of "
        f"`{args.config}` {' '.join(args.overrides)} ({len(xs)} slices), {args.iterations} iterations of batch "
        f"{args.batch}, Dice+CE, Adam 1e-3 with polynomial decay; evaluated at the last iteration on the val "
        f"split ({len(per_case)} cases), mean 3-D Dice per case.\n\n"
        "| class | Dice |\n|---|---|\n" + "".join(f"| {n} | {v:.4f} |\n" for n, v in per_class.items())
        + f"| **mean** | **{mean:.4f}** |\n\nTraining {t_train / 60:.1f} min.\n"
    )
    dataset, experiment = (parse_result(args.result) if args.result
                           else ((cfg.name or Path(args.config).stem).partition("_")[0], "unet_baseline"))
    path = write_result(dataset, experiment, {"per_class": per_class, "mean": mean, "train_s": t_train,
                                              "iterations": args.iterations}, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
