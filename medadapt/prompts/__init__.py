"""Prompts for SAM-family models: one container, and the ways to make them.

* :mod:`.types` -- :class:`Prompts`, N objects' boxes / clicks / mask prompts.
* :mod:`.simulate` -- prompts from masks: simulated training prompts, corrective
  clicks, prompts from a coarse prediction, the iterative-click loop.
* :mod:`.learned` -- learned per-class prompt tokens (automatic mode).
* :mod:`.refine` -- self-prompting: automatic masks refined by box prompts
  drawn from themselves.
* :mod:`.text` -- zero-shot text prompts: CLIP saliency -> boxes and clicks
  (BiomedCLIP read offline from the Hugging Face cache).

Each submodule declares its public names in ``__all__``; this package re-exports
them, so adding a prompt source is one import line and one ``__all__`` entry.
"""

from __future__ import annotations

from . import learned, refine, simulate, text, types
from .learned import ClassPromptTokens
from .refine import largest_component, loose_box, refine_automatic
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
    segment_from_text,
    text_saliency,
)
from .types import PAD_LABEL, Prompts

__all__ = [
    *learned.__all__,
    *refine.__all__,
    *types.__all__,
    *simulate.__all__,
    *text.__all__,
]
