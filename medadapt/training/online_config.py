"""How an :class:`~medadapt.training.online.OnlineLearner` trains: one dataclass that a YAML section maps onto."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.config import build_dataclass, check_fields, check_ranges
from ..core.errors import MedAdaptError

MODES = ("box", "points", "box+points")


@dataclass
class OnlineConfig:
    """How an :class:`OnlineLearner` trains (the prompt settings mean what they mean in ``prompts:`` of a
    fine-tuning config)."""

    lr: float = 3e-4
    token_lr_scale: float = 10.0  # class prompt/mask tokens learn this many times faster
    weight_decay: float = 0.0
    batch_size: int = 4
    steps_per_sample: int = 8  # steps the background worker runs per newly accepted sample
    replay: bool = True  # batches mix the newest sample(s) with uniformly drawn older ones; False: newest only
    newest: int = 1  # newest samples in every batch
    train_classes: bool = True  # automatic loss on the learned class tokens
    tokens_per_class: int = 2  # for classes of an adapter the learner creates
    prompted: list[str] = field(default_factory=lambda: ["box", "points"])  # simulated prompt modes; [] = none
    box_jitter: float = 0.1
    n_pos: int = 1
    n_neg: int = 0
    corrective_clicks: int = 1
    prompted_weight: float = 1.0
    proposal_clicks: int = 0  # corrective clicks trained from the class tokens' proposal (what the app opens with)
    proposal_weight: float = 1.0
    worker_threads: int = 1  # torch threads of the background worker; 0 = the process default
    autosave: bool = True  # the background worker saves the checkpoint after each burst
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "online")
        check_ranges(self, "online", {
            "lr": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 3.0e-4"),
            "token_lr_scale": (lambda v: v > 0, "> 0"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "batch_size": (lambda v: v >= 1, ">= 1"),
            "steps_per_sample": (lambda v: v >= 0, ">= 0"),
            "newest": (lambda v: 1 <= v <= self.batch_size, f"1 to batch_size ({self.batch_size})"),
            "tokens_per_class": (lambda v: v >= 1, ">= 1"),
            "prompted": (lambda v: set(v) <= set(MODES), f"a list of modes from {list(MODES)}"),
            "box_jitter": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "n_pos": (lambda v: v >= 0, ">= 0"),
            "n_neg": (lambda v: v >= 0, ">= 0"),
            "corrective_clicks": (lambda v: v >= 0, ">= 0"),
            "prompted_weight": (lambda v: v >= 0, ">= 0"),
            "proposal_clicks": (lambda v: v >= 0, ">= 0"),
            "proposal_weight": (lambda v: v >= 0, ">= 0"),
            "worker_threads": (lambda v: v >= 0, ">= 0 (0: the process default)"),
        })
        if not self.train_classes and not self.prompted and not self.proposal_clicks:
            raise MedAdaptError("nothing to train: set online train_classes: true, prompted: [box, points] and/or "
                                "proposal_clicks: 2")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "OnlineConfig":
        """Build from a plain dict (a YAML section), rejecting unknown keys."""
        return build_dataclass(cls, dict(data or {}), "online")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["OnlineConfig"]
