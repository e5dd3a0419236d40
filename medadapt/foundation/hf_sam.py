"""Load Hugging Face-format SAM checkpoints into the official segment-anything modules.

Why: SAM weights are published in two layouts, the original ``.pth`` files and
transformers' ``SamModel`` folders (``config.json`` + ``model.safetensors``, e.g.
``facebook/sam-vit-base``). The rest of medadapt speaks only to the official
``ImageEncoderViT`` / ``PromptEncoder`` / ``MaskDecoder``, so an HF checkpoint is
translated once here: hyperparameters from ``SamConfig``, parameter names from
HF's to the official ones (the keys of ``segment_anything.modeling.Sam``).
Nothing is dropped or guessed: any key that cannot be placed is an error.

Loading is offline only. A hub id is looked up in the local Hugging Face cache
(``local_files_only=True``), never downloaded.

Convention differences between transformers' ``SamModel`` and the official modules:

* Batching. HF takes points ``(images, point_batch, n_points, 2)``, labels
  ``(images, point_batch, n_points)``, boxes ``(images, n_boxes, 4)`` and returns
  masks ``(images, point_batch, n_masks, h, w)``. The official modules work on one
  image at a time: points ``(point_batch, n_points, 2)``, labels
  ``(point_batch, n_points)``, boxes ``(n_boxes, 4)``, masks
  ``(point_batch, n_masks, h, w)``; run the decoder once per image.
* Padding. Both append one "not a point" (label -1) when points come without a
  box. HF also accepts label -10 ("padding, ignore": zero embedding); the
  official encoder has no such label, so drop those points instead.
* Coordinates. Both expect pixels in the resized, padded ``image_size`` frame and
  shift by +0.5; mask inputs are ``(N, 1, 4h, 4w)`` logits in both.
* Random-Fourier positional matrix. HF keeps it as the parameter
  ``shared_image_embedding.positional_embedding`` (plus a tied copy
  ``prompt_encoder.shared_embedding.positional_embedding``); the official one is
  the buffer ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``. Both
  store the matrix already scaled (the ``scale`` arguments only affect random
  init) and compute ``sin/cos(2*pi*(2c - 1) @ G)``, so it is copied unchanged.
* LayerNorm eps. HF's mask-decoder two-way blocks and mask-embedding norms use
  ``layer_norm_eps`` from the config (1e-6 in released checkpoints), while the
  official classes hard-code 1e-5 (decoder) and 1e-6 (mask downscaling). The
  ``eps`` of those norms is set from the config so that outputs match HF.
* ``vision_config.attention_dropout`` is ignored: the official encoder has no
  attention dropout, which only matters in training.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from transformers import SamConfig

from ..core.errors import MedAdaptError
from .processor import IMAGENET_MEAN, IMAGENET_STD

_PREFIXES = ("image_encoder", "prompt_encoder", "mask_decoder")
_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}

# (regex on the HF key, replacement); first match wins, unmatched keys keep their name.
_RENAMES: list[tuple[str, str]] = [
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
    (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^vision_encoder\.", "image_encoder."),
    (
        r"^(shared_image_embedding|prompt_encoder\.shared_embedding)\.positional_embedding$",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
]
# HF's SamFeedForward is proj_in, layers.0..n-3, proj_out; the official MLP is layers.0..n-1.
_FEEDFORWARD = re.compile(
    r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.(proj_in|proj_out|layers\.(\d+))\.(\w+)$"
)


def _activation(cfg: object, field: str) -> type[nn.Module]:
    name = getattr(cfg, "hidden_act", None)
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise MedAdaptError(
            f"{field}={name!r} cannot be represented by the official SAM modules; supported: {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _side(value: object, field: str) -> int:
    """HF allows ``int | (h, w)``; the official modules only square sizes."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MedAdaptError(f"{field}={value!r}: the official SAM modules need one square size (an int)")
    return value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise MedAdaptError(message)


