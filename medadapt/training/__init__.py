"""Few-label fine-tuning: config, samples, losses and the training loop."""

from .config import FinetuneConfig, PromptTrainingConfig, TrainConfig, config_from_dict, load_config
from .finetune import Trainer, finetune

__all__ = ["FinetuneConfig", "PromptTrainingConfig", "TrainConfig", "Trainer", "config_from_dict", "finetune", "load_config"]
