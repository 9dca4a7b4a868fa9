"""LARS and the learning-rate schedule of Barlow Twins pretraining (paper section 3.3).

LARS (You et al., 2017) scales each weight matrix's update by ``eta * ||w|| / ||g + wd w||`` so
that every layer moves by a similar fraction of its norm, which keeps batch 1024 stable. As in
the Barlow Twins reference code, biases and batch-norm parameters (every 1-D parameter) are
excluded from both weight decay and the adaptation. The rate warms up linearly for 10 epochs and
then follows a cosine to 1/1000 of the base rate; the base rate scales with batch / 256.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    Per parameter group: ``lr``, ``momentum`` (0.9), ``weight_decay`` (1e-6), ``eta`` (0.001) and
    ``lars`` (whether the group gets weight decay and the adaptation; False for 1-D parameters).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if group["lars"]:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(d_norm > 0, group["eta"] * p_norm / d_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])
        return loss


def split_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (ndim > 1) with weight decay and LARS adaptation; biases and norm
    parameters (ndim == 1) without either."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float = 0.9, eta: float = 1e-3) -> torch.optim.Optimizer:
    """``lars`` (the paper's, trust coefficient ``eta``) or ``sgd``; 1-D parameters get no weight
    decay either way."""
    groups = split_decay_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    if name == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        for g in groups:
            g.pop("lars")
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}; choose lars, sgd or adamw")


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: ``base_lr * batch_size / 256``."""
    return base_lr * batch_size / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, final_ratio: float = 1e-3) -> float:
    """Multiplier of the base rate: linear from 0 over ``warmup_steps``, then a cosine from 1 down
    to ``final_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    q = min(1.0, (step - warmup_steps) / span)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * q))


def params_of(groups: Iterable[dict]) -> list[torch.Tensor]:
    return [p for g in groups for p in g["params"]]
