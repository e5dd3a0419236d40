"""Answering text with a learned text head: texts -> weights over the classes an adapter learned.

"left ventricle", "LV cavity" and "left ventricular blood pool" all reach the
left-ventricle class, and the mask is the one automatic mode draws for it. A
text unlike every training name (``text.min_similarity``) is refused rather
than matched to the nearest class: learned text prompts answer only for the
classes the adapter learned; a new structure needs zero-shot text
(:func:`medadapt.inference.segment_from_text`) or training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..prompts.text.learned import load_sentence_encoder


@dataclass
class TextClassMatch:
    """How texts were matched to the learned classes."""

    weights: np.ndarray  # T x C, rows sum to 1
    similarity: np.ndarray  # T: cosine similarity to the closest training phrase
    classes: list[str]  # the best class of each text


def match_text_to_classes(model: Backbone, texts: Sequence[str]) -> TextClassMatch:
    """Class weights for each text; refuses texts unlike every training name (``min_similarity``)."""
    cfg = model.adapter_config
    head = model.text_head
    if head is None or cfg.text is None:
        raise MedAdaptError("this adapter has no learned text prompts")
    encoder = model._text_encoder
    if encoder is None:
        encoder = model._text_encoder = load_sentence_encoder(cfg.text.encoder)
    if encoder.dim != head.proj.shape[0]:
        raise MedAdaptError(
            f"text encoder {encoder.name} gives {encoder.dim}-d embeddings; this adapter's text head was trained "
            f"on {head.proj.shape[0]}-d ones (encoder {cfg.text.encoder!r})"
        )
    emb = encoder.embed(list(texts)).to(head.keys.device)
    with torch.no_grad():
        weights = head(emb).softmax(dim=-1).float().cpu().numpy()
        sim = (emb @ F.normalize(head.phrases.float(), dim=-1).T).max(dim=1).values.cpu().numpy()
    names = cfg.automatic.class_names
    best = [names[i] for i in weights.argmax(1)]
    far = [(t, float(s), b) for t, s, b in zip(texts, sim, best) if s < cfg.text.min_similarity]
    if far:
        t, s, b = far[0]
        raise MedAdaptError(
            f"text {t!r} is not like any class name this adapter learned (closest: {b!r}, similarity {s:.2f} < "
            f"text.min_similarity {cfg.text.min_similarity}); it knows {names}. For other structures attach a CLIP "
            "model (set_text_model) for zero-shot text"
        )
    return TextClassMatch(weights=weights, similarity=sim, classes=best)


__all__ = ["TextClassMatch", "match_text_to_classes"]
