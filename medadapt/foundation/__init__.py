"""Foundation models: SAM-family backbones behind one interface, and how they are loaded."""

from . import builtins  # noqa: F401  registers the built-in backbones
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
