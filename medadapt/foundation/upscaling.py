"""SAM's mask upscaling and mask product as per-pixel matrix products.

SAM's mask decoder upscales the image tokens 4x with two transposed
convolutions of kernel 2 and stride 2, a channel LayerNorm and GELUs, then
takes the dot product of each output pixel with each mask token's
hypernetwork vector. A kernel-2, stride-2 transposed convolution has no
overlap: every input pixel owns its own 2 x 2 output block. So the whole path
is per input pixel, and can run on the transformer's token layout
(B x HW x C, which is channels-last) as plain ``linear`` calls, with the
spatial interleaving done once on the small K-channel mask at the end.

Why: on CPU, the convolution path spent most of a cached training step's
upscaling time in transposed-convolution backward kernels (about 18 GFLOP/s)
and in layout copies of the two largest activations. The matrix form computes
the same function (checked against the module path in the tests) with large,
well-shaped GEMMs. Decoders whose upscaling is not exactly this shape (for
example with LoRA on those layers) take the module path unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _is_plain_upscaling(up: nn.Module) -> bool:
    """True if ``up`` is SAM's ConvT(2, 2) -> LayerNorm2d -> GELU -> ConvT(2, 2) -> GELU, untouched."""
    if not isinstance(up, nn.Sequential) or len(up) != 5:
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in up.modules()):
        return False  # someone watches these modules (e.g. feature extraction): run them
    c1, ln, a1, c2, a2 = up
    for conv in (c1, c2):
        if type(conv) is not nn.ConvTranspose2d or conv.bias is None:
            return False
        if (conv.kernel_size, conv.stride, conv.padding, conv.output_padding, conv.dilation, conv.groups) != (
            (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1
        ):
            return False
    if type(ln).__name__ != "LayerNorm2d" or not all(hasattr(ln, k) for k in ("weight", "bias", "eps")):
        return False
    return type(a1) is nn.GELU and type(a2) is nn.GELU


def _as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the per-pixel linear map C_in -> (2, 2, C_out) that ``conv`` applies."""
    cin, cout = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout).t()
    return weight, conv.bias.repeat(4)


def upscale_masks(up: nn.Module, tokens: torch.Tensor, h: int, w: int, hyper: torch.Tensor) -> torch.Tensor:
    """Image tokens B x (h*w) x C and hypernetwork outputs B x K x C' -> mask logits B x K x 4h x 4w.

    Equal to ``hyper @ up(tokens as B x C x h x w)`` for SAM's upscaling
    module, computed without transposed convolutions or activation transposes.
    """
    b, _, c = tokens.shape
    k = hyper.shape[1]
    if not _is_plain_upscaling(up):
        upscaled = up(tokens.transpose(1, 2).reshape(b, c, h, w).contiguous())
        _, cu, hu, wu = upscaled.shape
        return (hyper @ upscaled.reshape(b, cu, hu * wu)).reshape(b, k, hu, wu)
    conv1, norm, act1, conv2, act2 = up
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1, b1 = _as_linear(conv1)
    x = F.linear(tokens, w1, b1).reshape(b, h * w * 4, c1)  # each pixel's 2 x 2 block (ay, ax)
    x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
    w2, b2 = _as_linear(conv2)
    x = act2(F.linear(x, w2, b2)).reshape(b, h * w * 16, c2)  # and each of those pixels' block (by, bx)
    masks = torch.bmm(x, hyper.transpose(1, 2).to(x.dtype))  # B x (h w ay ax by bx) x K
    masks = masks.reshape(b, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, k, 4 * h, 4 * w)


__all__ = ["upscale_masks"]
