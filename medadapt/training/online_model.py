"""The online learner's models: a decoder-side training copy of the serving backbone, and class tokens that grow.

The training copy shares nothing with the serving model: it holds its own
prompt encoder, mask decoder, class tokens and context adapter, and in place
of the image encoder a stand-in that refuses to run (the learner trains on
cached embeddings), so copying it costs the decoder's memory, not the encoder's.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..foundation.class_tokens import ClassPromptTokens


class NoEncoder(nn.Module):
    """Stands in for the image encoder of a copy that trains on cached embeddings only."""

    def forward(self, *args: Any) -> torch.Tensor:
        raise MedAdaptError("the online learner trains on cached embeddings; its copy has no image encoder")


def training_copy(backbone: Backbone, trains: Callable[[str], bool]) -> Backbone:
    """A deep copy of ``backbone`` without its image encoder (nor a loaded sentence encoder); a parameter stays
    trainable where it was and ``trains(name)`` says so."""
    memo: dict[int, Any] = {id(backbone.image_encoder): NoEncoder()}
    if backbone._text_encoder is not None:
        memo[id(backbone._text_encoder)] = None
    model = copy.deepcopy(backbone, memo)
    for name, p in model.named_parameters():
        p.requires_grad_(p.requires_grad and trains(name))
    return model


def new_class_tokens(model: Backbone, n: int, tokens_per_class: int, first: int) -> ClassPromptTokens:
    """Tokens for ``n`` new classes, initialised from ``model``'s prompt encoder and mask decoder as
    :func:`~medadapt.adapters.add_class_prompts` does; ``first`` (the number of classes so far) seeds their noise,
    so that each class starts from tokens of its own."""
    extra = ClassPromptTokens(n, model.embed_dim, tokens_per_class).to(model.device)
    extra.init_from_box(model.prompt_encoder, model.processor.image_size, seed=first)
    extra.init_from_decoder(model.mask_decoder, seed=first)
    return extra


def joined(old: ClassPromptTokens, extra: ClassPromptTokens) -> ClassPromptTokens:
    """Class tokens of ``old``'s classes (their learned rows and hypernetworks kept) followed by ``extra``'s."""
    d, t = old.tokens.shape[-1], old.tokens.shape[1]
    out = ClassPromptTokens(old.num_classes + extra.num_classes, d, t).to(old.tokens.device)
    with torch.no_grad():
        out.tokens.copy_(torch.cat([old.tokens, extra.tokens.to(old.tokens.device)]))
        out.mask_tokens.copy_(torch.cat([old.mask_tokens, extra.mask_tokens.to(old.tokens.device)]))
    out.hypernets = nn.ModuleList([*old.hypernets, *extra.hypernets])
    return out


__all__ = ["NoEncoder", "joined", "new_class_tokens", "training_copy"]
