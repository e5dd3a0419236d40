"""What each adaptation mode costs on LiteMedSAM: parameters, checkpoint size, step time, peak memory.

Modes (batch 4, 256 px, one box per image, BCE + Dice loss, AdamW):

* decoder only (encoder frozen, run without gradients; and with cached embeddings),
* LoRA rank 4 on the encoder attention + the full mask decoder,
* spatial adapters (all encoder blocks) + the mask decoder,
* full fine-tuning.

Each mode runs in its own process so that peak memory (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) is its own. Step time is the
median of ``--steps`` steps after one warm-up step. Written to
``benchmarks/results/speed/adapter_cost_<device>/``.

    .venv/bin/python benchmarks/adapter_cost.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {
    "decoder only (cached embeddings)": {"train": ["mask_decoder"], "cached": True},
    "decoder only": {"train": ["mask_decoder"]},
    "LoRA r4 encoder attention + decoder": {"lora": {"rank": 4, "alpha": 8, "targets": ["encoder_attention"]}, "train": ["mask_decoder"]},
    "spatial adapters + decoder": {"spatial": {}, "train": ["mask_decoder"]},
    "full fine-tuning": {"train": ["image_encoder", "prompt_encoder", "mask_decoder"]},
}


def run_mode(name: str, device: str, steps: int, batch: int, amp: bool = False, data: str | None = None,
             min_seconds: float = 5.0) -> dict:
    """Time one mode (median of at least ``steps`` steps and ``min_seconds``); ``amp`` = bf16 autocast
    as ``medadapt finetune`` uses it where bf16 is fast."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from medadapt.adapters import AdapterConfig, apply, save_adapter, set_train_mode
    from medadapt.foundation import build_backbone

    spec = dict(MODES[name])
    cached = spec.pop("cached", False)
    model, summary = apply(build_backbone("litemedsam"), AdapterConfig.from_dict(spec))
    model.to(device)
    set_train_mode(model, True)
    if not any(p.requires_grad for p in model.image_encoder.parameters()):
        model.image_encoder.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if data:  # real images (speed.py writes them; the same files feed the peer's trainer)
        x, boxes, target = load_batch(data, batch, model)
        x, boxes, target = x.to(device), boxes.to(device), target.to(device)
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, 256, 256, generator=g).to(device)
        boxes = torch.tensor([[40.0, 50.0, 200.0, 210.0]] * batch, device=device)
        target = (torch.rand(batch, 1, 256, 256, generator=g) > 0.5).float().to(device)
    with torch.no_grad():
        emb_cache = model.encode(x) if cached else None
        if cached and amp:  # the trainer's cache hands bf16 embeddings to a bf16-autocast step
            emb_cache = emb_cache.bfloat16()

    def autocast():
        if not amp:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = forward()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward():
        if cached:
            emb = emb_cache
        elif any(p.requires_grad for p in model.image_encoder.parameters()):
            emb = model.encode(x)
        else:
            with torch.no_grad():
                emb = model.encode(x)
        sparse, dense = model.encode_prompts(boxes=boxes)
        logits, _ = model.decode(emb, sparse, dense)
        prob = torch.sigmoid(logits.float())
        dice = 1 - (2 * (prob * target).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(logits.float(), target) + dice.mean()

    step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    while len(times) < steps or sum(times) < min_seconds:  # fast modes: enough steps for a stable median
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_adapter(model, tmp)
        size = os.path.getsize(path)
    lora_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "mode": name, "amp": amp, "step_s": statistics.median(times), "peak_mib": peak,
        "trainable": summary.trainable, "total": summary.total, "checkpoint_bytes": size, "lora_bytes": lora_bytes,
    }


def load_batch(folder: str, batch: int, model):
    """The first ``batch`` samples of a folder of ``.npz`` files (image 256x256x3, mask, box)."""
    import numpy as np
    import torch

    files = sorted(Path(folder).glob("*.npz"))[:batch]
    xs, bs, ts = [], [], []
    for f in files:
        with np.load(f) as z:
            pixels, _ = model.processor.preprocess(z["image"])
            xs.append(pixels[0])
            bs.append(torch.as_tensor(z["box"], dtype=torch.float32).reshape(4))
            ts.append(torch.as_tensor(z["mask"] > 0, dtype=torch.float32)[None])
    return torch.stack(xs), torch.stack(bs), torch.stack(ts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:  # child process
        print(json.dumps(run_mode(args.mode, args.device, args.steps, args.batch)))
        return
    from benchmarks.common import write_result

    rows = []
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, "-W", "ignore", __file__, "--mode", mode, "--device", args.device,
             "--steps", str(args.steps), "--batch", str(args.batch)],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1], flush=True)
    mem = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak RSS of the process"
    md = (
        f"LiteMedSAM, batch {args.batch}, 256 px, device {args.device}; step = forward + backward + AdamW, "
        f"median of {args.steps} steps after a warm-up step. Memory: {mem}.\n\n"
        "| mode | trainable params | share | adapter checkpoint | of which LoRA | step time | memory |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        md += (
            f"| {r['mode']} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | "
            f"{r['checkpoint_bytes'] / 2**20:.2f} MiB | {r['lora_bytes'] / 2**10:.0f} KiB | "
            f"{r['step_s']:.2f} s | {r['peak_mib']:.0f} MiB |\n"
        )
    path = write_result("speed", f"adapter_cost_{args.device.split(':')[0]}", {"rows": rows, "batch": args.batch}, md)
    print(md)
    print(f"written to {path}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
