"""Answering text with a learned text head: texts -> weights over the classes an adapter learned.

"left ventricle", "LV cavity" and "left ventricular blood pool" all reach the
left-ventricle class, and the mask is the one automatic mode draws for it. A
text unlike every training name (``text.min_similarity``) is refused rather
than matched to the nearest class: learned text prompts answer only for the
classes the adapter learned; a new structure needs zero-shot text
(:func:`medadapt.inference.segment_from_text`) or training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..prompts.text.config import as_texts
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
    texts = as_texts(texts)
    emb = encoder.embed(texts).to(head.keys.device)
    # the refusal measures the structure's name, not a template's words around it ("segment the aorta" is near
    # "segment the myocardium" by "segment the" alone)
    cores = [_named(t, cfg.text.templates) for t in texts]
    core_emb = emb if cores == texts else encoder.embed(cores).to(head.keys.device)
    with torch.no_grad():
        weights = head(emb).softmax(dim=-1).float().cpu().numpy()
        sim = (core_emb @ F.normalize(head.phrases.float(), dim=-1).T).max(dim=1).values.cpu().numpy()
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


def _named(text: str, templates: Sequence[str]) -> str:
    """What ``text`` names, without a template around it ("segment the aorta" -> "aorta"); the text itself when
    no template fits it."""
    plain = " ".join(text.split())
    for tpl in templates:
        if tpl.strip() == "{}":
            continue
        pattern = re.escape(" ".join(tpl.split())).replace(re.escape("{}"), "(.+)")
        found = re.fullmatch(pattern, plain.rstrip(".!?"), flags=re.IGNORECASE)
        if found and found.group(1).strip():
            return found.group(1).strip()
    return text


__all__ = ["TextClassMatch", "match_text_to_classes"]
