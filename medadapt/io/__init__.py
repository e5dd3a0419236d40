"""Reading and writing medical images (:mod:`.imaging`), label maps as DICOM-SEG (:mod:`.dicom_seg`) and drawing
masks over them (:mod:`.overlay`)."""

from .dicom_seg import write_dicom_seg
from .imaging import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    SAVE_MASK_EXTENSIONS,
    WINDOW_PRESETS,
    apply_window,
    check_spacing,
    clip_percentiles,
    load_image,
    load_mask,
    load_volume,
    save_mask,
    validate_image,
    volume_slice,
    voxel_size,
)
from .overlay import overlay, save_overlay

__all__ = [
    "IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "SAVE_MASK_EXTENSIONS", "WINDOW_PRESETS", "apply_window", "clip_percentiles",
    "load_image", "load_mask", "load_volume", "overlay", "save_mask", "save_overlay", "validate_image", "volume_slice",
    "check_spacing", "voxel_size", "write_dicom_seg",
]
