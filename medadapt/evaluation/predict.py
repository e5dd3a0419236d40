"""A split's predictions, case by case, without scoring them.

For benchmarks and analyses that score the same predictions several ways
(clean-ups, thresholds, other metrics): each case is predicted once, in the
modes :func:`medadapt.evaluation.evaluate.evaluate_run` uses, from the same
run folder, data config and split lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..adapters import read_adapter_info
from ..core.errors import MedAdaptError
from ..data import load_volume_case
from .evaluate import _cases, _check_request, _data_config, _load_model, _predict_slices, _run_paths


@dataclass
class CasePrediction:
    """One case: its id, the model's classes, ``{mode: prediction}`` and the ground truth.

    Automatic and self-prompted predictions are N x H x W label maps (0 background, class ``k`` of
    ``classes`` as ``k + 1``); box and 1-click predictions are C x N x H x W masks, one per class. ``label``
    is the N x H x W ground truth with the same values; a 2-D case has N = 1.
    """

    case_id: str
    classes: list[str]
    predictions: dict[str, np.ndarray]
    label: np.ndarray


def predict_split(run: str | os.PathLike, split: str = "val", modes: Sequence[str] = ("automatic",), *,
                  data: str | os.PathLike | None = None, limit: int | None = None, device: str | None = None,
                  student: bool = True) -> Iterator[CasePrediction]:
    """Predict every case of ``split`` (as :func:`~medadapt.evaluation.evaluate.evaluate_run` reads ``run``,
    ``data``, ``split``, ``limit`` and ``student``), yielding one :class:`CasePrediction` at a time."""
    _check_request(modes, limit)
    adapter, run_dir = _run_paths(run)
    config = _data_config(data, run_dir)
    cases = _cases(config, split, data)[:limit]  # found before the model loads: a wrong split fails fast
    seg, classes = _load_model(adapter, read_adapter_info(adapter), config, device, student)
    values = list(range(1, len(classes) + 1))  # the data loader maps labels to 1..C in class order
    for case in cases:
        volume, label = load_volume_case(case, config)
        if label is None:
            raise MedAdaptError(f"case {case.case_id} has no label file; predict_split pairs each case with its labels")
        preds = _predict_slices(seg, list(volume), list(label), values, list(modes))
        yield CasePrediction(case.case_id, classes, preds, np.asarray(label))


__all__ = ["CasePrediction", "predict_split"]
