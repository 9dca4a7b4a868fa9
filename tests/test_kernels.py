"""The CPU fast paths of a training step compute what the stock path computes.

``kernels.Conv2d`` (GEMM weight gradient for small outputs) against autograd through
``F.conv2d`` and against a brute-force sum; ``models.per_view_statistics`` (both views in one
pass, each with its own batch-norm statistics) against one pass per view."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossless import distributed, kernels
from lossless.methods import BarlowTwins, common
from lossless.models import BarlowTwinsProjector, build_backbone, per_view_ready

pytestmark = pytest.mark.kernels  # `make test` runs these again under a second family of CPU kernels


def naive_weight_grad(x, dy, k, stride, pad):
    """dW[o, c, i, j] = sum over n, h, w of dy[n, o, h, w] * xpad[n, c, h*s + i, w*s + j]."""
    xp = F.pad(x, (pad, pad, pad, pad))
    n, o, ho, wo = dy.shape
    dw = torch.zeros(o, x.shape[1], k, k, dtype=x.dtype)
    for i, j in itertools.product(range(k), range(k)):
        patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
        dw[:, :, i, j] = torch.einsum("nohw,nchw->oc", dy, patch)
    return dw


@pytest.mark.parametrize("c,o,h,k,stride", [(3, 5, 4, 3, 1), (4, 6, 7, 3, 2), (4, 6, 7, 1, 2), (2, 3, 2, 3, 1)])
def test_gemm_weight_grad_matches_a_brute_force_sum(c, o, h, k, stride):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, c, h, h, generator=g, dtype=torch.float64)
    pad = k // 2
    ho = (h + 2 * pad - k) // stride + 1
    dy = torch.randn(3, o, ho, ho, generator=g, dtype=torch.float64)
    got = kernels.weight_grad_gemm(x, dy, torch.Size((o, c, k, k)), (stride, stride), (pad, pad))
    torch.testing.assert_close(got, naive_weight_grad(x, dy, k, stride, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("h,k,stride", [(2, 3, 1), (4, 3, 1), (7, 3, 2), (7, 1, 2), (8, 3, 2)])
def test_conv2d_gradients_match_stock_conv(h, k, stride, channels_last):
    torch.manual_seed(0)
    fast = kernels.Conv2d(8, 12, k, stride=stride, padding=k // 2, bias=False).double()
    stock = nn.Conv2d(8, 12, k, stride=stride, padding=k // 2, bias=False).double()
    stock.load_state_dict(fast.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fast, stock = fast.to(memory_format=fmt), stock.to(memory_format=fmt)
    x = torch.randn(5, 8, h, h, dtype=torch.float64).contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert kernels.uses_gemm_weight_grad(fast, x)
    ya, yb = fast(xa), stock(xb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, stock.weight.grad, rtol=1e-10, atol=1e-10)


def test_conv2d_under_bf16_autocast_matches_stock_conv():
    torch.manual_seed(0)
    fast = kernels.Conv2d(16, 16, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    stock = nn.Conv2d(16, 16, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(32, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    outs = []
    for m in (fast, stock):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        assert m.weight.grad.dtype == torch.float32
        outs.append((y.float(), m.weight.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    # the same sum in another order, rounded to bf16 once: within bf16's relative step
    err = (outs[0][1] - outs[1][1]).abs().max() / outs[1][1].abs().max()
    assert err < 2e-2


def test_large_outputs_and_inference_take_the_stock_path():
    conv = kernels.Conv2d(4, 4, 3, padding=1, bias=False)
    assert not kernels.uses_gemm_weight_grad(conv, torch.zeros(2, 4, 5, 5))   # 25 output pixels
    assert kernels.uses_gemm_weight_grad(conv, torch.zeros(2, 4, 4, 4))
    with torch.no_grad():
        assert not kernels.uses_gemm_weight_grad(conv, torch.zeros(2, 4, 4, 4))
    conv.weight.requires_grad_(False)
    assert not kernels.uses_gemm_weight_grad(conv, torch.zeros(2, 4, 4, 4))


def _nets(seed=0):
    torch.manual_seed(seed)
    backbone = build_backbone("resnet18", in_channels=1, width=0.125, image_size=16)
    return backbone.double(), BarlowTwinsProjector(backbone.feature_dim, (32, 32, 32)).double()


def test_one_pass_for_both_views_equals_one_pass_per_view():
    g = torch.Generator().manual_seed(1)
    views = (torch.randn(6, 1, 16, 16, generator=g, dtype=torch.float64),
             torch.randn(6, 1, 16, 16, generator=g, dtype=torch.float64) * 2 + 1)
    results = []
    for share in (True, False):
        backbone, projector = _nets()
        z1, z2 = common.embed_views(backbone, projector, views, share_pass=share)
        loss = (z1 * z2).sum() + z1.square().sum() - 0.5 * z2.sum()
        loss.backward()
        nets = nn.ModuleDict({"b": backbone, "p": projector})
        results.append((z1.detach(), z2.detach(), {n: p.grad.clone() for n, p in nets.named_parameters()},
                        {n: b.clone() for n, b in nets.named_buffers()}))
    (a1, a2, ga, ba), (b1, b2, gb, bb) = results
    torch.testing.assert_close(a1, b1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a2, b2, rtol=1e-12, atol=1e-12)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-9, atol=1e-12, msg=n)
    for n in ba:  # running means and variances: updated once per view, in order
        torch.testing.assert_close(ba[n], bb[n], rtol=1e-12, atol=1e-12, msg=n)
    assert ba["b.stem.1.num_batches_tracked"] == 2


def test_barlow_twins_loss_is_the_same_with_a_shared_pass():
    views = (torch.randn(8, 1, 16, 16), torch.randn(8, 1, 16, 16))
    losses = []
    for share in (True, False):
        torch.manual_seed(0)
        task = BarlowTwins(build_backbone("resnet18", in_channels=1, width=0.125, image_size=16), None, (32, 32))
        task.share_pass = share
        losses.append(task(views)["loss"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_synchronised_batch_norms_fall_back_to_one_pass_per_view():
    backbone, projector = _nets()
    assert per_view_ready(backbone, projector)
    synced = distributed.convert_sync_batchnorm(backbone, torch.device("cpu"))
    assert not per_view_ready(synced, projector)


def test_unequal_views_are_refused_inside_a_shared_pass():
    from lossless.models import BatchNorm1d, per_view_statistics
    bn = BatchNorm1d(3)
    with per_view_statistics(2, bn), pytest.raises(ValueError, match="equal views"):
        bn(torch.zeros(5, 3))
    assert bn.views == 1                                              # restored on the way out


STRIDED_1X1 = """
import torch
from torch import nn
from lossless import kernels
torch.set_num_threads(2)  # the corruption needs more than one thread
torch.manual_seed(0)
for batch in (3, 57):
    for _ in range(10):
        conv = kernels.Conv2d(8, 16, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
        ref = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        ref.load_state_dict(conv.state_dict())
        x = torch.randn(batch, 8, 16, 16)
        xl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        xr = x.clone().requires_grad_()
        y, yr = conv(xl), ref(xr)
        dy = torch.randn_like(yr)
        (y * dy).sum().backward()
        (yr * dy).sum().backward()
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(xl.grad, xr.grad)
        torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
        scratch = [torch.randn(1000) for _ in range(100)]  # allocations that meet a corrupted heap
print("ok")
"""


def test_a_strided_1x1_convolution_on_few_channels_and_an_odd_batch_runs_and_matches(tmp_path):
    """oneDNN's weight gradient of a strided 1 x 1 convolution on a channels-last CPU input with
    8 channels, an odd batch and two threads corrupted memory (a segmentation fault in a
    pseudo-label round of ResNet-18 at width 0.125); kernels.Conv2d subsamples first. Run in a process of its own, so
    that the crash it guards is a failure here, not a lost worker; the gradients must match the
    stock layer on a contiguous input. Fails (signal 11 or 6) without the subsampling."""
    import os
    import subprocess
    import sys
    script = tmp_path / "strided.py"
    script.write_text(STRIDED_1X1)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])
