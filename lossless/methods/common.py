"""What every method's task shares: its views come from its augmenter (``prepare``, run by the
engine without gradient), and an embedding is the projector applied to the backbone's features."""
from __future__ import annotations

import torch
from torch import nn


class ViewTask(nn.Module):
    """Base of every method's task: subclasses set ``backbone``, ``projector`` and ``augmenter``."""

    def prepare(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return tuple(self.augmenter(batch["images"], generator))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))
