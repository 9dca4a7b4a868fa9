"""Running under ``torchrun``: process group, rank helpers, and batch norm synchronised on CPU too.

``torchrun --nproc_per_node=N -m lossless pretrain ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`setup` then joins the group (NCCL on GPU, gloo on CPU). Without those variables everything
runs as one process and these helpers are no-ops.

torch's own ``SyncBatchNorm`` refuses CPU tensors, so :class:`SyncBatchNorm` here computes the
batch statistics with a differentiable all-reduce of per-channel sums; on CUDA the native one is
used. Either way every process normalises with the statistics of the whole global batch, which is
what makes N processes equal to one process on the concatenated batch.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(minutes=30)
        store, rank, size = attempt_store(timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return info()


def attempt_store(timeout: datetime.timedelta):
    """The rendezvous store of ``env://``, seen through a prefix for this restart attempt.

    ``torchrun --standalone`` serves one store from its agent for the whole job and hands every
    attempt the same address. Without a prefix, a group restarted after a worker died reads the
    keys that the previous attempt's processes wrote (gloo's listening addresses among them), so
    it may connect to the dead worker's old port and hang or fail in ``init_process_group``
    (2 of 4 restarts failed so before this). ``TORCHELASTIC_RESTART_COUNT`` numbers the attempts."""
    from torch.distributed import rendezvous
    store, rank, size = next(rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"lossless/attempt-{attempt}/", store), rank, size


def info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def barrier() -> None:
    if info().enabled:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x; every process's x feeds every y, so dL/dx = sum of dL/dy."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over processes (identity for one process): the backward pass sums the
    gradients of every process's copy, so the gradient equals that of one big batch."""
    if not info().enabled:
        return t
    return _AllReduceSum.apply(t)


class _AllGatherCat(torch.autograd.Function):
    """y = the processes' x concatenated along dim 0, in rank order. Every process's loss may use
    every slice, so the gradient of a process's own slice is the sum of all processes' gradients
    for it (an all-reduce of dL/dy, then the slice)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), t.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Differentiable all-gather (identity for one process): (n, ...) on each of W processes ->
    (W n, ...) on every process, rank 0's rows first. Every process must pass the same n. With
    DDP's gradient averaging, W processes that each take the mean loss of their own anchors
    against the gathered batch get the gradient of one process on the whole batch."""
    if not info().enabled:
        return t
    return _AllGatherCat.apply(t)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes of a tensor that needs no gradient (Sinkhorn's sums)."""
    if info().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_true(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a NaN loss on one rank)."""
    if not info().enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return bool(t.item() > 0)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch for any device (gloo on CPU included)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and info().enabled):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or not self.track_running_stats, self.momentum, self.eps)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        stats = all_reduce_sum(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm*d becomes a synchronised one (torch's on CUDA, ours elsewhere)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:  # the same Parameter objects: an optimizer built earlier still holds them
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
