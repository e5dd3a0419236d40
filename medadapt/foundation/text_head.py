"""The learned-text head: a text embedding -> one weight per learned class.

Learned text prompts (:mod:`medadapt.prompts.text.learned` for the sentence
encoder, :func:`medadapt.training.train_text_prompts` to fit it,
:func:`medadapt.inference.match_text_to_classes` to use it) weight the classes
an automatic-mode adapter learned instead of projecting a text to new decoder
tokens: every answer is then one the decoder was trained to give.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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


__all__ = ["TextClassHead"]
