"""Make a backbone fast for inference: folded BatchNorm, bfloat16, channels-last.

Where the time goes (``benchmarks/speed.py``, LiteMedSAM on the 2-core
AVX512-BF16 CPU): the float32 image encoder is memory-bound in TinyViT's first
stage (BatchNorm and GELU over 256 x 256 x 256 activations). Three changes
that do not alter what the model computes beyond bfloat16 rounding pay most:

* fold each eval-mode ``Conv2d`` + ``BatchNorm2d`` pair into one convolution
  (exact up to float rounding; removes one pass over the largest tensors);
* bfloat16 weights and activations where the hardware multiplies bf16 fast
  (CUDA with bf16, CPUs with AMX or AVX512-BF16): 3x the float32 matmul
  throughput on the benchmark CPU, which has AVX512-BF16 but no AMX;
* channels-last memory layout for the convolutions.

The prompt encoder stays float32 (it maps pixel coordinates through a random
Fourier basis, where bf16 would move boxes by pixels); the decoder receives its
inputs cast to its own dtype by :meth:`Backbone.decode`. What bf16 costs in
agreement is measured, not assumed: on the benchmark images bf16 masks agree
with float32 masks at mean Dice 0.99 (minimum 0.96). That is less movement
than the float32 model shows itself when every pixel is perturbed by less than
half a grey level (mean 0.988, minimum 0.94), so it is within what the model
can resolve; ``precision="float32"`` remains for bit-for-bit comparisons.

Optimised backbones are for inference only: folding BatchNorm removes the
layers that training would update, so :func:`optimize_for_inference` marks the
model and training refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..adapters.apply import merge_lora
from ..core.errors import MedAdaptError

Precision = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_is_fast(device: torch.device | str) -> bool:
    """bfloat16 pays on CUDA GPUs with bf16 and on CPUs with AMX / AVX512-BF16.

    Measured on our 2-core AVX512-BF16 CPU: 410 GFLOP/s in bf16 matmul against
    135 in float32 (the brief reports about 1700 against 330 on an AMX CPU); on
    CPUs without these units bf16 is emulated and slower than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """``"auto"`` -> bfloat16 where it is fast on ``device``, else float32."""
    if precision == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    if precision not in _DTYPES:
        raise MedAdaptError(f"unknown precision {precision!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
    dtype = _DTYPES[precision]
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise MedAdaptError("float16 is for CUDA; on CPU use precision='bfloat16' (or 'auto')")
    return dtype


def fold_batchnorm(module: nn.Module) -> int:
    """Replace every eval-mode ``Sequential(Conv2d, BatchNorm2d)`` by one Conv2d; returns the count.

    TinyViT (LiteMedSAM) builds its convolutions this way; SAM's ViT has none,
    so this is a no-op there.
    """
    folded = 0
    for name, child in list(module.named_children()):
        if (
            isinstance(child, nn.Sequential)
            and len(child) == 2
            and isinstance(child[0], nn.Conv2d)
            and isinstance(child[1], nn.BatchNorm2d)
            and child[1].track_running_stats
        ):
            setattr(module, name, fuse_conv_bn_eval(child[0].eval(), child[1].eval()))
            folded += 1
        else:
            folded += fold_batchnorm(child)
    return folded


@torch.no_grad()
def optimize_for_inference(
    backbone: nn.Module,
    precision: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
) -> nn.Module:
    """Prepare a :class:`~medadapt.foundation.Backbone` (adapted or not) for fast inference, in place.

    Merges LoRA into the base weights, folds BatchNorm into convolutions, casts
    the image encoder and mask decoder to the compute dtype and switches the
    encoder to channels-last. ``compile=True`` also wraps the encoder in
    ``torch.compile`` (on the reference CPU: 1.25x faster after about a minute
    of compilation, so only worth it for long jobs).
    """
    device = next(backbone.parameters()).device
    dtype = resolve_precision(precision, device)
    backbone.eval()
    if backbone.adapter_config is not None and backbone.adapter_config.lora is not None:
        merge_lora(backbone)
    for p in backbone.parameters():
        p.requires_grad_(False)
    fold_batchnorm(backbone.image_encoder)
    backbone.image_encoder.to(dtype)
    backbone.mask_decoder.to(dtype)
    if backbone.context_adapter is not None:
        backbone.context_adapter.to(dtype)
    if backbone.depth_adapter is not None:
        backbone.depth_adapter.to(dtype)
    if backbone.class_prompts is not None:
        backbone.class_prompts.to(dtype)
    if channels_last:
        backbone.image_encoder.to(memory_format=torch.channels_last)
    backbone.compute_dtype = dtype
    backbone.channels_last = channels_last
    backbone.inference_only = True
    if compile:
        backbone.image_encoder = torch.compile(backbone.image_encoder)
    return backbone


__all__ = ["Precision", "bf16_is_fast", "fold_batchnorm", "optimize_for_inference", "resolve_precision"]
