"""Run under torchrun (or alone): one Barlow Twins step on a fixed global batch of 16 views.

Writes the loss, the gradients (after DDP's averaging) and the batch-norm running statistics to
the path in argv[1], so the test can compare N processes with one process on the whole batch.
"""
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from lossless import distributed
from lossless.methods.barlow import BarlowTwins
from lossless.models import build_backbone


def main(out_path: str) -> None:
    device = torch.device("cpu")
    info = distributed.setup(device)
    torch.manual_seed(0)
    task = BarlowTwins(build_backbone("resnet18", width=0.125), projector_sizes=(32, 32), lambd=5e-3)
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
    if info.is_main:
        torch.save({"loss": out["loss"].detach(),
                    "grads": {n: p.grad.clone() for n, p in task.named_parameters()},
                    "buffers": {n: b.clone() for n, b in task.named_buffers()}}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
