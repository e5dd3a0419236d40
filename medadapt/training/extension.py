"""How a part plugs into the trainer: :class:`TrainingContext` in, :class:`TrainingExtension` out.

The trainer owns the run (data, model, optimiser, epochs, checkpoints, the
log). An extension adds a loss term on data of its own and keeps state of its
own; the semi-supervised loop (:class:`medadapt.ssl.SemiSupervised`) is one.
It is built by a factory that receives a :class:`TrainingContext`, the only
view of the run it gets, and it answers the calls of
:class:`TrainingExtension`, at fixed points of the loop:

===========================  ==============================================================
call                         when
===========================  ==============================================================
``samples_to_encode()``      once, before training: extra samples for the embedding cache
``loss(batch)``              each step, inside autocast: a term added to the supervised loss (every rank
                             gets the whole global batch and returns the same loss)
``after_step()``             after each optimiser step (e.g. an EMA teacher update)
``progress()``               when the progress bar is redrawn: short statistics to show
``end_epoch()``              at the end of each epoch: statistics for ``log.csv``
``validate(samples)``        at validation: figures for ``log.csv`` measured on labelled samples
``state_dict()`` / ``load_state_dict()``  with each checkpoint, so a resumed run continues
===========================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from ..data import Case, DataConfig, Slice2D
from ..foundation import Backbone
from .distributed import World
from .samples import EmbeddingCache, ModelSample


@dataclass
class LabeledBatch:
    """The labelled part of the current step, which an extension may mix with its own data.

    ``embeddings`` (B x C x s x s) when embeddings are cached, else ``pixels``
    (B x 3 x S x S, the encoder runs); ``target`` is B x m x m on the decoder grid.
    Across ranks, B is the whole global batch, on every rank.
    """

    target: torch.Tensor
    embeddings: torch.Tensor | None = None
    pixels: torch.Tensor | None = None


@dataclass
class TrainingContext:
    """What the trainer shares with an extension.

    Attributes:
        model: the model being trained (the student).
        device: where the step runs.
        seed: the run's seed (``train.seed``).
        class_names: the classes, in label order (class k is label k + 1).
        data_config: the run's data section.
        splits: the run's cases by split name (``labeled``, ``unlabeled``, ``val``, ``test``).
        rng: the run's NumPy generator. Draw from it, not from a generator of
            your own, and the run's random stream stays one checkpointed stream.
        cache: the embedding cache, or None when the encoder runs every step.
        embeddings: samples -> their cached embeddings (B x C x s x s) on ``device``.
        prepare: data slices -> model samples (preprocessed for ``model``).
        progress: epochs done so far, fractional (the step's position in the run).
        log: a line for the user.
        world: this rank among the ranks training together (one rank unless launched by torchrun). An
            extension draws each step's global batch and random numbers on every rank alike, and splits
            its forward passes with ``world.split`` (see :mod:`medadapt.training.distributed`).
    """

    model: Backbone
    device: torch.device
    seed: int
    class_names: list[str]
    data_config: DataConfig
    splits: dict[str, list[Case]]
    rng: np.random.Generator
    cache: EmbeddingCache | None
    embeddings: Callable[[list[ModelSample]], torch.Tensor]
    prepare: Callable[[Sequence[Slice2D]], list[ModelSample]]
    progress: Callable[[], float]
    log: Callable[[str], None]
    world: World = field(default_factory=World)


class TrainingExtension(Protocol):
    """What the trainer calls on an extension (see the module's table for when)."""

    name: str  # the key of its state in checkpoints
    log_columns: dict[str, str]  # extra log.csv columns and their number formats, e.g. {"pass_rate": ".4f"}

    def samples_to_encode(self) -> list[ModelSample]: ...

    def loss(self, batch: LabeledBatch) -> torch.Tensor: ...

    def after_step(self) -> None: ...

    def progress(self) -> dict[str, str]: ...

    def end_epoch(self) -> dict[str, float]: ...

    def validate(self, samples: list[ModelSample]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


ExtensionFactory = Callable[[TrainingContext], TrainingExtension]

__all__ = ["ExtensionFactory", "LabeledBatch", "TrainingContext", "TrainingExtension"]
