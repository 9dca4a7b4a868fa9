"""SimCLR (Chen et al., 2020), the first baseline of the paper's Table 1 (section 4).

Two views of each image share one recipe (symmetric). Backbone + a two-layer projection head
give embeddings z, L2-normalised; each view must pick out its partner among all 2N - 1 other
embeddings of the batch (NT-Xent, the normalised-temperature cross-entropy):

    l(i, j) = -log  exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)

averaged over both directions of every positive pair. The other images of the batch are the
negatives, so collapse (every z equal) costs log(2N - 1): the negatives stop it. Under DDP the
embeddings are gathered with a differentiable all-gather, so the negatives are the whole global
batch and N processes compute the loss and gradient of one process on the whole batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..augment import Augmenter
from .common import ViewTask
from ..models import projection_head


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of two (N, D) embedding batches (row i of each is a positive pair), in fp32.

    Under DDP, ``z1``/``z2`` are this process's rows: its 2N anchors are scored against the
    gathered 2 N W embeddings, and the loss is the mean over its anchors (DDP's gradient
    averaging makes that the global mean)."""
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    info = distributed.info()
    g1, g2 = distributed.all_gather_cat(z1), distributed.all_gather_cat(z2)
    keys = torch.cat([g1, g2])                                  # (2 N W, D): view 1 rows, then view 2
    total = g1.shape[0]                                         # N W
    anchors = torch.cat([z1, z2])                               # (2 N, D)
    logits = anchors @ keys.T / temperature                     # (2 N, 2 N W)
    own = info.rank * n + torch.arange(n, device=z1.device)     # the anchors' rows in g1 / g2
    self_cols = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])                    # view 1's partner is view 2 and back
    logits[torch.arange(2 * n, device=z1.device), self_cols] = float("-inf")
    return F.cross_entropy(logits, positive)


class SimCLR(ViewTask):
    """Backbone + projection head + NT-Xent; ``prepare`` makes the two symmetric views."""

    def __init__(self, backbone: nn.Module, augmenter: Augmenter | None = None,
                 projector_sizes: Sequence[int] = (2048, 128), temperature: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head(backbone.feature_dim, projector_sizes)
        self.augmenter, self.temperature = augmenter, temperature

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1, z2 = self.embed_views(views)
        with torch.autocast(z1.device.type, enabled=False):
            loss = nt_xent(z1, z2, self.temperature)
            cos = F.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return {"loss": loss, "positive_cosine": cos.detach()}
