"""Promptable inference: ``Segmenter.set_image`` once, then ``predict`` many times.

The image encoder is the expensive part of every SAM-family model (about 95%
of the FLOPs of one box prompt on LiteMedSAM), so the embedding is computed
once per ``set_image`` and every ``predict`` call only runs the prompt encoder
and mask decoder, with all of its prompts in one decoder batch.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..adapters import keeps_base_encoder, load_adapter
from ..adapters.io import folder_fingerprint
from ..core.device import pick_device
from ..core.errors import MedAdaptError
from ..foundation import Backbone, ImageMeta, build_backbone
from ..foundation.decoding import masks_from_logits
from ..foundation.processor import check_boxes, check_points
from ..io.imaging import load_image, validate_image
from ..prompts.scribbles import add_scribbles
from ..prompts.text import load_clip
from ..prompts.text.config import as_texts
from ..prompts.types import Prompts
from ..student import Student, has_student, load_student, read_student_info
from .intensity import recorded_intensity
from .learned_text import match_text_to_classes, set_text_encoder
from .onnx_runtime import MANIFEST_NAME, load_exported
from .optimize import optimize_for_inference
from .prediction import Prediction, _copy_prediction
from .propagation import Propagation
from .refine import refine_automatic
from .student_answers import check_student_classes, student_prediction
from .text import segment_from_text
from .volume import VolumeSession
from .volume_api import VolumeMethods

ArrayLike = np.ndarray | Sequence


def adapter_path(path: str | os.PathLike) -> str:
    """A run folder (``RUN/adapter/``), an adapter folder, or the adapter file itself."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir() and not (p / "adapter.json").exists() and (p / "adapter" / "adapter.json").exists():
        p = p / "adapter"
    if not p.exists():
        raise MedAdaptError(f"adapter not found: {p}")
    return str(p)


def _student_folder(adapter: str | os.PathLike):
    """The run folder holding a student (``RUN/student/``) for an adapter given as the run folder,
    its ``adapter/`` folder or the adapter file in it; None when the run has no student."""
    from pathlib import Path

    p = Path(adapter)
    for folder in (p, p.parent, p.parent.parent):
        if has_student(folder) and (folder / "student").is_dir():
            return folder
        if (folder / "config.yaml").is_file():  # the run folder, without a student
            return None
    return None


def _check_student_adapter(run, loaded: str) -> None:
    """Refuse a student distilled from another adapter than the one ``loaded`` (fine-tuning went on after the
    distillation, or another adapter file was given): its answers would be another model's. Students that
    recorded no adapter pass."""
    from pathlib import Path

    recorded = read_student_info(run).get("adapter")
    if recorded is None:
        return
    path = Path(loaded)
    if recorded == folder_fingerprint(path):
        return
    if (path if path.is_dir() else path.parent).resolve() != (run / "adapter").resolve():
        raise MedAdaptError(
            f"the adapter {loaded} is not the one {run / 'student'} was distilled from ({run / 'adapter'}): "
            "load it with student=False (--no-student) to answer with its own decoder, or give the run folder")
    raise MedAdaptError(
        f"{run / 'student'} was distilled from an earlier adapter than {run / 'adapter'} now holds (the "
        f"fine-tuning went on after the distillation): distil it again (delete {run / 'distill'} and "
        f"{run / 'student'}, then run `medadapt distill {run}`), or load the run with student=False "
        "to answer with the adapted decoder")


