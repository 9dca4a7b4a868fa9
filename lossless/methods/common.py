"""What every method's task shares: its views come from its augmenter (``prepare``, run by the
engine without gradient), and an embedding is the projector applied to the backbone's features."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models import per_view_ready, per_view_statistics

def embed_views(backbone: nn.Module, projector: nn.Module, views: Sequence[torch.Tensor],
                share_pass: bool = True) -> list[torch.Tensor]:
    """``projector(backbone(v))`` for each view. With ``share_pass``, views of one shape share one
    pass, with each view's own batch-norm statistics (``models.per_view_statistics``): the same
    numbers as separate passes, in fewer and larger operations. Views of different shapes
    (multi-crop) and synchronised batch norms (DDP) take one pass per view."""
    if share_pass and len(views) > 1 and len({tuple(v.shape) for v in views}) == 1 and per_view_ready(backbone, projector):
        with per_view_statistics(len(views), backbone, projector):
            return list(projector(backbone(torch.cat(list(views)))).chunk(len(views)))
    return [projector(backbone(v)) for v in views]


class ViewTask(nn.Module):
    """Base of every method's task: subclasses set ``backbone``, ``projector`` and ``augmenter``.
    ``share_pass = False`` sends each view through its own pass (the path before the shared one;
    ``lossless bench train`` compares the two)."""

    share_pass = True

    def prepare(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return tuple(self.augmenter(batch["images"], generator))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def embed_views(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return embed_views(self.backbone, self.projector, views, self.share_pass)
