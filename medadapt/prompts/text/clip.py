"""Loading a CLIP model for text prompts, strictly offline, and reading images and texts with it."""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...core.device import pick_device
from ...core.errors import MedAdaptError
from ...io.imaging import validate_image
from .config import BIOMEDCLIP, BIOMEDCLIP_TEXT, TextPromptConfig, text_key
from .hub import cached_text_parts, find_snapshot, has_tokenizer, hf_cache_dir, offline, text_parts, where

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's default normalisation
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = (  # open_clip's own preference order inside a model folder
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


def _synonyms(cfg: TextPromptConfig, text: str) -> list[str]:
    """The synonyms given for ``text``, looked up as a text encoder reads it (case and spaces aside)."""
    return [a for name, more in cfg.synonyms.items() if text_key(name) == text_key(text) for a in more]


@dataclass
class ClipTextModel:
    """An open_clip model with what it needs to read medadapt images and texts.

    Attributes:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` with a ViT image tower.
        tokenizer: ``tokenizer(list_of_str) -> LongTensor`` (open_clip tokenizers).
        image_size: (h, w) the image tower expects.
        mean / std: per-channel normalisation the model was trained with.
        config: the :class:`TextPromptConfig` used when none is passed.
        name: where it came from (for messages).
    """

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: tuple[int, int]
    mean: tuple[float, float, float] = _OPENAI_MEAN
    std: tuple[float, float, float] = _OPENAI_STD
    config: TextPromptConfig = field(default_factory=TextPromptConfig)
    name: str = "custom"

    def __post_init__(self) -> None:
        self.model.eval()  # dropout / patch dropout off: saliency must be deterministic
        size = self.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, numbers.Integral) else tuple(map(int, size))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "ClipTextModel":
        self.model.to(device)
        return self

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H x W (x 3) array -> 1 x 3 x h x w normalised tensor on the model's device.

        Intensities are scaled to [0, 1] (8-bit images by /255, others by their
        min and max, as SAM-family processors do); the image is padded at the
        bottom/right to a square before resizing, so shapes are not distorted
        and :func:`text_saliency` can map the patch grid back exactly.
        """
        arr = validate_image(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.min() >= 0 and arr.max() <= 255 and np.all(arr == np.round(arr)) and arr.max() > 1:
            arr = arr / 255.0
        else:
            arr = (arr - arr.min()) / (arr.max() - arr.min())
        h, w = arr.shape[:2]
        side = max(h, w)
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))[None]
        x = F.pad(x, (0, side - w, 0, side - h))
        x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], config: TextPromptConfig | None = None) -> torch.Tensor:
        """T x D unit text embeddings: every phrasing of a text in every template, averaged."""
        cfg = config or self.config
        rows = []
        for text in texts:
            phrases = [text, *_synonyms(cfg, text)]
            sentences = [tpl.format(p) for p in phrases for tpl in cfg.templates]
            tokens = self.tokenizer(sentences)
            emb = F.normalize(self.model.encode_text(tokens.to(self.device)).float(), dim=-1)
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
        return torch.stack(rows)

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        return 100.0 if scale is None else float(min(scale.detach().exp().max().item(), 100.0))


def _weights_in(folder: Path) -> Path | None:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _missing_hub_model(repo_id: str, cache: Path) -> MedAdaptError:
    biomed = "BiomedCLIP" in repo_id
    text_dl = f" and `huggingface-cli download {BIOMEDCLIP_TEXT} config.json vocab.txt tokenizer_config.json`" if biomed else ""
    text_files = f" plus config.json of {BIOMEDCLIP_TEXT}" if biomed else ""
    return MedAdaptError(
        f"CLIP model hf-hub:{repo_id} is not in the local Hugging Face cache and nothing is downloaded; "
        f"looked in {where(repo_id, cache)}. On a machine with internet run `huggingface-cli download {repo_id}`"
        f"{text_dl}, then copy the models--* folders it fills into {cache} (or set HF_HOME / HF_HUB_CACHE, "
        f"or pass cache_dir); or put open_clip_config.json, open_clip_pytorch_model.bin (or "
        f"open_clip_model.safetensors) and the tokenizer files (vocab.txt, tokenizer_config.json) of {repo_id}"
        f"{text_files} in one folder and pass that folder instead"
    )


def _build_from_folder(folder: Path, cache: Path, device: torch.device, label: str) -> ClipTextModel:
    """An open_clip model from a folder in the Hugging Face open_clip layout, offline.

    open_clip would resolve the text tower and tokenizer named in
    ``open_clip_config.json`` by their hub names (a network call when they are
    not cached); here they are resolved to local folders first, so a missing
    file is reported with where to put it instead of a connection error.
    """
    import open_clip

    cfg_path = folder / "open_clip_config.json"
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedAdaptError(f"cannot read {cfg_path}: {exc}; it must be open_clip's model config JSON") from exc
    model_cfg = dict(raw.get("model_cfg", raw))
    pre = raw.get("preprocess_cfg", {})
    weights = _weights_in(folder)
    if weights is None:
        raise MedAdaptError(
            f"no CLIP weights in {folder}: put one of {', '.join(_WEIGHT_FILES[:3])} there "
            "(the weights file of the same model repository)"
        )
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    vision_cfg = dict(model_cfg.get("vision_cfg", {}))
    vision_cfg["timm_model_pretrained"] = False  # the CLIP checkpoint holds the image weights
    tok_source: Path | None = None
    hf_name = text_cfg.get("hf_model_name")
    if hf_name:
        local = Path(hf_name)
        if not (local / "config.json").is_file():  # the text model's config may sit next to the CLIP files
            local = folder if (folder / "config.json").is_file() else None
        if local is None:
            local = find_snapshot(hf_name, cache, lambda p: (p / "config.json").is_file())
        if local is None:
            raise MedAdaptError(
                f"{label} needs the config of its text model {hf_name}, which is not in the local Hugging Face "
                f"cache; looked in {where(hf_name, cache)}. Copy config.json, vocab.txt and tokenizer_config.json "
                f"of {hf_name} there (`huggingface-cli download {hf_name} config.json vocab.txt "
                "tokenizer_config.json` on a machine with internet), or set HF_HOME / HF_HUB_CACHE"
            )
        text_cfg["hf_model_name"] = str(local)
        text_cfg["hf_model_pretrained"] = False  # the CLIP checkpoint holds the text weights
    tok_name = text_cfg.get("hf_tokenizer_name")
    if tok_name:
        if has_tokenizer(folder):
            tok_source = folder
        elif Path(tok_name).is_dir():
            tok_source = Path(tok_name)
        else:
            tok_source = find_snapshot(tok_name, cache, has_tokenizer)
        if tok_source is None:
            raise MedAdaptError(
                f"{label} needs the tokenizer files of {tok_name} (vocab.txt, tokenizer_config.json or "
                f"tokenizer.json); looked in {folder} and {where(tok_name, cache)}. Copy them into {folder}"
            )
        text_cfg["hf_tokenizer_name"] = str(tok_source)
    model_cfg["text_cfg"], model_cfg["vision_cfg"] = text_cfg, vision_cfg
    custom = bool(model_cfg.pop("custom_text", False)) or bool(hf_name)
    if "multimodal_cfg" in model_cfg:
        raise MedAdaptError(f"{label} is a captioning (CoCa) model; text saliency needs a CLIP model")
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    try:
        with offline():
            model = cls(**model_cfg)
            open_clip.load_checkpoint(model, str(weights), strict=True)
            ctx = text_cfg.get("context_length", 77)
            if tok_source is not None:
                tokenizer = open_clip.tokenizer.HFTokenizer(
                    str(tok_source), context_length=ctx, **text_cfg.get("tokenizer_kwargs", {})
                )
            else:
                tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
    except MedAdaptError:
        raise
    except Exception as exc:  # noqa: BLE001 -- many libraries, one actionable message
        raise MedAdaptError(f"could not build the CLIP model from {folder}: {type(exc).__name__}: {exc}") from exc
    size = pre.get("size", vision_cfg.get("image_size", 224))
    return ClipTextModel(
        model=model.to(device),
        tokenizer=tokenizer,
        image_size=size,
        mean=tuple(pre.get("mean", _OPENAI_MEAN)),
        std=tuple(pre.get("std", _OPENAI_STD)),
        name=label,
    )


def load_clip(
    name_or_path: str | os.PathLike | torch.nn.Module | ClipTextModel,
    *,
    weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    config: TextPromptConfig | None = None,
) -> ClipTextModel:
    """Load a CLIP model for text prompts, strictly offline.

    ``name_or_path`` is one of:

    * ``"hf-hub:ORG/NAME"`` (e.g. :data:`BIOMEDCLIP`), read from the local
      Hugging Face cache (see :func:`hf_cache_dir`; ``cache_dir`` overrides);
    * a folder holding ``open_clip_config.json``, the weights file and, for
      Hugging Face text towers, the tokenizer files (``local-dir:`` prefix allowed);
    * an open_clip architecture name (``"ViT-B-16"``) with ``weights`` = a local
      checkpoint file (the only case ``weights`` is for; elsewhere it is
      refused). A Hugging Face text model or tokenizer the architecture names
      (``ViT-B-16-SigLIP``: ``timm/ViT-B-16-SigLIP``'s tokenizer) is read from
      the local cache;
    * an already-built open_clip model (give ``tokenizer`` unless it uses
      open_clip's own BPE vocabulary), or a :class:`ClipTextModel`.

    Nothing is downloaded: a missing file raises :class:`MedAdaptError` naming
    the folders searched and the files to put there.
    """
    dev = pick_device(device)
    if weights is not None and isinstance(name_or_path, torch.nn.Module | ClipTextModel):
        raise MedAdaptError(
            "weights= (--clip-weights) is the checkpoint file of an open_clip architecture name such as 'ViT-B-16'; "
            f"got an already-built {type(name_or_path).__name__}: load the weights into it yourself, or pass the "
            "architecture name with weights="
        )
    if isinstance(name_or_path, ClipTextModel):
        clip = name_or_path.to(dev)
        return clip if config is None else replace(clip, config=config)
    if isinstance(name_or_path, torch.nn.Module):
        clip = _wrap_model(name_or_path, tokenizer)
        clip.to(dev)
    else:
        clip = _load_named(str(name_or_path), weights, cache_dir, dev)
        if tokenizer is not None:
            clip.tokenizer = tokenizer
    if config is not None:
        clip.config = config
    return clip


def _wrap_model(model: torch.nn.Module, tokenizer: Callable | None) -> ClipTextModel:
    for attr in ("encode_image", "encode_text", "visual"):
        if not hasattr(model, attr):
            raise MedAdaptError(
                f"load_clip needs an open_clip CLIP model (with encode_image, encode_text and visual); "
                f"got {type(model).__name__} without {attr}"
            )
    visual = model.visual
    pre = getattr(visual, "preprocess_cfg", None) or {}
    size = pre.get("size", getattr(visual, "image_size", None))
    if size is None:
        raise MedAdaptError(f"cannot tell the input size of {type(visual).__name__}; wrap it in ClipTextModel yourself")
    if tokenizer is None:
        if hasattr(model, "text") and not hasattr(model, "token_embedding") and not hasattr(model.text, "token_embedding"):
            raise MedAdaptError("this CLIP model has a Hugging Face text tower: pass its tokenizer= to load_clip")
        import open_clip

        tokenizer = open_clip.SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
    return ClipTextModel(
        model=model,
        tokenizer=tokenizer,
        image_size=size,
        mean=tuple(pre.get("mean", getattr(visual, "image_mean", None) or _OPENAI_MEAN)),
        std=tuple(pre.get("std", getattr(visual, "image_std", None) or _OPENAI_STD)),
        name=type(model).__name__,
    )


def _load_named(name: str, weights: str | os.PathLike | None, cache_dir, dev: torch.device) -> ClipTextModel:
    cache = hf_cache_dir(cache_dir)
    folder = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name).expanduser()
    if weights is not None and (name.startswith("hf-hub:") or folder.is_dir()):
        raise MedAdaptError(
            f"weights= (--clip-weights) is the checkpoint file of an open_clip architecture name such as 'ViT-B-16'; "
            f"{name} is {'a Hugging Face model' if name.startswith('hf-hub:') else 'a CLIP model folder'}, which "
            "holds its own weights (open_clip_pytorch_model.bin or open_clip_model.safetensors): drop weights=, or "
            "copy the model folder and put the other weights file in the copy under that name"
        )
    if name.startswith("hf-hub:"):
        repo_id = name[len("hf-hub:"):].strip("/")
        if repo_id.count("/") != 1:
            raise MedAdaptError(f"hf-hub names are 'hf-hub:ORG/NAME'; got {name!r}")
        snap = find_snapshot(repo_id, cache, lambda p: (p / "open_clip_config.json").is_file())
        if snap is None or _weights_in(snap) is None:
            raise _missing_hub_model(repo_id, cache)
        return _build_from_folder(snap, cache, dev, name)
    if folder.is_dir():
        if not (folder / "open_clip_config.json").is_file():
            raise MedAdaptError(
                f"{folder} has no open_clip_config.json; a CLIP model folder holds open_clip_config.json, "
                "the weights (open_clip_pytorch_model.bin or open_clip_model.safetensors) and tokenizer files"
            )
        return _build_from_folder(folder, cache, dev, str(folder))
    return _load_architecture(name, weights, cache, dev)


def _architecture_weights(name: str, weights: str | os.PathLike | None) -> Path:
    """The local checkpoint file of open_clip architecture ``name`` (else a MedAdaptError saying what to give)."""
    import open_clip

    if name not in open_clip.list_models():
        raise MedAdaptError(
            f"unknown CLIP model {name!r}: give '{BIOMEDCLIP}' (from the local Hugging Face cache), "
            "a folder with open_clip_config.json and weights, or an open_clip architecture name "
            "(open_clip.list_models(), e.g. 'ViT-B-16') with weights=FILE"
        )
    if weights is None:
        raise MedAdaptError(
            f"open_clip architecture {name!r} needs weights=FILE (a local .pt, .bin or .safetensors checkpoint); "
            "nothing is downloaded"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MedAdaptError(f"CLIP weights file not found: {path} (looked in {path.parent}); give an existing file")
    return path


def _load_architecture(name: str, weights: str | os.PathLike | None, cache: Path, dev: torch.device) -> ClipTextModel:
    """open_clip architecture ``name`` with a local checkpoint. A Hugging Face text tower or tokenizer it names
    (``ViT-B-16-SigLIP``, ``roberta-ViT-B-32`` ...) is read from the local cache, or refused at once."""
    import open_clip

    path = _architecture_weights(name, weights)
    text_cfg = dict((open_clip.get_model_config(name) or {}).get("text_cfg", {}))
    local = cached_text_parts(f"open_clip architecture {name!r}", text_cfg, cache)
    overrides = {}
    if "hf_model_name" in local:  # its config from the cache; its weights from the checkpoint
        overrides["text_cfg"] = {**text_cfg, "hf_model_name": str(local["hf_model_name"]), "hf_model_pretrained": False}
    try:
        with offline():
            model = open_clip.create_model(name, pretrained=str(path), device=dev, **overrides)
            tokenizer = _architecture_tokenizer(name, text_cfg, local.get("hf_tokenizer_name"))
    except OSError as exc:  # a file the Hugging Face libraries did not find locally, or an unreadable checkpoint
        repos = "; ".join(f"its {role}: {repo} in {where(repo, cache)}" for _, role, repo in text_parts(text_cfg))
        hint = f" (it reads from the local Hugging Face cache {repos}; put the missing files there)" if repos else ""
        raise MedAdaptError(f"could not load {name} from {path} offline{hint}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise MedAdaptError(f"could not load {name} from {path}: {type(exc).__name__}: {exc}") from exc
    clip = _wrap_model(model, tokenizer)
    clip.name = f"{name} ({path.name})"
    return clip


def _architecture_tokenizer(name: str, text_cfg: dict, local: Path | None) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer for ``name``; a Hugging Face one from its local folder ``local``."""
    import open_clip

    if local is None:
        return open_clip.get_tokenizer(name)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("tokenizer_mode"):
        kwargs["tokenizer_mode"] = text_cfg["tokenizer_mode"]
    return open_clip.tokenizer.HFTokenizer(str(local), context_length=text_cfg.get("context_length", 77), **kwargs)


__all__ = ["ClipTextModel", "hf_cache_dir", "load_clip"]