def sam_modules_from_hf_config(config: SamConfig) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    """Build randomly initialised official modules shaped like an HF ``SamConfig``.

    Why: HF checkpoints (SlimSAM, fine-tunes, ViT-B/L/H) carry their architecture in
    ``config.json`` rather than in the file name, so the official modules must be
    sized from it. Anything the official classes cannot express (another
    activation, non-square sizes, mismatched widths) raises :class:`MedAdaptError`
    naming the config field, instead of loading a silently different network.
    """
    if not isinstance(config, SamConfig):
        raise MedAdaptError(f"expected a transformers SamConfig, got {type(config).__name__}")
    vis, pe, md = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    image_size = _side(vis.image_size, "vision_config.image_size")
    patch_size = _side(vis.patch_size, "vision_config.patch_size")
    dim = pe.hidden_size
    _require(
        vis.output_channels == dim == md.hidden_size,
        f"vision_config.output_channels ({vis.output_channels}), prompt_encoder_config.hidden_size ({dim}) and "
        f"mask_decoder_config.hidden_size ({md.hidden_size}) must be equal in the official SAM",
    )
    _require(
        2 * vis.num_pos_feats == dim,
        f"vision_config.num_pos_feats ({vis.num_pos_feats}) must be half of prompt_encoder_config.hidden_size ({dim})",
    )
    grid = image_size // patch_size
    _require(
        _side(pe.image_size, "prompt_encoder_config.image_size") == image_size,
        f"prompt_encoder_config.image_size ({pe.image_size}) must equal vision_config.image_size ({image_size}): "
        "the prompt encoder places boxes and points on the encoder's input",
    )
    _require(
        pe.image_embedding_size == grid,
        f"prompt_encoder_config.image_embedding_size ({pe.image_embedding_size}) must equal "
        f"vision_config.image_size // patch_size ({grid})",
    )
    _require(
        pe.num_point_embeddings == 4,
        f"prompt_encoder_config.num_point_embeddings={pe.num_point_embeddings}: the official SAM has exactly 4",
    )

    encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        in_chans=vis.num_channels,
        embed_dim=vis.hidden_size,
        depth=vis.num_hidden_layers,
        num_heads=vis.num_attention_heads,
        # the official Block uses int(dim * mlp_ratio); +0.5 makes that exact for any mlp_dim (e.g. SlimSAM)
        mlp_ratio=(vis.mlp_dim + 0.5) / vis.hidden_size,
        out_chans=vis.output_channels,
        qkv_bias=vis.qkv_bias,
        norm_layer=partial(nn.LayerNorm, eps=vis.layer_norm_eps),
        act_layer=_activation(vis, "vision_config.hidden_act"),
        use_abs_pos=vis.use_abs_pos,
        use_rel_pos=vis.use_rel_pos,
        window_size=vis.window_size,
        global_attn_indexes=tuple(vis.global_attn_indexes),
    )
    input_size = _side(pe.image_size, "prompt_encoder_config.image_size")
    prompt = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(grid, grid),
        input_image_size=(input_size, input_size),
        mask_in_chans=pe.mask_input_channels,
        activation=_activation(pe, "prompt_encoder_config.hidden_act"),
    )
    for i in (1, 4):  # the two LayerNorm2d of mask_downscaling
        prompt.mask_downscaling[i].eps = pe.layer_norm_eps
    transformer = TwoWayTransformer(
        depth=md.num_hidden_layers,
        embedding_dim=dim,
        num_heads=md.num_attention_heads,
        mlp_dim=md.mlp_dim,
        activation=_activation(md, "mask_decoder_config.hidden_act"),
        attention_downsample_rate=md.attention_downsample_rate,
    )
    for layer in transformer.layers:  # HF uses layer_norm_eps here; norm_final_attn keeps 1e-5 in both
        for norm in (layer.norm1, layer.norm2, layer.norm3, layer.norm4):
            norm.eps = md.layer_norm_eps
    decoder = MaskDecoder(
        transformer_dim=dim,
        transformer=transformer,
        num_multimask_outputs=md.num_multimask_outputs,
        iou_head_depth=md.iou_head_depth,
        iou_head_hidden_dim=md.iou_head_hidden_dim,
    )
    return encoder, prompt, decoder


