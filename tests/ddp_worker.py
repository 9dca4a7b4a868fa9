"""Run under torchrun (or alone): one step of a method on a fixed global batch of 16 images.

``ddp_worker.py OUT [METHOD]`` (METHOD: barlow, the default, simclr or swav) writes the loss
(averaged over processes), the gradients (after DDP's averaging) and the buffers to OUT, so the
test can compare N processes with one process on the whole batch.
"""
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from lossless import distributed
from lossless.methods import BarlowTwins, SimCLR, SwAV
from lossless.models import build_backbone


def build(method: str):
    backbone = build_backbone("resnet18", width=0.125)
    if method == "barlow":
        return BarlowTwins(backbone, projector_sizes=(32, 32), lambd=5e-3)
    if method == "simclr":
        return SimCLR(backbone, projector_sizes=(32, 16), temperature=0.5)
    if method == "swav":
        return SwAV(backbone, projector_sizes=(32, 16), prototypes=12, temperature=0.1, epsilon=0.05)
    raise SystemExit(f"unknown method {method}")


def main(out_path: str, method: str = "barlow") -> None:
    device = torch.device("cpu")
    info = distributed.setup(device)
    torch.manual_seed(0)
    task = build(method)
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(16, 3, 16, 16, generator=g), torch.randn(16, 3, 16, 16, generator=g)
    if info.enabled:
        task = distributed.convert_sync_batchnorm(task, device)
        model = DistributedDataParallel(task)
        per = 16 // info.world_size
        part = slice(info.rank * per, (info.rank + 1) * per)
        out = model((v1[part], v2[part]))
    else:
        out = task((v1, v2))
    out["loss"].backward()
    loss = distributed.all_reduce_(out["loss"].detach().clone()) / info.world_size
    if info.is_main:
        torch.save({"loss": loss,
                    "grads": {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None},
                    "buffers": {n: b.clone() for n, b in task.named_buffers()}}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
