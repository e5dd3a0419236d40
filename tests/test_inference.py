"""Inference optimisation: folded BatchNorm, bf16, channels-last keep masks unchanged within tolerance."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medadapt import Segmenter
from medadapt.core.errors import MedAdaptError
from medadapt.foundation import build_backbone
from medadapt.inference.optimize import fold_batchnorm, optimize_for_inference, resolve_precision


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_fold_batchnorm_is_exact_on_tinyvit():
    bb = build_backbone("tiny_litemedsam").eval()
    x = torch.rand(2, 3, bb.processor.image_size, bb.processor.image_size)
    with torch.no_grad():
        ref = bb.encode(x)
        folded = copy.deepcopy(bb)
        n = fold_batchnorm(folded.image_encoder)
        out = folded.encode(x)
    assert n > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.image_encoder.modules())
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_optimised_litemedsam_masks_match_float32(disc, precision):
    """The real model: optimised masks agree with the unmodified float32 model."""
    image, mask = disc
    ys, xs = np.nonzero(mask)
    boxes = [[xs.min(), ys.min(), xs.max(), ys.max()], [xs.min() - 6, ys.min() - 4, xs.max() + 5, ys.max() + 7]]
    base = Segmenter(build_backbone("litemedsam"), device="cpu")  # precision=None: untouched float32
    fast = Segmenter(build_backbone("litemedsam"), device="cpu", precision=precision)
    assert fast.backbone.compute_dtype == resolve_precision(precision, "cpu")
    base.set_image(image)
    fast.set_image(image)
    ref, out = base.predict(boxes=boxes), fast.predict(boxes=boxes)
    for a, b in zip(ref.masks, out.masks):
        assert _dice(a, b) >= (0.999 if precision == "float32" else 0.98)
    assert np.abs(ref.scores - out.scores).max() < (1e-3 if precision == "float32" else 0.05)
    assert out.logits.dtype == np.float32


def test_optimised_backbone_refuses_training():
    from medadapt.adapters import AdapterConfig, apply

    bb = optimize_for_inference(build_backbone("tiny_litemedsam"), "float32")
    assert bb.inference_only and not any(p.requires_grad for p in bb.parameters())
    with pytest.raises(MedAdaptError, match="optimised for inference"):
        apply(bb, AdapterConfig.from_dict({"train": ["mask_decoder"]}))


def test_lora_adapter_is_merged_for_inference(tmp_path):
    """An adapter with LoRA loads, merges and predicts like the unmerged float32 model."""
    from medadapt.adapters import AdapterConfig, apply, save_adapter

    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig.from_dict(
        {"lora": {"rank": 4, "targets": ["encoder_attention"]}, "train": []}))
    with torch.no_grad():  # non-zero LoRA so that merging matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    save_adapter(model, tmp_path / "adapter")
    unmerged = Segmenter(model, device="cpu")
    merged = Segmenter.from_pretrained("tiny_sam_vit", adapter=tmp_path / "adapter", device="cpu", precision="float32")
    assert not any("lora_" in n for n, _ in merged.backbone.named_parameters())
    image = np.random.default_rng(0).uniform(0, 255, (40, 50)).astype(np.float32)
    unmerged.set_image(image)
    merged.set_image(image)
    a = unmerged.predict(boxes=[[5, 5, 30, 35]]).logits
    b = merged.predict(boxes=[[5, 5, 30, 35]]).logits
    assert np.abs(a - b).max() < 1e-3


def test_precision_errors():
    with pytest.raises(MedAdaptError, match="unknown precision"):
        resolve_precision("int8", "cpu")
    with pytest.raises(MedAdaptError, match="float16 is for CUDA"):
        resolve_precision("float16", "cpu")
    assert resolve_precision("float32", "cpu") == torch.float32


def test_label_maps_hold_large_label_values():
    from medadapt.inference.prediction import label_dtype, paint_labels

    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0], masks[1, 1] = True, True
    assert label_dtype([1, 3]) == np.uint8 and label_dtype([300]) == np.uint16 and label_dtype([70000]) == np.uint32
    labels = paint_labels(masks, [40000, 7])
    assert labels.dtype == np.uint16 and (labels[0] == 40000).all() and (labels[1] == 7).all() and labels[2:].sum() == 0