def _official_name(hf_key: str, iou_head_depth: int) -> str:
    match = _FEEDFORWARD.match(hf_key)
    if match:
        head, part, index, leaf = match.groups()
        depth = iou_head_depth if head == "iou_prediction_head" else 3  # hypernetwork MLPs are fixed at 3
        layer = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(index) + 1
        return f"mask_decoder.{head}.layers.{layer}.{leaf}"
    for pattern, replacement in _RENAMES:
        new_key, n = re.subn(pattern, replacement, hf_key)
        if n:
            return new_key
    return hf_key


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_hf_sam_state_dict(hf_state: Mapping[str, torch.Tensor], config: SamConfig) -> dict[str, torch.Tensor]:
    """Rename an HF ``SamModel`` state dict to the keys of the official ``Sam``.

    Why: the same tensors live under different names in the two implementations
    (``vision_encoder.layers.N`` vs ``image_encoder.blocks.N``, ``mask_embed.conv1``
    vs ``mask_downscaling.0``, ``proj_in/proj_out`` vs ``layers.0..n-1`` ...). Keys
    are checked against modules built from ``config``: an HF key that maps to no
    official parameter, an official parameter left without a value, or a shape
    mismatch raises :class:`MedAdaptError` listing them, so nothing is dropped.
    Tied duplicates (the positional matrix is stored twice by HF) must be equal.
    """
    with torch.device("meta"):  # shapes only, no memory or init cost
        modules = sam_modules_from_hf_config(config)
    expected = {
        f"{prefix}.{key}": value.shape
        for prefix, module in zip(_PREFIXES, modules)
        for key, value in module.state_dict().items()
    }
    depth = config.mask_decoder_config.iou_head_depth
    out: dict[str, torch.Tensor] = {}
    unmapped, conflicts, shapes = [], [], []
    for hf_key, tensor in hf_state.items():
        key = _official_name(hf_key, depth)
        if key not in expected:
            unmapped.append(hf_key)
        elif tuple(tensor.shape) != tuple(expected[key]):
            shapes.append(f"{hf_key} -> {key}: {tuple(tensor.shape)} vs {tuple(expected[key])} from config")
        elif key in out and not torch.equal(out[key], tensor):
            conflicts.append(f"{hf_key} -> {key}")
        else:
            out[key] = tensor
    missing = sorted(set(expected) - set(out) - {_official_name(k, depth) for k in hf_state})
    problems = []
    if unmapped:
        problems.append(f"HF keys with no official counterpart: {_listing(sorted(unmapped))}")
    if missing:
        problems.append(f"official keys missing from the checkpoint: {_listing(missing)}")
    if shapes:
        problems.append(f"shape mismatches: {_listing(shapes)}")
    if conflicts:
        problems.append(f"different tensors for the same official key: {_listing(conflicts)}")
    if problems:
        raise MedAdaptError("cannot convert the HF SAM checkpoint: " + "; ".join(problems))
    return out


def _hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, but read now (its constants freeze at import)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
        )
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def _resolve_folder(path_or_repo_id: str | os.PathLike) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MedAdaptError(f"{path} is a file; pass the folder holding config.json and model.safetensors")
    repo_id, cache = os.fspath(path_or_repo_id), _hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except HFValidationError:
        raise MedAdaptError(
            f"{repo_id!r} is neither an existing folder (no folder at {os.path.abspath(path)}) nor a Hugging Face "
            "repo id"
        ) from None
    except LocalEntryNotFoundError:
        raise MedAdaptError(
            f"{repo_id!r} is not a folder and is not in the local Hugging Face cache; looked in {cache} "
            f"(HF_HOME={os.environ.get('HF_HOME', '<unset>')}, "
            f"HF_HUB_CACHE={os.environ.get('HF_HUB_CACHE', '<unset>')}). "
            "medadapt never downloads. On a machine with network run `huggingface-cli download "
            f"{repo_id}` (or `hf download {repo_id}`) and copy its cache folder (models--"
            f"{repo_id.replace('/', '--')} under $HF_HOME/hub) into {cache}, or pass a local folder holding "
            "config.json and model.safetensors (e.g. written by SamModel.save_pretrained)"
        ) from None


