"""Fitting learned text prompts: the text head learns the class names (and their aliases)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..adapters import LearnedTextConfig, add_text_head
from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..foundation.text_head import TextClassHead
from ..prompts.text.learned import SentenceEncoder, load_sentence_encoder, training_phrases


def fit_text_head(
    head: TextClassHead, phrase_emb: torch.Tensor, labels: Sequence[int], steps: int = 300, lr: float = 1e-3,
    identity_weight: float = 1e-2,
) -> dict[str, float]:
    """Train the head to tell the classes apart from their names (cross-entropy over the phrases).

    The projection is pulled towards the identity so that phrasings never seen
    in training keep the encoder's notion of similarity. Deterministic: full
    batch, no sampling. Returns the final loss and training accuracy.
    """
    y = torch.as_tensor(list(labels), dtype=torch.long)
    x = phrase_emb.to(head.keys.device, torch.float32)
    with torch.no_grad():
        head.phrases.copy_(x)
        for c in range(head.keys.shape[0]):
            head.keys[c] = x[y == c].mean(0)
    eye = torch.eye(x.shape[1], device=x.device)
    params = [head.proj, head.keys, head.log_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(head(x), y) + identity_weight * (head.proj - eye).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((head(x).argmax(1).cpu() == y).float().mean())
    return {"loss": float(loss.detach()), "accuracy": acc}


def train_text_prompts(
    model: Backbone, config: LearnedTextConfig, encoder: SentenceEncoder | None = None
) -> dict[str, float]:
    """Teach an automatic-mode model to answer text: fit its text head on the class names.

    Needs learned class prompts (an adapter with ``automatic``). Sets
    ``model.adapter_config.text`` so that :func:`medadapt.adapters.save_adapter`
    writes the head and loading the adapter restores it. Returns the fit's
    loss and accuracy on the training phrases.
    """
    cfg = model.adapter_config
    if cfg is None or cfg.automatic is None or model.class_prompts is None:
        raise MedAdaptError("learned text prompts need an adapter with learned class prompts (automatic mode)")
    unknown = sorted(set(config.aliases) - set(cfg.automatic.class_names))
    if unknown:
        raise MedAdaptError(f"text.aliases names classes {unknown} this adapter does not have; its classes are "
                            f"{cfg.automatic.class_names}")
    encoder = encoder or load_sentence_encoder(config.encoder)
    config.embed_dim = encoder.dim
    head = add_text_head(model, config, cfg.automatic.class_names)
    phrases, labels = training_phrases(cfg.automatic.class_names, config.aliases, config.templates)
    stats = fit_text_head(head, encoder.embed(phrases), labels, steps=config.steps)
    head.requires_grad_(True)
    cfg.text = config
    model._text_encoder = encoder
    return stats


__all__ = ["fit_text_head", "train_text_prompts"]
