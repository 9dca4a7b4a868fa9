"""SwAV (Caron et al., 2020), a baseline of the paper's Table 1 (section 4).

Each view's embedding z (L2-normalised projection) is scored against K learnable prototypes c_k
(unit vectors): s = z C^T. A view's *code* q is an assignment of the batch to the prototypes
that is both confident and balanced (every prototype used equally), computed without gradient
by Sinkhorn-Knopp on exp(s / epsilon). The loss swaps them: each view predicts the other's code,

    L = - sum_k q2_k log softmax(s1 / t)_k  - sum_k q1_k log softmax(s2 / t)_k    (mean over images)

What stops collapse is the equipartition the Sinkhorn step imposes: all images cannot share one
prototype. Options from the reference recipe: the prototypes are renormalised after every step
and frozen for the first epoch(s) (their gradient is zeroed, so only their norm could move, and
the renormalisation undoes it); a queue of recent embeddings enlarges the batch the codes are
balanced over (needed at small batches); multi-crop adds small views that predict the large
views' codes. Under DDP the Sinkhorn sums run over the global batch. The queue and the step
count are buffers, so they are checkpointed and a resumed run continues bit-identical (under
DDP the buffers are rank 0's, which DDP broadcasts before every step: every process balances
its codes against rank 0's queue).
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


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Codes (B, K) for prototype scores (B, K): Sinkhorn-Knopp on exp(scores / epsilon), in fp64.

    Alternately rescales the K rows of Q = exp(S / eps)^T to sum to 1/K each (prototypes used
    equally) and the B columns to 1/B (each image a distribution); returns Q^T scaled so every
    image's code sums to 1. Under DDP, B and the row sums are over the global batch."""
    q = torch.exp(scores.double() / epsilon).T   # (K, B); |score| <= 1 (unit vectors): no overflow in fp64
    k = q.shape[0]
    b = torch.tensor(float(q.shape[1]), dtype=torch.float64, device=q.device)
    distributed.all_reduce_(b)
    total = distributed.all_reduce_(q.sum().clone())
    q /= total
    for _ in range(iterations):
        q /= distributed.all_reduce_(q.sum(dim=1, keepdim=True).clone())
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T.float()


def swapped_prediction(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
                       temperature: float = 0.1) -> torch.Tensor:
    """SwAV's loss: for every code ``codes[i]`` (B, K) of large view i, the cross-entropy of every
    other view's softmax(scores / t) against it, averaged over the other views, then over codes."""
    total = 0.0
    for i, q in enumerate(codes):
        others = [v for v in range(len(scores)) if v != i]
        sub = sum(-(q * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(1).mean() for v in others)
        total = total + sub / len(others)
    return total / len(codes)


class SwAV(ViewTask):
    """Backbone + projection head + prototypes; codes by Sinkhorn-Knopp; the swapped prediction."""

    def __init__(self, backbone: nn.Module, augmenter: Augmenter | None = None,
                 projector_sizes: Sequence[int] = (2048, 128), prototypes: int = 3000,
                 temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
                 freeze_steps: int = 0, queue_length: int = 0, queue_start_step: int = 0):
        super().__init__()
        self.backbone = backbone
        self.projector = projection_head(backbone.feature_dim, projector_sizes)
        self.prototypes = nn.Linear(self.projector.out_dim, prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.augmenter = augmenter
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations
        self.freeze_steps, self.queue_start_step = freeze_steps, queue_start_step
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # queue[v] holds the latest ``queue_length`` embeddings of large view v, newest first
        self.register_buffer("queue", torch.zeros(2, queue_length, self.projector.out_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.prototypes.weight.register_hook(self._freeze)

    def _freeze(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * 0 if int(self.steps_done) < self.freeze_steps else grad

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        z = [F.normalize(e.float(), dim=1) for e in self.embed_views(views)]
        with torch.autocast(z[0].device.type, enabled=False):
            scores = [self.prototypes(zv) for zv in z]
            codes = []
            use_queue = self.queue.shape[1] > 0 and int(self.steps_done) >= self.queue_start_step
            for i in range(2):
                s = scores[i].detach()
                if use_queue and int(self.queue_filled) > 0:
                    s = torch.cat([s, self.prototypes(self.queue[i, :int(self.queue_filled)]).detach()])
                codes.append(sinkhorn(s, self.epsilon, self.iterations)[:len(z[i])])
            loss = swapped_prediction(scores, codes, self.temperature)
            if self.queue.shape[1] > 0:
                self._enqueue([z[0].detach(), z[1].detach()])
            entropy = -(codes[0] * torch.log(codes[0].clamp_min(1e-12))).sum(1).mean()
        return {"loss": loss, "code_entropy": entropy.detach(),
                "prototypes_used": (codes[0].argmax(1).unique().numel() * torch.ones(())).detach()}

    @torch.no_grad()
    def _enqueue(self, batches: Sequence[torch.Tensor]) -> None:
        n, length = len(batches[0]), self.queue.shape[1]
        if length > n:                                  # shift the older entries back by n
            self.queue[:, n:] = self.queue[:, :length - n].clone()
        for i, zb in enumerate(batches):
            self.queue[i, :min(n, length)] = zb[:length]
        self.queue_filled.fill_(min(length, int(self.queue_filled) + n))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Renormalise the prototypes (every step, as the reference does) and count the step."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.steps_done.fill_(step + 1)
