"""Foundation models: SAM-family backbones behind one interface, and how they are loaded."""

from . import builtins  # noqa: E402,F401  registers the built-in backbones (after the registry exists)
from .backbone import Backbone, BackboneInfo
from .processor import ImageMeta, SamProcessor
from .registry import BackboneSpec, build_backbone, get_spec, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneSpec",
    "ImageMeta",
    "SamProcessor",
    "build_backbone",
    "get_spec",
    "list_backbones",
    "register_backbone",
]