class Segmenter(VolumeMethods):
    """Promptable segmentation with a (possibly adapted) SAM-family backbone.

    Example::

        seg = Segmenter.from_pretrained("litemedsam")
        seg.set_image(image)                       # H x W or H x W x 3 array
        out = seg.predict(boxes=[[30, 40, 120, 150]])
        out.masks[0]                               # H x W bool
    """

    # Prompts decoded together. SAM's decoder repeats the image embedding per prompt, so a large
    # batch streams a large tensor: on the 2-core CPU 16 prompts at once cost 70 ms each against
    # 40-45 ms in groups of 2-8 (benchmarks/speed.py); a GPU wants large batches.
    max_prompts_per_batch: int | None = None  # None: 4 on CPU, 64 on GPU
    # Prompts one predict call accepts; more are refused with a message (split them over several calls).
    # The answer holds one full-size mask per prompt: 10,000 on a 512 x 512 image would be 2.6 GB of masks.
    max_prompts: int = 1024

    def __init__(
        self,
        backbone: Backbone,
        device: str | torch.device | None = None,
        precision: str | None = None,
    ) -> None:
        """Wrap a backbone. ``precision=None`` uses it exactly as given (float32,
        shared with whoever else holds it, e.g. a trainer); any other value
        optimises it for inference in place (see :meth:`from_pretrained`)."""
        self.backbone = backbone.to(pick_device(device)).eval()
        # the window / percentile clip the adapter was trained with (see medadapt.inference.intensity): set_volume,
        # medadapt predict and medadapt segment apply it unless given a window; None: images are taken as given
        self.intensity: dict | None = None
        if precision is not None:
            optimize_for_inference(self.backbone, precision)
        self._embedding: torch.Tensor | None = None
        self._pixels: torch.Tensor | None = None  # preprocessed, not yet encoded (a student answers without it)
        self._meta: ImageMeta | None = None
        self._image: np.ndarray | None = None  # text prompts need the pixels, not only the embedding
        self._plane_source: tuple | None = None  # (volume session, k) of a plane show_plane made current
        self._text_model = None  # a medadapt.prompts.ClipTextModel, see set_text_model
        self._auto_cache: Prediction | None = None  # the all-class automatic answer for the current image
        self.student: Student | None = None  # answers automatic predictions when set (see set_student)
        # the base model's mask decoder, kept by from_pretrained for an adapter that left the image encoder as it
        # was (its embeddings are the base model's): propagation walks with it beside the adapted decoder
        self.base_decoder: torch.nn.Module | None = None
        self._volume: VolumeSession | None = None  # see set_volume
        self._object: Propagation | None = None  # the object predict_volume propagated last

    @classmethod
    def from_pretrained(
        cls,
        name: str = "litemedsam",
        *,
        checkpoint: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        precision: str = "auto",
        runtime: str = "torch",
        student: bool = True,
    ) -> "Segmenter":
        """Build a segmenter from a registered backbone name (see ``medadapt models``).

        ``checkpoint`` names local weights for backbones that need them
        (``sam_vit_b``, ``medsam_vit_b``, ``sam_hf`` ...); nothing is downloaded.
        ``adapter`` is a run folder or adapter file written by medadapt; it is
        refused if it was trained on another backbone or other base weights.

        ``precision``: ``"auto"`` (default) runs the encoder and decoder in
        bfloat16 where the hardware is fast at it (CUDA with bf16, CPUs with
        AMX or AVX512-BF16) and float32 elsewhere; ``"float32"`` / ``"bfloat16"``
        force one. Either way BatchNorm is folded, LoRA merged and the encoder
        made channels-last. On our 2-core AVX512-BF16 CPU bf16 encodes ~2x
        faster than the float32 model; its masks agree with float32 at mean
        Dice 0.99 but not on every mask (minimum 0.96 over 128 jittered-box
        masks, ``benchmarks/speed.py``): pass ``precision="float32"`` where
        exact agreement with the float32 model matters.

        ``runtime="onnxruntime"`` (or ``"openvino"``) runs a folder written by
        ``medadapt export`` instead: ``name`` is that folder, which already
        holds the weights and adapter; float32 on the CPU, same API
        (see ``docs/export.md``).

        ``student``: a run distilled by ``medadapt distill`` holds a specialist
        student (``RUN/student/``); by default it answers prompt-free
        predictions and every prompt still goes to the decoder. ``False``
        answers them with the adapted decoder instead.
        """
        if runtime != "torch":
            seg = cls(load_exported(name, runtime, checkpoint=checkpoint, adapter=adapter, precision=precision,
                                    device=device), device="cpu")
            seg.intensity = (seg.backbone.manifest.get("source") or {}).get("intensity")  # the exported adapter's
        else:
            if isinstance(name, (str, os.PathLike)) and (Path(name) / MANIFEST_NAME).is_file():
                raise MedAdaptError(f"{name} is a folder written by `medadapt export`: load it with "
                                    "runtime='onnxruntime' (or 'openvino')")
            backbone = build_backbone(name, None if checkpoint is None else str(checkpoint))
            base = copy.deepcopy(backbone.mask_decoder).eval() if adapter is not None else None
            if adapter is not None:
                backbone = load_adapter(backbone, adapter_path(adapter)).eval()
            seg = cls(backbone, device=device, precision=precision)
            seg.intensity = None if adapter is None else recorded_intensity(adapter_path(adapter))
            if base is not None and keeps_base_encoder(backbone):
                dtype = next(backbone.mask_decoder.parameters()).dtype
                seg.base_decoder = base.requires_grad_(False).to(device=seg.device, dtype=dtype)
        folder = _student_folder(adapter) if student and adapter is not None else None
        if folder is not None:
            _check_student_adapter(folder, adapter_path(adapter))
            seg.set_student(load_student(folder))
        return seg

    def set_student(self, student: Student | None) -> None:
        """Answer automatic predictions with ``student`` (``None``: with the adapted decoder again).
        It must answer the classes the adapter learned."""
        if student is not None:
            self._require_classes()
            auto = self.backbone.adapter_config.automatic
            check_student_classes(student, auto.class_names, auto.label_values)
            student.to(self.device)
        self.student = student
        self._auto_cache = None

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # ------------------------------------------------------------------ image
    @torch.inference_mode()
    def set_image(self, image: np.ndarray | str | os.PathLike) -> None:
        """Encode one image (array or path); later ``predict`` calls reuse the embedding. An image that is
        refused leaves no image set, so no later ``predict`` answers on the one before it."""
        self.reset_image()
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        arr = validate_image(image)
        pixels, meta = self.backbone.processor.preprocess(arr)
        # with a student, a prompt-free answer needs no embedding: encode when a prompt first asks for it
        self._pixels = pixels if self.student is not None else None
        self._embedding = None if self.student is not None else self.backbone.encode(pixels.to(self.device))
        self._meta = meta
        self._image = arr
        self._auto_cache = None

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self._embedding, self._meta, self._image, self._pixels = None, None, None, None
        self._auto_cache, self._plane_source = None, None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        return self._require_meta().original_size

    def embedding(self) -> tuple[torch.Tensor, ImageMeta]:
        """The current image's embedding (1 x C x h x w, as the encoder gave it) and its geometry."""
        return self._require_image()

    def full_size_logits(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """An answer's low-resolution logits (m x m, as in :class:`Prediction`) at the current image's size
        (H x W float32), through the processor's one mapping."""
        meta = self._require_meta()
        low = logits.detach().float().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(
            np.asarray(logits, np.float32))
        m = self.backbone.processor.mask_size
        if low.shape[-2:] != (m, m):
            raise MedAdaptError(f"logits must be m x m low-resolution logits ({m} x {m}); got shape {tuple(low.shape)}")
        return self.backbone.processor.postprocess_logits(low, meta).cpu().numpy().astype(np.float32)

    def low_res_mask(self, mask: np.ndarray) -> np.ndarray:
        """A full-size H x W mask on the answers' low-resolution grid (m x m bool), through the processor's one
        mapping (the inverse of :meth:`full_size_logits`)."""
        meta = self._require_meta()
        m = np.asarray(mask, bool)
        if m.shape != tuple(meta.original_size):
            raise MedAdaptError(f"mask must be H x W like the current image {tuple(meta.original_size)}; got {m.shape}")
        return (self.backbone.processor.mask_to_low_res(m, meta)[0, 0] > 0).numpy()

    def forget_answers(self) -> None:
        """Forget answers kept for the current image: the backbone's decoder-side weights changed in place
        (an online learner published). The embedding stays valid while the encoder is unchanged."""
        self._auto_cache = None

    def _require_meta(self) -> ImageMeta:
        if self._meta is None:
            raise MedAdaptError("no image set: call set_image(image) before predict()")
        return self._meta

    def _require_image(self) -> tuple[torch.Tensor, ImageMeta]:
        if self._meta is None:
            raise MedAdaptError("no image set: call set_image(image) before predict()")
        if self._embedding is None:
            with torch.inference_mode():
                self._embedding = self.backbone.encode(self._pixels.to(self.device))
            self._pixels = None
        return self._embedding, self._meta

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def predict(
        self,
        boxes: ArrayLike | None = None,
        points: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        multimask: bool = False,
        classes: Sequence[str | int] | None = None,
        text: str | Sequence[str] | None = None,
        refine: bool = False,
        scribbles: Sequence | None = None,
    ) -> Prediction:
        """Segment the current image from prompts in original-image pixel coordinates.

        Without any prompt, a model adapted with learned class prompts segments
        every class it learned (automatic mode; ``classes`` picks a subset by
        name or label value) and returns C x H x W masks that do not overlap,
        with ``labels`` and ``label_values``.

        Args:
            boxes: N x 4 ``[x0, y0, x1, y1]``; N prompts decoded as one batch.
            points: K x 2 ``[x, y]`` (one prompt; with one box they refine it) or
                N x K x 2 (one point set per box / prompt).
            point_labels: 1 foreground, 0 background; K or N x K. Default all 1.
            mask_input: low-res logits from a previous ``Prediction.logits``
                (m x m or N x m x m), or a binary mask at the image size.
            multimask: ask the decoder for 3 candidates per prompt and return
                the best by predicted IoU (helps with single ambiguous clicks).
            text: text prompt(s), e.g. ``"left ventricle"``: one mask per text. With
                an adapter trained with learned text prompts (``prompts.text``), a
                text selects the learned class it names, in any phrasing;
                with a CLIP model attached by :meth:`set_text_model` (which takes
                precedence), structures are segmented zero-shot.
            refine: automatic mode only: re-prompt each class with a box around
                its largest component and keep the decoder's answer where it
                agrees with the automatic mask (self-prompting, no ground truth;
                see :func:`medadapt.inference.refine_automatic`). One more decoder
                pass; on ACDC and HC18 validation it added 4-7 Dice points to
                decoder-only models (benchmarks/results/acdc/self_prompting/summary.md).
            scribbles: strokes ``[(polyline K x 2 (x, y), label 1 or 0), ...]`` describing ONE
                object: the prompt of :func:`medadapt.prompts.scribble_prompts` (clicks
                along the strokes) joins the one box and point set given with them; an
                explicit ``mask_input`` wins over its dense mask prompt.
        """
        if refine and any(v is not None for v in (boxes, points, point_labels, mask_input, text, scribbles)):
            raise MedAdaptError("refine=True refines automatic mode; do not combine it with boxes, points, "
                                "mask_input, scribbles or text (those prompts already go through the decoder)")
        if text is not None and scribbles is not None:
            raise MedAdaptError("text= is a prompt of its own; do not combine it with scribbles")
        if text is not None:
            return self._predict_text(text, boxes, points, point_labels, mask_input, classes, multimask)
        meta = self._require_meta()
        scribble_mask = None
        if scribbles is not None:  # one object: clicks along the strokes join the given ones
            proc = self.backbone.processor
            points, point_labels, scribble_mask = add_scribbles(scribbles, meta.original_size, boxes, points,
                                                                point_labels, mask_size=proc.mask_size,
                                                                keep_aspect=proc.keep_aspect)
        b = p = lab = None
        n = None
        if boxes is not None:
            b = check_boxes(boxes, meta.original_size)
            n = b.shape[0]
        if points is not None:
            p, lab = check_points(points, point_labels, meta.original_size)
            if n is not None and p.shape[0] != n:
                if p.shape[0] != 1:
                    raise MedAdaptError(
                        f"got {n} boxes but {p.shape[0]} point sets; give one point set per box (N x K x 2)"
                    )
                p, lab = np.repeat(p, n, axis=0), np.repeat(lab, n, axis=0)
            n = p.shape[0]
        elif point_labels is not None:
            raise MedAdaptError("point_labels given without points")
        if n is None:
            if mask_input is None:
                if self.student is not None:  # needs no embedding
                    return student_prediction(self, self._image, self._class_indices(classes), refine)
                pred = self._predict_automatic(*self._require_image(), classes)
                if refine:
                    pred = refine_automatic(self, pred)
                return pred
            raise MedAdaptError("mask_input needs a box or points to go with it")
        if classes is not None:
            raise MedAdaptError("classes= selects classes in automatic mode; do not combine it with boxes/points")
        masks = self._mask_prompt(mask_input, n, meta)[:, 0].numpy() if mask_input is not None else scribble_mask
        return self.predict_prompts(Prompts(boxes=b, points=p, point_labels=lab, masks=masks), multimask=multimask)

    @torch.inference_mode()
    def predict_prompts(self, prompts: Prompts, multimask: bool = False) -> Prediction:
        """Decode a :class:`~medadapt.prompts.Prompts` (original-image pixels) on the current image.

        What :meth:`predict` does once it has checked its arguments; prompt
        sources that already hold a :class:`Prompts` (simulated prompts,
        text saliency) call it directly. Prompts go through the decoder in
        batches of :attr:`max_prompts_per_batch`.
        """
        embedding, meta = self._require_image()
        return self.decode_embedding(embedding, meta, prompts, multimask)

    @torch.inference_mode()
    def decode_embedding(self, embedding: torch.Tensor, meta: ImageMeta, prompts: Prompts,
                         multimask: bool = False, mask_decoder: torch.nn.Module | None = None) -> Prediction:
        """Decode prompts (original-image pixels) on an image embedding of geometry ``meta``: what
        :meth:`predict_prompts` does on the current image, for callers that keep embeddings themselves
        (a volume's slices). ``mask_decoder``: another decoder of the same architecture answers instead
        (e.g. :attr:`base_decoder`), reading the embedding as encoded."""
        if len(prompts) > self.max_prompts:
            raise MedAdaptError(
                f"{len(prompts)} prompts in one call; the limit is {self.max_prompts} (Segmenter.max_prompts): "
                "split them over several predict calls"
            )
        framed = self.backbone.processor.transform_prompts(prompts, meta)
        low, iou = [], []
        step = self.max_prompts_per_batch or (4 if self.device.type == "cpu" else 64)
        for s in range(0, len(framed), step):
            lo, sc = self.backbone.decode_prompts(embedding, framed.select(slice(s, s + step)), multimask=multimask,
                                                  mask_decoder=mask_decoder)
            low.append(lo.float())
            iou.append(sc.float())
        return self._finish(torch.cat(low), torch.cat(iou), meta, multimask)

    # ------------------------------------------------------------------ text
    def set_text_model(self, clip, config=None) -> None:
        """Attach a CLIP model so that ``predict(text=...)`` segments named structures zero-shot.

        ``clip`` is anything :func:`medadapt.prompts.load_clip` accepts (its
        result, an open_clip model, or e.g. ``"hf-hub:microsoft/BiomedCLIP-
        PubMedBERT_256-vit_base_patch16_224"`` read from the local Hugging Face
        cache); ``config`` a :class:`medadapt.prompts.TextPromptConfig`.
        """
        self._text_model = load_clip(clip, device=self.device, config=config)

    def set_text_encoder(self, encoder) -> None:
        """Read the adapter's learned text prompts with the text encoder in folder ``encoder`` (for an adapter
        moved to a machine where that encoder sits elsewhere); refused unless it is the encoder the text head
        was trained with. See :func:`medadapt.inference.learned_text.set_text_encoder`."""
        set_text_encoder(self, encoder)

    def _predict_text(self, text, boxes, points, point_labels, mask_input, classes, multimask) -> Prediction:
        if any(v is not None for v in (boxes, points, point_labels, mask_input, classes)):
            raise MedAdaptError("text= is a prompt of its own; do not combine it with boxes, points, mask_input or classes")
        if self._text_model is None and self.backbone.text_head is not None:
            return self._predict_learned_text(text)
        if self._text_model is None and "text_head" in (getattr(self.backbone, "manifest", None) or {}).get(
                "not_exported", []):
            raise MedAdaptError("this export leaves the adapter's learned text prompts out (its manifest lists "
                                "text_head under not_exported): load the run with the torch runtime for text=, or "
                                "ask for a learned class with classes=[...]")
        if self._text_model is None:
            learned = (f"this adapter (classes {self.classes}) was not trained with learned text prompts "
                       "(prompts.text in its recipe)" if self.classes else "predict(text=...) needs learned text "
                       "prompts (an adapter fine-tuned with prompts.text, see `medadapt finetune`)")
            raise MedAdaptError(
                f"{learned}; for zero-shot text attach a CLIP model: seg.set_text_model(medadapt.prompts."
                "load_clip('hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224')), read offline "
                "from the local Hugging Face cache; a learned class can also be asked for with classes=[...]"
            )
        self._require_image()
        return segment_from_text(self, self._text_model, None, text, multimask=multimask)

    def _predict_learned_text(self, text) -> Prediction:
        """Texts -> weights over the learned classes -> the automatic masks those weights select."""
        texts = as_texts(text)
        match = match_text_to_classes(self.backbone, texts)
        self._require_meta()
        auto = (student_prediction(self, self._image, list(range(len(self.classes))), False)
                if self.student is not None else self._predict_automatic(*self._require_image(), None))
        share = np.einsum("tc,chw->thw", match.weights, auto.masks.astype(np.float32))
        masks = share >= 0.5
        logits = np.einsum("tc,chw->thw", match.weights, auto.logits)
        names = self.backbone.adapter_config.automatic.class_names
        values = self.backbone.adapter_config.automatic.label_values
        return Prediction(
            masks=masks, scores=match.weights.max(axis=1).astype(np.float32), logits=logits.astype(np.float32),
            labels=texts, label_values=[values[names.index(c)] for c in match.classes],
        )

    # ------------------------------------------------------------------ automatic
    @property
    def classes(self) -> list[str]:
        """Names of the classes the adapter learned (empty for a base model)."""
        cfg = self.backbone.adapter_config
        return list(cfg.automatic.class_names) if cfg is not None and cfg.automatic is not None else []

    def _class_indices(self, classes: Sequence[str | int] | None) -> list[int]:
        auto = self.backbone.adapter_config.automatic
        if classes is None:
            return list(range(len(auto.class_names)))
        out = []
        for c in classes:
            if isinstance(c, str) and c in auto.class_names:
                out.append(auto.class_names.index(c))
            elif not isinstance(c, str) and int(c) in auto.label_values:
                out.append(auto.label_values.index(int(c)))
            else:
                raise MedAdaptError(
                    f"unknown class {c!r}; this adapter knows {auto.class_names} (label values {auto.label_values})"
                )
        return out

    def _require_classes(self) -> None:
        if not self.classes:
            raise MedAdaptError(
                "give at least one prompt: boxes=[[x0, y0, x1, y1]] or points=[[x, y]] "
                "(prompt-free prediction needs an adapter trained with `medadapt finetune`)"
            )

    def _predict_automatic(self, embedding, meta: ImageMeta, classes) -> Prediction:
        self._require_classes()
        if classes is None and self._auto_cache is not None:
            # predict() and predict(text=...) on one image share the joint all-class decode
            return _copy_prediction(self._auto_cache)
        idx = self._class_indices(classes)
        auto = self.backbone.adapter_config.automatic
        ids = torch.tensor(idx, device=self.device)
        low = self.backbone.decode_classes(embedding, ids)[0].float()  # C x m x m, classes decoded jointly
        masks, scores = masks_from_logits(self.backbone.processor.postprocess_logits(low, meta))
        pred = Prediction(
            masks=masks.cpu().numpy(), scores=scores.cpu().numpy(), logits=low.cpu().numpy(),
            labels=[auto.class_names[i] for i in idx], label_values=[auto.label_values[i] for i in idx],
        )
        if classes is None:
            self._auto_cache = _copy_prediction(pred)
        return pred

    def probabilities(self, prediction: Prediction) -> np.ndarray:
        """Per-pixel probability (sigmoid of the logits) of each mask of a prediction on the current image,
        at the image's size: N x H x W float32. A class absent from an automatic answer has probability 0."""
        meta = self._require_meta()
        low = torch.from_numpy(np.asarray(prediction.logits, dtype=np.float32)).to(self.device)
        probs = self.backbone.processor.postprocess_logits(low, meta).float().sigmoid().cpu().numpy()
        absent = ~np.asarray(prediction.masks, dtype=bool).reshape(len(probs), -1).any(1)
        probs[absent] = 0.0
        return probs

    def _mask_prompt(self, mask_input: ArrayLike, n: int, meta: ImageMeta) -> torch.Tensor:
        """``mask_input`` as the decoder's dense prompt (N x 1 x m x m): a mask at the image size (bool, or
        0/1 values) goes through the processor; anything else of the decoder's size is read as its logits."""
        raw = np.asarray(mask_input)
        m = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        if not torch.isfinite(m).all():
            raise MedAdaptError("mask_input contains NaN or infinite values: give a mask (0/1) or the logits of "
                                "an earlier answer (Prediction.logits)")
        size = self.backbone.processor.mask_size
        if m.ndim == 2:
            m = m[None]
        # at an image size equal to the decoder's, a binary mask is a mask, not logits of 0 and 1
        binary = raw.dtype == bool or bool(((m == 0) | (m == 1)).all())
        if m.shape[-2:] == meta.original_size and (meta.original_size != (size, size) or binary):
            m = self.backbone.processor.mask_to_low_res(m.numpy(), meta)
        elif m.ndim == 3 and m.shape[-2:] == (size, size):
            m = m[:, None]
        else:
            raise MedAdaptError(
                f"mask_input must be low-res logits ({size} x {size}, or N x {size} x {size}) "
                f"or a mask of the image size {meta.original_size}; got shape {tuple(m.shape)}"
            )
        if m.shape[0] == 1 and n > 1:
            m = m.expand(n, -1, -1, -1)
        if m.shape[0] != n:
            raise MedAdaptError(f"mask_input has {m.shape[0]} masks for {n} prompts")
        return m

    def _finish(self, low: torch.Tensor, iou: torch.Tensor, meta: ImageMeta, multimask: bool) -> Prediction:
        proc = self.backbone.processor
        best = iou.argmax(dim=1)
        rows = torch.arange(low.shape[0], device=low.device)
        low_best = low[rows, best]

        def masks(logits: torch.Tensor) -> np.ndarray:
            # to full size a few prompts at a time: full-size float logits of every prompt at once would not fit
            step = prompts_per_chunk(meta.original_size, logits[0].numel() // logits.shape[-1] // logits.shape[-2])
            return np.concatenate([(proc.postprocess_logits(logits[i : i + step], meta) > 0).cpu().numpy()
                                   for i in range(0, logits.shape[0], step)])

        pred = Prediction(masks=masks(low_best), scores=iou[rows, best].cpu().numpy(), logits=low_best.cpu().numpy())
        if multimask:
            pred.all_masks = masks(low)
            pred.all_scores = iou.cpu().numpy()
            pred.all_logits = low.cpu().numpy()
        return pred


def prompts_per_chunk(size: tuple[int, int], candidates: int = 1, budget: int = 256 << 20) -> int:
    """How many prompts' answers go to full size at once: at most 32, and no more than ``budget`` bytes of
    full-size float32 logits (``candidates`` masks per prompt), so an 8000 x 8000 image takes one at a time."""
    per_prompt = 4 * size[0] * size[1] * max(1, candidates)
    return max(1, min(32, budget // per_prompt))


__all__ = ["Segmenter", "Prediction", "prompts_per_chunk"]
