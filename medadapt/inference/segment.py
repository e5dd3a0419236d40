"""Verb-style helpers over :class:`~medadapt.Segmenter` for one-shot use.

``segment_file`` is what ``medadapt predict`` runs: read an image (or a slice
of a volume), prompt the model, write the mask and an optional overlay.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..io.dicom_seg import write_dicom_seg
from ..io.imaging import is_volume_path, load_image, put_slice, save_mask, volume_shape
from ..io.overlay import save_overlay
from ..prompts.text import load_clip
from .cleanup import check_cleanup
from .intensity import apply_intensity, resolve_intensity
from .learned_text import set_text_encoder
from .prediction import Prediction, paint_labels
from .predictor import Segmenter


@dataclass
class SegmentFileResult:
    out: Path
    overlay: Path | None
    areas: list[int]
    scores: list[float]
    labels: list[str] = field(default_factory=list)  # the texts (text prompts) or class names (automatic)
    # what ``scores`` are: the decoder's predicted IoU (prompts, zero-shot text), the weight of the class a learned
    # text selected, or the mean foreground probability inside each class's mask (automatic mode)
    score_name: str = "predicted IoU"


def masks_to_labels(masks: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """N x H x W bool masks -> H x W label map 1..N; where masks overlap, the higher score wins."""
    n = masks.shape[0]
    order = np.argsort(scores) if scores is not None else np.arange(n)
    labels = np.zeros(masks.shape[1:], dtype=np.uint16 if n > 255 else np.uint8)
    for i in order:  # ascending score: the best is written last
        labels[masks[i]] = i + 1
    return labels


def prediction_to_labels(pred: Prediction, *, automatic: bool, binary_value: int = 255) -> np.ndarray:
    """The H x W label map a mask file holds for one prediction.

    Automatic mode writes the learned classes' label values (they do not
    overlap); one prompt writes 0 / ``binary_value`` (255 makes a PNG visible in
    any viewer); several prompts write value i for prompt i (1-based).
    """
    if automatic:
        return paint_labels(pred.masks, pred.label_values)
    if pred.masks.shape[0] == 1:
        return pred.masks[0].astype(np.uint8) * np.uint8(binary_value)
    return masks_to_labels(pred.masks, pred.scores)


def segment_from_box(image: np.ndarray, boxes: Sequence[Sequence[float]], *, model: str = "litemedsam",
                     checkpoint: str | None = None, device: str | None = None) -> np.ndarray:
    """N x H x W masks for boxes on one image, building the model on the fly."""
    seg = Segmenter.from_pretrained(model, checkpoint=checkpoint, device=device)
    seg.set_image(image)
    return seg.predict(boxes=boxes).masks


def check_output(target: str | os.PathLike | None, source: str | os.PathLike, flag: str, overwrite: bool) -> None:
    """An output never replaces its input, and replaces another existing file only when asked to (``overwrite``)."""
    if target is None:
        return
    t = Path(target)
    if t.exists() and Path(source).exists() and os.path.samefile(t, source):
        raise MedAdaptError(f"{flag} {t} is the input image: write the result to another file")
    if t.is_dir():
        raise MedAdaptError(f"{flag} {t} is a folder: give a file name")
    if t.exists() and not overwrite:
        raise MedAdaptError(f"{flag} {t} exists: pass --overwrite to replace it, or choose another name")


def segment_file(
    image: str | os.PathLike,
    *,
    out: str | os.PathLike,
    boxes: Sequence[Sequence[float]] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    overlay: str | os.PathLike | None = None,
    model: str = "litemedsam",
    checkpoint: str | None = None,
    slice_index: int | None = None,
    axis: int = 2,
    window: str | None = None,
    multimask: bool = False,
    device: str | None = None,
    text: str | Sequence[str] | None = None,
    clip: str | None = None,
    clip_weights: str | None = None,
    adapter: str | os.PathLike | None = None,
    refine: bool = False,
    overwrite: bool = False,
    text_encoder: str | os.PathLike | None = None,
) -> SegmentFileResult:
    """Segment one image file from prompts and write the mask (PNG or NIfTI).

    One box (or points only) writes a 0/255 binary PNG / 0-1 NIfTI; several
    boxes write a label map with value i for box i (1-based). Points given with
    several boxes refine every box. A slice of a volume (``slice_index``) written
    as NIfTI is a label volume with the scan's shape and geometry, the mask on
    that slice and 0 elsewhere, so it overlays the scan.

    ``text`` segments named structures zero-shot instead (value i for text i
    when there are several); ``clip`` names the CLIP model, read offline (see
    :func:`medadapt.prompts.load_clip`), ``clip_weights`` its weights file when
    ``clip`` is an open_clip architecture name. ``adapter`` (a run folder or
    adapter file from ``medadapt finetune``) adapts the model: prompts go
    through the adapted decoder, no prompt at all segments every learned class
    (a label map with the training data's label values), and ``text`` without
    ``clip`` uses the adapter's learned text prompts. ``refine`` self-prompts
    that automatic answer (see :meth:`Segmenter.predict`). ``text_encoder`` is the
    folder of the text encoder the adapter's learned text prompts were trained
    with, where it is not where the adapter recorded it (another machine; see
    :func:`~medadapt.inference.learned_text.set_text_encoder`). An existing ``out``
    or ``overlay`` file is replaced only with ``overwrite``; the input image
    never is.
    """
    out = Path(out)
    if not (out.name.endswith(".png") or out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise MedAdaptError(f"--out must end in .png, .nii or .nii.gz; got {out}")
    for flag, target in (("--out", out), ("--overlay", overlay)):
        check_output(target, image, flag, overwrite)
    if overlay is not None and Path(overlay).suffix.lower() != ".png":  # checked before anything is written
        raise MedAdaptError(f"--overlay writes a PNG picture: give a path ending in .png, not {overlay}")
    if overlay is not None and Path(overlay).resolve() == out.resolve():
        raise MedAdaptError("--overlay and --out name the same file: give them different names")
    texts = [text] if isinstance(text, str) else list(text or [])
    _check_text_options(texts, boxes, points, clip, clip_weights, adapter, text_encoder)
    clip_model = load_clip(clip, weights=clip_weights, device=device) if clip is not None else None  # fail fast
    if not texts and not boxes and not points and adapter is None:
        raise MedAdaptError(
            "give at least one prompt: --box X0 Y0 X1 Y1, --point X Y LABEL or --text NAME with --clip "
            "(or --adapter RUN for automatic segmentation)"
        )
    if refine and (texts or boxes or points or adapter is None):
        raise MedAdaptError("--refine refines automatic segmentation: use it with --adapter RUN and no --box, "
                            "--point or --text")
    seg = Segmenter.from_pretrained(model, checkpoint=checkpoint, adapter=adapter, device=device)
    learned_text = bool(texts) and clip_model is None
    if learned_text:
        _use_learned_text(seg, adapter, text_encoder)
    # the window given, else the adapter's (or its per-slice percentile clip), as it was trained
    window, percentiles = resolve_intensity(seg.intensity, window)
    arr = load_image(image, slice_index=slice_index, axis=axis, window=window)
    seg.set_image(apply_intensity(arr, None, percentiles))
    if clip_model is not None:
        seg.set_text_model(clip_model)
    automatic = not texts and not boxes and not points
    score_name = "class weight" if learned_text else "mean probability" if automatic else "predicted IoU"
    if texts:
        pred = seg.predict(text=texts, multimask=multimask)
    else:
        pred = seg.predict(boxes=boxes, points=points, point_labels=point_labels, multimask=multimask,
                           refine=refine)
    labels = prediction_to_labels(pred, automatic=automatic, binary_value=255 if out.suffix == ".png" else 1)
    source = Path(image)
    if out.suffix != ".png" and is_volume_path(source):
        # a slice of a volume, written as NIfTI: a label volume on the scan's grid, the mask on that slice, so it
        # overlays the scan in any viewer (a lone slice would carry no position)
        full = np.zeros(volume_shape(source), labels.dtype)
        k = 0 if slice_index is None else slice_index  # load_image accepted None only for a one-slice volume
        save_mask(put_slice(full, k, labels, axis), out, reference=source)
    else:
        save_mask(labels, out)
    ov = None
    if overlay is not None:
        ov = Path(overlay)
        save_overlay(ov, arr, pred.masks, boxes=boxes, points=points, point_labels=point_labels)
    return SegmentFileResult(
        out, ov, [int(m.sum()) for m in pred.masks], [float(s) for s in pred.scores], list(pred.labels or []),
        score_name,
    )


def _check_text_options(texts, boxes, points, clip, clip_weights, adapter, text_encoder) -> None:
    """--clip, --clip-weights and --text-encoder go with --text, each where it is read; never silently dropped."""
    given = [flag for flag, v in (("--clip", clip), ("--clip-weights", clip_weights), ("--text-encoder", text_encoder))
             if v is not None]
    if not texts:
        if given:
            raise MedAdaptError(f"{' and '.join(given)} apply to --text prompts only: add --text NAME, or drop them")
        return
    if boxes or points:
        raise MedAdaptError("give either --text or --box/--point prompts, not both")
    if clip_weights is not None and clip is None:
        raise MedAdaptError("--clip-weights is the weights file of --clip ARCH (an open_clip architecture name such "
                            "as ViT-B-16): add --clip ARCH, or drop --clip-weights")
    if text_encoder is not None and clip is not None:
        raise MedAdaptError("--text-encoder reads an adapter's learned text prompts; with --clip the CLIP model reads "
                            "the text instead: drop one of them")
    if clip is None and adapter is None:
        raise MedAdaptError(
            "--text needs learned text prompts (--adapter RUN of a model fine-tuned with prompts.text) or a "
            "CLIP model for zero-shot text: add --clip hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
            "(read from the local Hugging Face cache), --clip FOLDER, or --clip ARCH --clip-weights FILE"
        )


def _use_learned_text(seg: Segmenter, adapter, text_encoder) -> None:
    """Check that the adapter answers text before any image is read, and read it with ``text_encoder``."""
    if seg.backbone.text_head is None:
        raise MedAdaptError(
            f"--text: the adapter {adapter} (classes {seg.classes}) was not trained with learned text prompts "
            "(prompts.text in its recipe): add --clip NAME_OR_PATH for zero-shot text (e.g. --clip "
            "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224), or drop --text to segment every "
            "learned class"
        )
    if text_encoder is not None:
        set_text_encoder(seg, text_encoder)


def _volume_prompts(boxes, points) -> tuple[dict, dict, dict]:
    """``[Z, X0, Y0, X1, Y1]`` boxes and ``[Z, X, Y, LABEL]`` points -> predict_volume's per-slice dicts."""
    by_box: dict[int, list[float]] = {}
    for b in boxes or []:
        z = _slice_number(b[0], "--box Z X0 Y0 X1 Y1")
        if z in by_box:
            raise MedAdaptError(f"two --box prompts on slice {z}: one box per slice (one object per call)")
        by_box[z] = [float(v) for v in b[1:]]
    by_point: dict[int, list] = {}
    by_label: dict[int, list] = {}
    for p in points or []:
        z = _slice_number(p[0], "--point Z X Y LABEL")
        by_point.setdefault(z, []).append([float(p[1]), float(p[2])])
        by_label.setdefault(z, []).append(int(p[3]))
    return by_box, by_point, by_label


def _slice_number(value, flag: str) -> int:
    if not math.isfinite(float(value)) or float(value) != int(float(value)) or float(value) < 0:
        raise MedAdaptError(f"{flag}: Z is a slice index (0, 1, 2 ...); got {value}")
    return int(float(value))


def segment_volume_file(
    volume: str | os.PathLike,
    *,
    out: str | os.PathLike,
    boxes: Sequence[Sequence[float]] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    model: str = "litemedsam",
    checkpoint: str | None = None,
    axis: int = 2,
    window: str | None = None,
    device: str | None = None,
    adapter: str | os.PathLike | None = None,
    refine: bool = False,
    overwrite: bool = False,
    cleanup: Sequence[str] | None = None,
) -> SegmentFileResult:
    """Segment a whole volume (NIfTI or DICOM series folder) and write a NIfTI mask in the input's geometry,
    or, for a DICOM series and an ``out`` ending in ``.dcm``, a DICOM-SEG of the series
    (:func:`~medadapt.io.write_dicom_seg`: one segment per class; a prompted object is the segment ``object``).

    ``boxes`` are ``[Z, X0, Y0, X1, Y1]`` and ``points`` ``[Z, X, Y, LABEL]``: slice ``Z`` along ``axis`` as
    ``load_image(volume, slice_index=Z, axis=axis)`` shows it. Prompts on one or a few slices give one
    object, propagated through the volume (0/1 mask). Without prompts, ``adapter`` segments every learned
    class on every slice (a label map with the training data's label values), cleaned up by ``cleanup``
    (see :mod:`medadapt.inference.cleanup`).
    """
    out = Path(out)
    dicom_seg = out.name.lower().endswith(".dcm")
    if dicom_seg and not Path(volume).is_dir():
        raise MedAdaptError(f"--out {out}: a DICOM-SEG (.dcm) refers to a DICOM series; {volume} is not a series "
                            "folder, so write NIfTI (.nii.gz)")
    if dicom_seg and Path(out).resolve().parent == Path(volume).resolve():
        raise MedAdaptError(f"--out {out} lies inside the series folder {volume}: a DICOM-SEG there would be read as "
                            "part of the series next time; write it elsewhere")
    if not dicom_seg and not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise MedAdaptError(f"a volume's mask is written as NIfTI (.nii or .nii.gz), or as DICOM-SEG (.dcm) for a "
                            f"DICOM series; got --out {out}")
    check_output(out, volume, "--out", overwrite)
    if not boxes and not points and adapter is None:
        raise MedAdaptError("give a prompt on a slice (--box Z X0 Y0 X1 Y1 or --point Z X Y LABEL), or "
                            "--adapter RUN to segment every learned class")
    if refine and (boxes or points or adapter is None):
        raise MedAdaptError("--refine refines automatic segmentation: use it with --adapter RUN and no prompts")
    if check_cleanup(cleanup) and (boxes or points or adapter is None):
        raise MedAdaptError("--cleanup cleans up automatic segmentation: use it with --adapter RUN and no prompts")
    by_box, by_point, by_label = _volume_prompts(boxes, points)
    seg = Segmenter.from_pretrained(model, checkpoint=checkpoint, adapter=adapter, device=device)
    seg.set_volume(volume, axis=axis, window=window)
    if by_box or by_point:
        mask = seg.predict_volume(boxes=by_box or None, points=by_point or None, point_labels=by_label or None)
        labels = mask.astype(np.uint8)
        areas, scores, names = [int(mask.sum())], [float(np.mean(list(seg.volume_object.scores().values()) or [0.0]))], []
        values = [1]
    else:
        labels = seg.predict_volume(refine=refine, cleanup=cleanup)
        values = seg.backbone.adapter_config.automatic.label_values
        areas, scores, names = [int((labels == v).sum()) for v in values], [float("nan")] * len(values), seg.classes
    if dicom_seg:
        write_dicom_seg(labels, volume, out, list(names) or ["object"], list(values), allow_empty=True)
    else:
        save_mask(labels, out, reference=volume)
    return SegmentFileResult(out, None, areas, scores, list(names))


__all__ = ["check_output", "segment_volume_file", "segment_file", "segment_from_box", "masks_to_labels", "prediction_to_labels", "SegmentFileResult"]
