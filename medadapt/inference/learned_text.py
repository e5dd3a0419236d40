"""Answering text with a learned text head: texts -> weights over the classes an adapter learned.

"left ventricle", "LV cavity" and "left ventricular blood pool" all reach the
left-ventricle class, and the mask is the one automatic mode draws for it. A
text unlike every training name (``text.min_similarity``) is refused rather
than matched to the nearest class: learned text prompts answer only for the
classes the adapter learned; a new structure needs zero-shot text
(:func:`medadapt.inference.segment_from_text`) or training.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..prompts.text.config import as_texts
from ..prompts.text.learned import SentenceEncoder, is_minilm, load_sentence_encoder, training_phrases


@dataclass
class TextClassMatch:
    """How texts were matched to the learned classes."""

    weights: np.ndarray  # T x C, rows sum to 1
    similarity: np.ndarray  # T: cosine similarity to the closest training phrase
    classes: list[str]  # the best class of each text


# a training phrase re-embedded by the right encoder matches the embedding stored with the head to rounding
# (bfloat16 storage, another device); another encoder of the same width does not come near
_SAME_ENCODER = 0.99
_CHECKED_PHRASES = 8


def _how_to_give_encoder() -> str:
    return ("give the folder of the encoder it was trained with: `medadapt predict ... --text-encoder FOLDER`, or "
            "segmenter.set_text_encoder(FOLDER)")


def _text_head(model: Backbone):
    head = model.text_head
    if head is None or model.adapter_config is None or model.adapter_config.text is None:
        raise MedAdaptError("this adapter has no learned text prompts")
    return head


def _recorded_encoder(model: Backbone) -> SentenceEncoder:
    """The text encoder the adapter recorded, checked against its text head."""
    name = model.adapter_config.text.encoder
    if not is_minilm(name) and not Path(name).expanduser().is_dir():
        raise MedAdaptError(
            f"this adapter's text head was trained with the text encoder in {name}, which is not on this machine "
            f"(the adapter recorded where it was when it was trained); {_how_to_give_encoder()}"
        )
    return _checked_encoder(model, load_sentence_encoder(name))


def _checked_encoder(model: Backbone, encoder: SentenceEncoder) -> SentenceEncoder:
    """``encoder`` if it is the one the text head was trained with: same width, and a few training phrases
    re-embedded give the embeddings stored with the head."""
    head, cfg = _text_head(model), model.adapter_config
    if encoder.dim != head.proj.shape[0]:
        raise MedAdaptError(
            f"text encoder {encoder.name} gives {encoder.dim}-d embeddings; this adapter's text head was trained "
            f"on {head.proj.shape[0]}-d ones (encoder {cfg.text.encoder!r}): {_how_to_give_encoder()}"
        )
    phrases, _ = training_phrases(cfg.automatic.class_names, cfg.text.aliases, cfg.text.templates)
    stored = head.phrases.detach().float().cpu()
    picks = np.unique(np.linspace(0, len(phrases) - 1, min(len(phrases), _CHECKED_PHRASES)).round().astype(int))
    picks = [int(i) for i in picks if i < stored.shape[0] and stored[i].norm() > 0]  # a never-fitted head: nothing
    if picks:
        cos = F.cosine_similarity(encoder.embed([phrases[i] for i in picks]), stored[picks], dim=1)
        if float(cos.min()) < _SAME_ENCODER:
            raise MedAdaptError(
                f"the text encoder at {encoder.folder} is not the one this adapter's text head was trained with "
                f"(recorded: {cfg.text.encoder!r}): the training phrase {phrases[picks[int(cos.argmin())]]!r} embeds "
                f"differently now (cosine {float(cos.min()):.2f} < {_SAME_ENCODER} to the embedding stored with the "
                f"head); {_how_to_give_encoder()}"
            )
    return encoder


def set_text_encoder(model, encoder: str | os.PathLike | SentenceEncoder) -> None:
    """Read an adapter's learned text prompts with the text encoder in folder ``encoder`` (or a loaded
    :class:`~medadapt.prompts.SentenceEncoder`) instead of the one the adapter recorded: for an adapter moved
    to a machine where the encoder sits elsewhere. ``model`` is a :class:`~medadapt.Segmenter` or its backbone.
    The encoder must be the one the text head was trained with (a few training phrases are re-embedded and
    compared with the embeddings stored with the head)."""
    backbone = getattr(model, "backbone", model)
    _text_head(backbone)
    loaded = encoder if isinstance(encoder, SentenceEncoder) else load_sentence_encoder(encoder)
    backbone._text_encoder = _checked_encoder(backbone, loaded)


def match_text_to_classes(model: Backbone, texts: Sequence[str]) -> TextClassMatch:
    """Class weights for each text; refuses texts unlike every training name (``min_similarity``)."""
    cfg = model.adapter_config
    head = _text_head(model)
    encoder = model._text_encoder
    if encoder is None:
        encoder = model._text_encoder = _recorded_encoder(model)
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


__all__ = ["TextClassMatch", "match_text_to_classes", "set_text_encoder"]
