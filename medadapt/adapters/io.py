"""Adapter checkpoints: only what was trained, plus what it was trained on.

A checkpoint is two files side by side:

* ``adapter.safetensors``: every trainable tensor (LoRA matrices, spatial
  adapters, the base parts trained outright);
* ``adapter.json``: the adapter config, the backbone name and a fingerprint of
  the base weights, plus free-form metadata (class names, label values...).

Loading onto another backbone, or onto different base weights, is refused:
LoRA deltas applied to the wrong base silently produce garbage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import MedAdaptError
from ..core.files import atomic_write, atomic_write_json
from ..foundation import Backbone, build_backbone
from ..foundation.checkpoint import fingerprint_state, sha256_file, sha256_files
from .apply import apply, is_adapter_param, trainable_state
from .config import AdapterConfig

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"
FORMAT_VERSION = 1


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p / WEIGHTS_NAME, p / CONFIG_NAME


def save_adapter(model: Backbone, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the trainable tensors and the adapter description (atomically). Returns the weights path.

    ``path`` is a folder (files ``adapter.safetensors`` + ``adapter.json`` in it)
    or a ``.safetensors`` file name (the JSON goes beside it).
    """
    from safetensors.torch import save_file

    config: AdapterConfig | None = model.adapter_config
    if config is None:
        raise MedAdaptError("this model has no adapter config: call medadapt.adapters.apply(model, config) first")
    if model.inference_only:
        raise MedAdaptError("this model was optimised for inference (BatchNorm folded, bf16, frozen); save the "
                            "adapter of the model as trained, or load it again with load_adapter")
    if model.lora_merged:
        raise MedAdaptError("LoRA was merged into the base weights; save the adapter before merge_lora()")
    state = trainable_state(model)
    if not state and any(is_adapter_param(n) or n.split(".", 1)[0] in config.train for n, _ in model.named_parameters()):
        raise MedAdaptError("no parameter of this model is trainable (requires_grad is off everywhere), so the adapter "
                            "would be saved without its weights; save it before freezing the model")
    weights, desc = _paths(path)
    info = {
        "format_version": FORMAT_VERSION,
        "backbone": model.info.name,
        "base_fingerprint": model.info.fingerprint,
        "adapter": config.to_dict(),
        "metadata": metadata or {},
    }
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    info["weights_sha256"] = sha256_file(weights)  # the pair is two files: a save cut between them is told on load
    atomic_write_json(desc, info)
    return weights


