"""The teacher: an exponential moving average of the student (mean teacher) or the student itself."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher:
    """A frozen copy of the model whose trainable tensors track the student's by EMA.

    Only the student's trainable parameters (decoder, adapters, class tokens)
    are averaged; frozen parts are shared in value and never change. The update
    is a fused in-place ``lerp`` on the device: no host synchronisation.
    """

    def __init__(self, student: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = dict(self.model.named_parameters())
        self.pairs = [(params[n], p) for n, p in student.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, decay: float | None = None) -> None:
        """One EMA step (``decay`` overrides the configured one; 0 copies the student)."""
        if not self.pairs:
            return
        teacher, student = zip(*self.pairs)
        torch._foreach_lerp_(list(teacher), list(student), 1.0 - (self.decay if decay is None else decay))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): t.detach().cpu() for i, (t, _) in enumerate(self.pairs)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, (t, _) in enumerate(self.pairs):
            t.copy_(state[str(i)])


__all__ = ["EMATeacher"]
