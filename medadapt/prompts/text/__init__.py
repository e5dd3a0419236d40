"""Zero-shot text prompts: where a CLIP model sees a text, turned into SAM prompts.

SAM-family decoders cannot read text, and a medical CLIP model (BiomedCLIP)
cannot draw precise outlines; together they segment a named structure with no
training. The chain is deliberately explicit so that each step can be checked
on its own:

1. :func:`text_saliency` -- an H x W map in [0, 1] of where the image matches
   the text, from a CLIP ViT: Grad-CAM of the image-text similarity on the
   last vision block (``"gradcam"``) and/or the similarity of each patch token
   to the text (``"similarity"``);
2. :func:`prompts_from_saliency` -- threshold, connected components, one box
   per component plus clicks at its saliency peaks (and optional background
   clicks), as a :class:`~medadapt.prompts.types.Prompts`;
3. :func:`medadapt.inference.segment_from_text` -- decode those prompts with a
   :class:`~medadapt.Segmenter` and fuse the masks into one mask per text
   (in the inference layer, since it runs the model).

A saliency map is coarse (one value per 16 x 16 patch for a ViT-B/16), which
is exactly why it only *places* the prompts and SAM draws the boundary.

Models are loaded strictly offline by :func:`load_clip` (a local Hugging Face
cache, a local folder, or an open_clip architecture with a weights file), and
any already-built open_clip model works too, which is how the tests use a
small model trained in seconds.

Modules: :mod:`.config` (:class:`TextPromptConfig`), :mod:`.clip` (offline
loading), :mod:`.hub` (the local Hugging Face cache, and the guard that keeps
Hugging Face libraries offline), :mod:`.saliency` (steps 1 and 2),
:mod:`.learned` (the sentence encoder of learned text prompts).
"""

from __future__ import annotations

from .clip import ClipTextModel, load_clip
from .config import BIOMEDCLIP, DEFAULT_TEMPLATES, TextPromptConfig
from .hub import hf_cache_dir
from .learned import MINILM, SentenceEncoder, load_sentence_encoder, training_phrases
from .saliency import prompts_from_saliency, text_saliency

__all__ = [
    "BIOMEDCLIP", "ClipTextModel", "DEFAULT_TEMPLATES", "hf_cache_dir", "load_clip",
    "load_sentence_encoder", "MINILM", "prompts_from_saliency", "SentenceEncoder", "text_saliency",
    "TextPromptConfig", "training_phrases",
]
