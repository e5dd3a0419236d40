"""A registry of backbone builders, by name.

``medadapt.Segmenter.from_pretrained(name)``, the command line and YAML configs
all refer to backbones by a short name; this module maps names to builders and
says where each one's weights come from. Third-party code can add its own with
:func:`register_backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..core.errors import MedAdaptError
from .backbone import Backbone
from .checkpoint import fingerprint_state

Builder = Callable[[Optional[str]], Backbone]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone."""

    name: str
    family: str
    image_size: int
    weights: str  # where the weights come from, for ``medadapt models``
    builder: Builder
    needs_checkpoint: bool = False  # True: the user must name a local file or folder


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> None:
    """Add a backbone builder under ``spec.name``."""
    if spec.name in _REGISTRY and not overwrite:
        raise MedAdaptError(f"a backbone named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, in registration order."""
    return list(_REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or an error listing the known names."""
    if name not in _REGISTRY:
        raise MedAdaptError(f"unknown backbone {name!r}; known backbones: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_backbone(name: str, checkpoint: str | None = None) -> Backbone:
    """Build a backbone by name, frozen and in eval mode.

    ``checkpoint`` is a local file (official ``.pth``/``.safetensors``) or, for
    ``sam_hf``, a local folder or a hub id already in the local cache.
    """
    spec = get_spec(name)
    if spec.needs_checkpoint and checkpoint is None:
        raise MedAdaptError(
            f"backbone {name!r} needs local weights: pass checkpoint=PATH (--checkpoint PATH); "
            f"expected {spec.weights}. Nothing is downloaded at run time."
        )
    model = spec.builder(checkpoint)
    model.requires_grad_(False)
    if not model.info.fingerprint:  # a registered builder that set none: adapters must still refuse other weights
        model.info.fingerprint = fingerprint_state(model.state_dict())
    return model.eval()


__all__ = ["BackboneSpec", "register_backbone", "list_backbones", "get_spec", "build_backbone"]
