"""BYOL (Grill et al., 2020), a baseline of the paper's Table 1 (section 4).

An online network (backbone, projector, predictor) predicts the projection that a *target*
network (backbone, projector; no predictor) gives the other view:

    L = (2 - 2 cos(q1, z2')) + (2 - 2 cos(q2, z1'))        (symmetric, mean over the batch)

No gradient reaches the target; after every optimiser step its weights move towards the online
ones by an exponential moving average, w' <- tau w' + (1 - tau) w, with tau rising from its base
(0.99 here, 0.996 in the paper's ImageNet runs) to 1 on a cosine over the run:

    tau(k) = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2

What stops collapse is not a term of the loss but the asymmetry (predictor, stop-gradient, slow
target). The target is a submodule of the task, so its weights are in every checkpoint and a
resumed run continues bit-identical; the engine calls ``after_step`` after each optimiser step.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import Augmenter
from .common import ViewTask, embed_views
from ..models import projection_head


def byol_loss(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(q, z) averaged over the batch, for (N, D) predictions and (N, D) targets, fp32."""
    return (2 - 2 * F.cosine_similarity(q.float(), z.float(), dim=1)).mean()


def momentum(step: int, total_steps: int, base: float = 0.99) -> float:
    """The EMA coefficient after ``step`` of ``total_steps``: ``base`` at 0, 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau target + (1 - tau) online, parameter by parameter (buffers are copied)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(tau).add_(o.detach(), alpha=1 - tau)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


class BYOL(ViewTask):
    """Online backbone + projector + predictor, a target copy updated by EMA, the symmetric loss."""

    def __init__(self, backbone: nn.Module, augmenter: Augmenter | None = None,
                 projector_sizes: Sequence[int] = (4096, 256), predictor_sizes: Sequence[int] = (4096, 256),
                 base_momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head(backbone.feature_dim, projector_sizes)
        self.predictor = projection_head(self.projector.out_dim, predictor_sizes)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.augmenter, self.base_momentum = augmenter, base_momentum
        self.register_buffer("tau", torch.tensor(base_momentum, dtype=torch.float64))

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        q1, q2 = (self.predictor(z) for z in self.embed_views(views))
        with torch.no_grad():
            t1, t2 = embed_views(self.target_backbone, self.target_projector, views, self.share_pass)
        with torch.autocast(q1.device.type, enabled=False):
            loss = byol_loss(q1, t2) + byol_loss(q2, t1)
        return {"loss": loss, "tau": self.tau.detach().float()}

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimiser step ``step`` (counted from 0): move the target, set the next tau."""
        ema_update(self.target_backbone, self.backbone, float(self.tau))
        ema_update(self.target_projector, self.projector, float(self.tau))
        self.tau.fill_(momentum(step + 1, total_steps, self.base_momentum))
