"""Barlow Twins (Zbontar et al., 2021), as the paper uses it (section 3.3).

Two views of each image go through the backbone and the projector (three linear layers of 1024
units). The embeddings are standardised along the batch, and their cross-correlation matrix

    C_ij = (1/N) sum_b  z1_bi z2_bj        (z standardised per dimension over the batch)

is pushed towards the identity:

    L = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2

The first (invariance) term makes the two views agree; the second (redundancy reduction) term
decorrelates the dimensions so the representation cannot collapse to a constant. The paper
states lambda = 5e-3; the authors' code used 3.9e-3 and multiplied the loss by 1/32.

The loss is computed in fp32 even under autocast: the sums of squares over a 1024x1024 matrix
overflow or lose all precision in fp16, the NaN losses most reported by public implementations.
Under DDP, C is summed across processes with a differentiable all-reduce, so N processes compute
the loss and gradient of the single global batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import distributed
from ..augment import Augmenter
from .common import ViewTask
from ..models import BarlowTwinsProjector


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C (D, D) of two (N, D) embedding batches, each standardised per dimension over the batch
    (biased variance plus ``eps``, exactly a non-affine BatchNorm1d in training mode)."""
    z1, z2 = z1.float(), z2.float()
    n1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    n2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    return n1.T @ n2 / z1.shape[0]


def redundancy_reduction_loss(c: torch.Tensor, lambd: float = 5e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, invariance term, redundancy term) of a cross-correlation matrix ``c`` (D, D)."""
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off, on, off


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, scale: float = 1.0) -> torch.Tensor:
    """The Barlow Twins loss of two (N, D) embedding batches (one process, fp32)."""
    return scale * redundancy_reduction_loss(cross_correlation(z1, z2), lambd)[0]


class BarlowTwins(ViewTask):
    """Backbone + projector + the loss; ``prepare`` makes the two asymmetric views on the device."""

    def __init__(self, backbone: nn.Module, augmenter: Augmenter | None = None,
                 projector_sizes: Sequence[int] = (1024, 1024, 1024), lambd: float = 5e-3, scale: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.projector = BarlowTwinsProjector(backbone.feature_dim, projector_sizes)
        self.bn = nn.BatchNorm1d(self.projector.out_dim, affine=False)  # the standardisation of C
        self.augmenter, self.lambd, self.scale = augmenter, lambd, scale

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        z1, z2 = self.embed_views(views)
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = z1.float(), z2.float()
            n = z1.shape[0] * distributed.info().world_size
            # bn is a SyncBatchNorm under DDP: standardised with the global batch's statistics
            c = distributed.all_reduce_sum(self.bn(z1).T @ self.bn(z2)) / n
            loss, on, off = redundancy_reduction_loss(c, self.lambd)
            diag = torch.diagonal(c)
        return {"loss": self.scale * loss, "invariance": on.detach(), "redundancy": off.detach(),
                "c_diag_mean": diag.mean().detach(),
                "c_offdiag_rms": torch.sqrt(off.detach() / (c.numel() - c.shape[0]))}


def correlation_mass(c) -> dict:
    """Where a cross-correlation matrix's mass sits: the mean of its diagonal (1 when the two
    views agree on every feature) and the root mean square of its off-diagonal entries (0 when
    the features are decorrelated)."""
    import numpy as np
    c = np.asarray(c, dtype=np.float64)
    off = c - np.diag(np.diag(c))
    return {"mean diagonal": float(np.diag(c).mean()),
            "rms off-diagonal": float(np.sqrt((off ** 2).sum() / (off.size - len(c))))}