def _read_config(folder: Path) -> SamConfig:
    file = folder / "config.json"
    if not file.is_file():
        raise MedAdaptError(f"no config.json in {folder}: not a Hugging Face SAM checkpoint folder")
    try:
        model_type = json.loads(file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise MedAdaptError(f"{file} is not a valid config.json: {exc}") from None
    except OSError as exc:
        raise MedAdaptError(f"cannot read {file} ({exc.strerror or exc})") from None
    if model_type != "sam":
        raise MedAdaptError(f"{file} has model_type={model_type!r}; only transformers SamModel ('sam') is supported")
    try:
        return SamConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # a value of the wrong type or range, a field transformers does not know ...
        raise MedAdaptError(f"{file} is not a config transformers can read: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}") from None


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, pickle with code objects ...
        raise MedAdaptError(
            f"could not read {file}: {type(exc).__name__}: {exc} "
            "(only plain tensors are accepted: safetensors, or a .bin readable with weights_only=True)"
        ) from None


def _shards(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names (plain names inside its folder), or an error."""
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise MedAdaptError(f"{index} is not a sharded-checkpoint index (a JSON object with a 'weight_map' of "
                            f"tensor -> file): {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
    if bad:
        raise MedAdaptError(f"{index} names shard files outside its folder ({bad[0]!r}); only plain file names "
                            "in the same folder are read")
    return sorted(shards)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for single in ("model.safetensors", "pytorch_model.bin"):  # safetensors preferred
        if (folder / single).is_file():
            return _load_file(folder / single)
        index = folder / f"{single}.index.json"
        if index.is_file():  # sharded checkpoint
            state: dict[str, torch.Tensor] = {}
            for shard in _shards(index):
                state.update(_load_file(folder / shard))
            return state
    found = sorted(p.name for p in folder.iterdir())
    raise MedAdaptError(f"no model.safetensors or pytorch_model.bin in {folder} (found: {found})")


def hf_processor_settings(path_or_repo_id: str | os.PathLike, image_size: int) -> dict[str, tuple[float, ...]]:
    """The pixel mean and std (per channel, on 0-255) that a checkpoint folder's own image processor settings
    (``preprocessor_config.json``, or ``processor_config.json`` as transformers 5 writes it) ask for; ImageNet's
    (SAM's) when it has none. A longest edge other than the encoder's input is refused: the model would see
    images at another scale than its checkpoint was made for."""
    folder = _resolve_folder(path_or_repo_id)
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise MedAdaptError(f"{file} is not a readable JSON file: {exc}") from None
        cfg = cfg.get("image_processor", cfg) if isinstance(cfg, dict) else {}
        if not isinstance(cfg, dict):
            raise MedAdaptError(f"{file} holds no image processor settings (a JSON object)")
        edge = (cfg.get("size") or {}).get("longest_edge") if isinstance(cfg.get("size"), dict) else None
        if edge is not None and edge != image_size:
            raise MedAdaptError(f"{file} resizes images to a longest edge of {edge}, but the encoder's input is "
                                f"{image_size}: medadapt feeds the encoder images of its own input size")
        # transformers: (x * r - m) / s on 0-255 pixels x, r the rescale factor; that is (x - m / r) / (s / r)
        try:
            r = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
            mean, std = cfg.get("image_mean", [0.485, 0.456, 0.406]), cfg.get("image_std", [0.229, 0.224, 0.225])
            mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
            std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
        except (TypeError, ValueError):
            raise MedAdaptError(f"{file}: rescale_factor, image_mean and image_std must be numbers") from None
        if not cfg.get("do_normalize", True):
            mean, std = [0.0] * 3, [1.0] * 3
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or r <= 0:
            raise MedAdaptError(f"{file}: image_mean and image_std need 3 values each, std and rescale_factor > 0")
        return {"mean": tuple(m / r for m in mean), "std": tuple(v / r for v in std)}
    return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def load_hf_sam(
    path_or_repo_id: str | os.PathLike,
) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder, SamConfig]:
    """Load an HF ``SamModel`` checkpoint into official modules, offline.

    Why: one code path for every SAM the library uses, whichever layout it was
    published in, and no surprise downloads on hospital machines. The argument is
    a local folder (``config.json`` + ``model.safetensors``, or a ``.bin`` read
    with ``weights_only=True``) or a hub id such as ``facebook/sam-vit-base``
    resolved in the local HF cache only. Returns eval-mode modules loaded strictly
    and the ``SamConfig`` they were built from.
    """
    folder = _resolve_folder(path_or_repo_id)
    config = _read_config(folder)
    state = convert_hf_sam_state_dict(_read_weights(folder), config)
    modules = sam_modules_from_hf_config(config)
    for prefix, module in zip(_PREFIXES, modules):
        sub = {key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(prefix + ".")}
        module.load_state_dict(sub, strict=True)
        module.eval()
    encoder, prompt, decoder = modules
    return encoder, prompt, decoder, config


__all__ = ["convert_hf_sam_state_dict", "hf_processor_settings", "load_hf_sam", "sam_modules_from_hf_config"]
