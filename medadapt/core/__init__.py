"""The bottom layer: the one error type, device choice, atomic files, strict config helpers and centred
resampling of label maps.

Nothing here imports any other part of medadapt.
"""

from .config import build_dataclass, check_phrase_map, check_templates
from .device import pick_device
from .errors import MedAdaptError
from .files import atomic_write, atomic_write_json, atomic_write_text, path_suffix

__all__ = [
    "MedAdaptError", "atomic_write", "atomic_write_json", "atomic_write_text", "build_dataclass", "check_phrase_map",
    "check_templates", "path_suffix", "pick_device",
]
