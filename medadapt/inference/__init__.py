"""Inference: the :class:`Segmenter` (``set_image`` once, ``predict`` many times) and what runs on top of it.

* :mod:`.predictor` -- :class:`Segmenter`: promptable, automatic, text and volume prediction;
* :mod:`.prediction` -- :class:`Prediction`, what ``predict`` returns;
* :mod:`.optimize` -- inference optimisation (folded BatchNorm, merged LoRA, bf16, channels-last);
* :mod:`.refine` -- self-prompting: automatic masks refined by boxes drawn from themselves;
* :mod:`.text` -- zero-shot text: CLIP saliency -> prompts -> the promptable decoder;
* :mod:`.learned_text` -- learned text prompts: texts -> weights over the learned classes;
* :mod:`.segment` -- one-shot verbs (``segment_file``, ``segment_from_box``);
* :mod:`.volume_api`, :mod:`.volume`, :mod:`.propagation`, :mod:`.embedding_cache` -- volumes: ``set_volume``,
  one object propagated from prompts on a few slices (``predict_volume``, ``correct_volume``), slice embeddings
  cached in memory up to a budget and on disk beyond it;
* :mod:`.cleanup` -- optional clean-up of automatic label maps (each class's largest 3-D component, holes filled);
* :mod:`.batch` -- batch inference over folders, datasets and lists (``segment_batch``, what ``medadapt segment`` runs),
  with :mod:`.batch_inputs` finding the inputs and checking their prompts file.
"""

from .batch import BatchResult, read_manifest, segment_batch
from .cleanup import CLEANUPS, clean_labels, fill_holes, keep_largest
from .guidance import Guidance, guidance, uncertainty_map
from .learned_text import TextClassMatch, match_text_to_classes
from .optimize import bf16_is_fast, optimize_for_inference, resolve_precision
from .prediction import Prediction
from .predictor import Segmenter
from .propagation import PropagationConfig
from .refine import refine_automatic
from .text import segment_from_text
from .volume import VolumeGeometry

__all__ = [
    "BatchResult", "CLEANUPS", "clean_labels", "fill_holes", "keep_largest", "Guidance", "Prediction", "Segmenter", "TextClassMatch", "bf16_is_fast", "match_text_to_classes",
    "optimize_for_inference", "PropagationConfig", "read_manifest", "refine_automatic", "resolve_precision",
    "segment_batch", "segment_from_text", "VolumeGeometry", "guidance", "uncertainty_map",
]