def read_adapter_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of an adapter checkpoint (folder or file)."""
    _, desc = _paths(path)
    if not desc.is_file():
        raise MedAdaptError(f"adapter description not found: {desc} (expected beside the .safetensors file)")
    try:
        info = json.loads(desc.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedAdaptError(f"adapter description {desc} is not valid JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(info, dict) or not isinstance(info.get("adapter"), dict):
        raise MedAdaptError(f"adapter description {desc} is not one medadapt writes: it needs an object with an "
                            "'adapter' section (save adapters with medadapt.adapters.save_adapter)")
    return info


def load_adapter(model: Backbone, path: str | os.PathLike) -> Backbone:
    """Apply a saved adapter to a freshly built backbone and load its tensors.

    Refuses another backbone or other base weights (by fingerprint).
    """
    from safetensors.torch import load_file

    weights, desc = _paths(path)
    info = read_adapter_info(path)
    if info.get("backbone") != model.info.name:
        raise MedAdaptError(
            f"adapter {desc} was trained on backbone {info.get('backbone')!r}, not {model.info.name!r}; "
            f"use Segmenter.from_pretrained({info.get('backbone')!r}, adapter=...)"
        )
    if model.adapter_config is not None:
        raise MedAdaptError("this model already has adapters; build a fresh backbone to load another adapter")
    # the weights the model holds now (not the fingerprint taken when it was built: they may have changed since)
    base = fingerprint_state(model.state_dict())
    if info.get("base_fingerprint") != base:
        raise MedAdaptError(
            f"adapter {desc} was trained on different {model.info.name} base weights "
            f"(fingerprint {info.get('base_fingerprint')} vs {base}); load the same base checkpoint"
        )
    if not weights.is_file():
        raise MedAdaptError(f"adapter weights not found: {weights}")
    if info.get("weights_sha256") not in (None, sha256_file(weights)):
        raise MedAdaptError(f"{weights} is not the weights file {desc} was saved with (a save interrupted between "
                            "the two files, or files from two saves): save the adapter again, or restore the pair")
    config = AdapterConfig.from_dict(info["adapter"])
    try:  # read before the model is changed: a damaged file leaves the backbone as it was
        state = load_file(str(weights), device="cpu")
    except Exception as exc:
        raise MedAdaptError(f"could not read adapter weights {weights}: {exc}") from None
    apply(model, config)
    expected = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"adapter tensor {k} has shape {tuple(v.shape)}, model expects {tuple(expected[k])}"
             for k, v in state.items() if k in expected and v.shape != expected[k]]
    if missing or unexpected or wrong:
        problem = (f"adapter weights {weights} do not match its config: missing {missing[:5]}, unexpected "
                   f"{unexpected[:5]}") if missing or unexpected else "; ".join(wrong[:3])
        raise MedAdaptError(f"{problem}; this backbone now holds the adapter's layers untrained: build a fresh one "
                            "before loading another adapter")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, v in state.items():
            params[k].copy_(v)
    if not model.training:
        model.eval()  # modules that cache weights for evaluation (TinyViT's attention biases) compute them again
    model.adapter_metadata = info.get("metadata", {})
    return model


def load_adapted(path: str | os.PathLike, backbone: str | None = None, checkpoint: str | None = None) -> Backbone:
    """Build the base backbone named in the adapter description and load the adapter onto it."""
    info = read_adapter_info(path)
    name = backbone or info.get("backbone")
    return load_adapter(build_backbone(name, checkpoint), path).eval()


def adapter_digest(adapter: str | os.PathLike) -> str:
    """SHA-256 over the weights and descriptions of an adapter (a run folder, an adapter folder or file) and of
    a run's student: which model a batch's masks or an online learner came from (a model trained again in the
    same folder is another model)."""
    adapter = Path(adapter)
    folders = [d for d in (adapter / "adapter", adapter / "student") if d.is_dir()] if adapter.is_dir() else []
    files = ([adapter.with_suffix(".safetensors"), adapter.with_suffix(".json")] if adapter.is_file() else
             [f for d in (folders or [adapter]) for f in sorted(d.iterdir())])
    return sha256_files((f"{f.parent.name}/{f.name}", f) for f in files
                        if f.is_file() and f.suffix in (".safetensors", ".json"))


def adapter_fingerprint(run: str | os.PathLike) -> str:
    """SHA-256 of a run's adapter files (``RUN/adapter/``): which adapter a distillation's labels, and so its
    student, came from."""
    return folder_fingerprint(Path(run) / "adapter")


def folder_fingerprint(adapter: str | os.PathLike) -> str:
    """SHA-256 of an adapter's description and weights (an adapter folder, or the weights or description file
    of a pair saved elsewhere), named as in an adapter folder: a copy of the pair under another name, or a
    stray file beside it (``.DS_Store``), is no change."""
    p = Path(adapter)
    pair = [p / CONFIG_NAME, p / WEIGHTS_NAME] if p.is_dir() else [p.with_suffix(".json"), p.with_suffix(".safetensors")]
    return sha256_files((name, f) for name, f in zip((CONFIG_NAME, WEIGHTS_NAME), pair) if f.is_file())


__all__ = ["adapter_digest", "adapter_fingerprint", "folder_fingerprint", "save_adapter", "load_adapter", "load_adapted", "read_adapter_info", "WEIGHTS_NAME", "CONFIG_NAME"]
