"""Segmentation datasets as users have them (nnU-Net/MSD folders, folders of 2-D images) -> 2-D samples.

    from medadapt.data import DataConfig, SliceDataset, discover_cases, split_cases
    config = DataConfig.from_dict(yaml_config["data"])   # root, classes, labeled/unlabeled/val/test...
    splits = split_cases(config, discover_cases(config))  # by patient: no leakage between splits
    train = SliceDataset(splits["labeled"], config)                          # slices with a target class
    unlabeled = SliceDataset(splits["unlabeled"], config, keep="all", with_labels=False)
    stream = CaseStream(splits["unlabeled"], config, rng)                    # or a few cases at a time
    image, label = load_volume_case(splits["val"][0], config)                 # (N, H, W) for 3-D metrics

:mod:`medadapt.data.synthetic` writes a small task with a known answer and a
domain shift, on which the tests check that semi-supervised training helps.

Images and labels are read with :mod:`medadapt.io.imaging`, so training slices
are oriented exactly as ``load_image`` gives them at inference time.
"""

from .cases import MASK_SUFFIXES, Case, detect_layout, discover_cases, patient_of, split_cases
from .config import FOREGROUND, LAYOUTS, SPLITS, DataConfig, label_table, read_dataset_json, resolve_classes
from .datasets import (
    Slice2D,
    SliceDataset,
    case_spacing,
    load_slices,
    load_volume_case,
    prepare_slice,
    remap_labels,
    to_canonical,
)
from .stream import CaseStream

__all__ = [
    "FOREGROUND", "LAYOUTS", "MASK_SUFFIXES", "SPLITS",
    "Case", "CaseStream", "DataConfig", "Slice2D", "SliceDataset",
    "case_spacing", "detect_layout", "discover_cases", "label_table", "load_slices", "load_volume_case",
    "patient_of", "prepare_slice", "read_dataset_json", "remap_labels", "resolve_classes", "split_cases",
    "to_canonical",
]
