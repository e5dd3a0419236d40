"""Prompts for SAM-family models: one container, and the ways to make them.

* :mod:`.types` -- :class:`Prompts`, N objects' boxes / clicks / mask prompts.
* :mod:`.regions` -- boxes (with a margin) and the largest component of masks,
  in torch, for every caller.
* :mod:`.simulate` -- prompts from masks: simulated training prompts, corrective
  clicks, prompts from a coarse prediction, the iterative-click loop.
* :mod:`.scribbles` -- free-hand strokes: clicks along them and a dense mask
  prompt, and scribbles simulated from masks and label maps.
* :mod:`.text` -- text: CLIP models read offline and their saliency turned
  into boxes and clicks (zero-shot), and the sentence encoder of learned text
  prompts.

This layer knows no model: learned class tokens are part of the model
(:mod:`medadapt.foundation.class_tokens`), and running prompts through a
decoder is inference (:mod:`medadapt.inference`).
"""

from __future__ import annotations

from .regions import boxes_of_masks, largest_component, largest_components, mask_box, pad_boxes
from .scribbles import (
    encode_strokes,
    rasterize_strokes,
    scribble_prompts,
    simulate_scribble_labels,
    simulate_scribbles,
)
from .simulate import (
    box_from_mask,
    corrective_click,
    iterative_clicks,
    nonempty,
    prompts_from_prediction,
    sample_points,
    simulate_prompts,
)
from .text import (
    BIOMEDCLIP,
    DEFAULT_TEMPLATES,
    ClipTextModel,
    TextPromptConfig,
    hf_cache_dir,
    load_clip,
    prompts_from_saliency,
    text_saliency,
)
from .types import PAD_LABEL, Prompts

__all__ = [
    "BIOMEDCLIP", "box_from_mask", "boxes_of_masks", "ClipTextModel", "corrective_click", "DEFAULT_TEMPLATES",
    "encode_strokes", "hf_cache_dir", "iterative_clicks", "largest_component", "largest_components", "load_clip",
    "mask_box", "nonempty", "pad_boxes", "PAD_LABEL", "Prompts", "prompts_from_prediction", "prompts_from_saliency",
    "rasterize_strokes", "sample_points", "scribble_prompts", "simulate_prompts", "simulate_scribble_labels",
    "simulate_scribbles", "text_saliency", "TextPromptConfig",
]
