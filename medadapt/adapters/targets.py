"""Named adapter targets per backbone family, as module-name patterns.

SAM's ViT blocks keep attention in ``blocks.i.attn.{qkv,proj}`` and the MLP in
``blocks.i.mlp.{lin1,lin2}``; LiteMedSAM's TinyViT in
``layers.j.blocks.i.attn.{qkv,proj}`` and ``...mlp.{fc1,fc2}``. The mask
decoder is SAM's in both families. Patterns are full-match regular expressions
on names relative to the backbone (``image_encoder....``).
"""

from __future__ import annotations

import re

from torch import nn

from ..core.errors import MedAdaptError

_DECODER_ATTENTION = r"mask_decoder\.transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)"

TARGETS: dict[str, dict[str, str]] = {
    "vit": {
        "encoder_attention": r"image_encoder\.blocks\.\d+\.attn\.(qkv|proj)",
        "encoder_mlp": r"image_encoder\.blocks\.\d+\.mlp\.(lin1|lin2)",
        "decoder_attention": _DECODER_ATTENTION,
    },
    "tinyvit": {
        "encoder_attention": r"image_encoder\.layers\.\d+\.blocks\.\d+\.attn\.(qkv|proj)",
        "encoder_mlp": r"image_encoder\.layers\.\d+\.blocks\.\d+\.mlp\.(fc1|fc2)",
        "decoder_attention": _DECODER_ATTENTION,
    },
}

# transformer blocks of the image encoder, for spatial adapters
BLOCKS: dict[str, str] = {
    "vit": r"image_encoder\.blocks\.\d+",
    "tinyvit": r"image_encoder\.layers\.\d+\.blocks\.\d+",
}


def resolve_targets(model: nn.Module, family: str, targets: list[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules that the named groups or patterns select."""
    groups = TARGETS.get(family, {})
    patterns = [groups.get(t, t) for t in targets]
    compiled = []
    for t, p in zip(targets, patterns):
        try:
            compiled.append((t, re.compile(p)))
        except re.error as exc:
            raise MedAdaptError(f"lora target {t!r} is neither a named group {sorted(groups)} nor a valid regex: {exc}") from None
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(c.fullmatch(name) for _, c in compiled):
            chosen.append(name)
    for t, c in compiled:
        if not any(c.fullmatch(n) for n in chosen):
            raise MedAdaptError(
                f"lora target {t!r} matches no linear layer of this {family} backbone; "
                f"named groups: {sorted(groups)}, or give a full-match regex on module names"
            )
    return chosen


def encoder_blocks(model: nn.Module, family: str) -> list[tuple[str, nn.Module]]:
    """The image encoder's transformer blocks (those with attention and an MLP), in order.

    TinyViT's first stage is convolutional (MBConv blocks): it has no attention
    and is skipped.
    """
    pattern = re.compile(BLOCKS[family])
    return [
        (n, m) for n, m in model.named_modules()
        if pattern.fullmatch(n) and hasattr(m, "attn") and hasattr(m, "mlp")
    ]


__all__ = ["TARGETS", "BLOCKS", "resolve_targets", "encoder_blocks"]
