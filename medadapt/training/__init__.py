"""Few-label fine-tuning: the trainer's config, samples, losses, the loop and its extension points.

:func:`train` runs a :class:`TrainingConfig`; parts that add a loss of their
own (the semi-supervised loop) plug in as :class:`TrainingExtension`\\ s built
from a :class:`TrainingContext`. The full recipe with every section, and
``finetune``, are in :mod:`medadapt.recipes`. :class:`OnlineLearner` fine-tunes a serving
segmenter from accepted masks kept in a :class:`ReplayBuffer`, while it serves.
"""

from .config import (
    PromptTrainingConfig,
    ScribbleLossConfig,
    TrainConfig,
    TrainingConfig,
    apply_overrides,
    build_config,
    read_config,
)
from .extension import ExtensionFactory, LabeledBatch, TrainingContext, TrainingExtension
from .online import OnlineLearner
from .online_config import OnlineConfig
from .replay import ReplayBuffer, ReplaySample
from .run import train
from .run_folder import config_changes, run_folder
from .text_prompts import fit_text_head, train_text_prompts
from .trainer import Trainer

__all__ = [
    "ExtensionFactory", "LabeledBatch", "OnlineConfig", "OnlineLearner", "PromptTrainingConfig", "ReplayBuffer",
    "ReplaySample", "ScribbleLossConfig", "TrainConfig", "Trainer", "TrainingConfig",
    "TrainingContext", "TrainingExtension", "apply_overrides", "build_config", "config_changes", "fit_text_head",
    "read_config", "run_folder", "train", "train_text_prompts",
]
