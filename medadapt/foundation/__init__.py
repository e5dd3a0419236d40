"""Foundation models: SAM-family backbones behind one interface, and how they are loaded."""

from .backbone import Backbone, BackboneInfo
from .inference import bf16_is_fast, optimize_for_inference, resolve_precision
from .processor import ImageMeta, SamProcessor
from .registry import BackboneSpec, build_backbone, get_spec, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneSpec",
    "ImageMeta",
    "SamProcessor",
    "bf16_is_fast",
    "build_backbone",
    "get_spec",
    "list_backbones",
    "optimize_for_inference",
    "register_backbone",
    "resolve_precision",
]
