"""How a text becomes prompts and a mask: :class:`TextPromptConfig` and the names it accepts."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Sequence

from ...core.config import check_phrase_map, check_templates
from ...core.errors import MedAdaptError

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# The text tower BiomedCLIP's open_clip_config.json names; its config.json and
# tokenizer files live in a second Hugging Face repository.
BIOMEDCLIP_TEXT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"

DEFAULT_TEMPLATES = ("a medical image of the {}.", "a photo of the {}.", "{}")
SALIENCY_METHODS = ("gradcam", "similarity")
PROMPT_KINDS = ("box", "box+points", "points")
FUSIONS = ("union", "vote")



@dataclass
class TextPromptConfig:
    """How a text becomes prompts and a mask.

    Attributes:
        templates: sentence templates; each phrase of a text is put in every
            template and the normalised embeddings are averaged (prompt
            ensembling: CLIP models match captions better than bare words).
        synonyms: extra phrasings per text, e.g. ``{"liver": ["hepatic
            parenchyma"]}``, averaged in with the text itself.
        saliency: ``"gradcam"``, ``"similarity"`` or both (maps averaged).
        contrast: with several texts in one call, score each text against the
            others (Grad-CAM of its logit minus a soft maximum of the others';
            for ``"similarity"``, where a patch beats every other text), so
            "liver" lights up the liver rather than everything that looks like
            an abdominal CT. A single text has nothing to contrast with.
        threshold: keep saliency >= this fraction of the map's maximum, or
            ``"otsu"`` for Otsu's threshold of the map.
        min_component_area: drop components smaller than this fraction of the
            image area (specks of a noisy map are not objects).
        max_components: keep at most this many components per text, the ones
            with the most saliency mass (2 for paired organs).
        n_positive_points / n_negative_points: clicks per component, at the
            saliency peaks inside it / at the least salient pixels of the
            surrounding box, outside every thresholded region. Only the prompt
            kinds with points decode them, so more clicks than the defaults
            without ``"box+points"`` or ``"points"`` in ``prompt_kinds`` are refused.
        prompt_kinds: which of ``"box"``, ``"box+points"``, ``"points"`` are
            decoded for every component; several kinds are fused by ``fusion``.
            Box prompts are the default because box-trained medical decoders
            (MedSAM, LiteMedSAM) do not follow clicks alone.
        box_scales: candidate boxes per component: its box and a square of
            its longer side, scaled by each factor about its centre and (with
            ``box_shifts``) also shifted by a quarter of their size in eight
            directions, all in one decoder batch; of the masks that cover at
            least half of the saliency in the component's box, the one with
            the highest predicted IoU is kept. Saliency marks the most text-like part of
            a structure rather than its extent, and a box-trained decoder
            given a box inside an object segments something inside that box;
            given a box around the object it finds the object, and its IoU head
            tells which box fitted (the scales start above 1 because the
            thresholded saliency rarely reaches the structure's edges).
            ``box_scales=(1.0,), box_shifts=False`` decodes the saliency box
            alone.
        fusion: ``"union"`` (any decoded mask) or ``"vote"`` (a strict majority
            of the kinds, per component); components are always united.
    """

    templates: Sequence[str] = DEFAULT_TEMPLATES
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    saliency: str | Sequence[str] = "gradcam"
    contrast: bool = True
    threshold: float | str = 0.5
    min_component_area: float = 0.002
    max_components: int = 1
    n_positive_points: int = 1
    n_negative_points: int = 0
    prompt_kinds: Sequence[str] = ("box",)
    box_scales: Sequence[float] = (1.5, 2.0, 3.0)
    box_shifts: bool = True
    fusion: str = "union"

    def __post_init__(self) -> None:
        self.templates = check_templates(self.templates, "templates")
        self.synonyms = check_phrase_map(self.synonyms, "synonyms", "{'liver': ['hepatic tissue']}")
        self.saliency = _methods(self.saliency)
        if isinstance(self.threshold, str):
            if self.threshold != "otsu":
                raise MedAdaptError(f"threshold must be a fraction in (0, 1) or 'otsu'; got {self.threshold!r}")
        elif not (isinstance(self.threshold, numbers.Real) and 0 < self.threshold < 1):
            raise MedAdaptError(f"threshold must be a fraction in (0, 1) or 'otsu'; got {self.threshold!r}")
        if not (isinstance(self.min_component_area, numbers.Real) and 0 <= self.min_component_area < 1):
            raise MedAdaptError(
                f"min_component_area is a fraction of the image area in [0, 1); got {self.min_component_area!r}"
            )
        for name in ("max_components", "n_positive_points", "n_negative_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise MedAdaptError(f"{name} must be a non-negative integer; got {v!r}")
        if self.max_components < 1:
            raise MedAdaptError("max_components must be at least 1")
        scales = (self.box_scales,) if isinstance(self.box_scales, numbers.Real) else tuple(self.box_scales)
        if not scales or any(not isinstance(f, numbers.Real) or not f > 0 for f in scales):
            raise MedAdaptError(f"box_scales must be positive factors, e.g. (1.0, 1.5, 2.0); got {self.box_scales!r}")
        self.box_scales = tuple(float(f) for f in scales)
        kinds = (self.prompt_kinds,) if isinstance(self.prompt_kinds, str) else tuple(self.prompt_kinds)
        bad = [k for k in kinds if k not in PROMPT_KINDS]
        if not kinds or bad:
            raise MedAdaptError(f"prompt_kinds must be a non-empty list of {PROMPT_KINDS}; got {list(kinds)!r}")
        self.prompt_kinds = kinds
        self._check_points()
        if self.fusion not in FUSIONS:
            raise MedAdaptError(f"fusion must be one of {FUSIONS}; got {self.fusion!r}")

    def _check_points(self) -> None:
        """Clicks are decoded only by the prompt kinds with points; asking for more of them without one is refused."""
        with_points = [k for k in self.prompt_kinds if "points" in k]
        if with_points and self.n_positive_points == 0:
            raise MedAdaptError("prompt kinds with points need n_positive_points >= 1")
        if not with_points and (self.n_positive_points > 1 or self.n_negative_points > 0):
            raise MedAdaptError(
                f"n_positive_points={self.n_positive_points} / n_negative_points={self.n_negative_points} set clicks, "
                f"but prompt_kinds={list(self.prompt_kinds)} decodes boxes alone, so they would do nothing: add "
                "'box+points' (a box with its clicks) or 'points' (clicks alone), e.g. prompt_kinds=('box', "
                "'box+points'), or leave the clicks at their defaults"
            )


def _methods(saliency: str | Sequence[str]) -> tuple[str, ...]:
    methods = (saliency,) if isinstance(saliency, str) else tuple(saliency)
    if not methods or any(m not in SALIENCY_METHODS for m in methods):
        raise MedAdaptError(f"saliency must be one or more of {SALIENCY_METHODS}; got {saliency!r}")
    return methods


def text_key(text: str) -> str:
    """A text as a text encoder reads it: case and spacing aside ("Liver " is "liver")."""
    return " ".join(text.split()).casefold()


def as_texts(text: str | Sequence[str]) -> list[str]:
    """One text or a list of them as a list of distinct, non-empty strings (else a clear error)."""
    names = [text] if isinstance(text, str) else list(text) if text is not None else []
    if not names or any(not isinstance(t, str) or not t.strip() for t in names):
        raise MedAdaptError(f"text must be a non-empty string or a list of them, e.g. 'liver'; got {text!r}")
    if len({text_key(t) for t in names}) != len(names):  # "Liver" and "liver" are one text to an encoder
        raise MedAdaptError(f"texts must be distinct (case and spaces aside); got {names}")
    return names


__all__ = ["BIOMEDCLIP", "DEFAULT_TEMPLATES", "TextPromptConfig"]
