import math

import pytest
import torch

from lossless.methods.barlow import BarlowTwins, barlow_twins_loss, cross_correlation
from lossless.models import build_backbone
from lossless.optim import LARS, split_decay_groups, warmup_cosine

pytestmark = pytest.mark.kernels  # `make test` runs these again under a second family of CPU kernels


def slow_barlow_loss(z1, z2, lambd, eps=1e-5):
    """The formula of section 3.3, written with plain loops over i and j."""
    n, d = z1.shape
    z1, z2 = z1.double(), z2.double()
    def standardise(z):
        out = torch.empty_like(z)
        for i in range(d):
            col = z[:, i]
            mean = sum(col.tolist()) / n
            var = sum((v - mean) ** 2 for v in col.tolist()) / n
            out[:, i] = (col - mean) / math.sqrt(var + eps)
        return out
    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i].item() * b[k, j].item() for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
    return loss


def test_loss_against_double_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    z2 = 0.7 * z1 + 0.3 * z2
    for lambd in (5e-3, 3.9e-3, 1.0):
        fast = barlow_twins_loss(z1, z2, lambd).item()
        assert math.isclose(fast, slow_barlow_loss(z1, z2, lambd), rel_tol=1e-5)
    assert math.isclose(barlow_twins_loss(z1, z2, 5e-3, scale=1 / 32).item(),
                        barlow_twins_loss(z1, z2, 5e-3).item() / 32, rel_tol=1e-6)


def test_loss_is_zero_only_for_identical_decorrelated_views():
    z = torch.randn(64, 8)
    z = torch.linalg.qr(z - z.mean(0))[0] * 8  # centred, orthogonal columns: C = I for z1 = z2
    assert barlow_twins_loss(z, z, 5e-3).item() < 1e-2
    assert torch.allclose(cross_correlation(z, z), torch.eye(8), atol=1e-4)
    assert barlow_twins_loss(z, torch.randn(64, 8), 5e-3).item() > 4  # unrelated views: C_ii ~ 0


def test_loss_is_fp32_under_bf16_autocast():
    net = BarlowTwins(build_backbone("resnet18", width=0.125, in_channels=1), projector_sizes=(32, 32))
    x = torch.randn(8, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net((x, x.flip(-1)))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_module_loss_equals_pure_function():
    torch.manual_seed(0)
    net = BarlowTwins(build_backbone("resnet18", width=0.125), projector_sizes=(16, 16), lambd=5e-3)
    a, b = torch.randn(10, 3, 16, 16), torch.randn(10, 3, 16, 16)
    out = net((a, b))
    ref = barlow_twins_loss(net.embed(a), net.embed(b), 5e-3)
    assert torch.allclose(out["loss"], ref, rtol=1e-5)


def reference_lars_step(params, grads, mus, lr, wd, eta, momentum, adapt):
    """One LARS step per parameter, the update rule written out (You et al., 2017)."""
    new = []
    for p, g, mu, a in zip(params, grads, mus, adapt):
        d = g.clone()
        if a:
            d = d + wd * p
            pn, dn = p.norm().item(), d.norm().item()
            trust = eta * pn / dn if pn > 0 and dn > 0 else 1.0
            d = d * trust
        mu = momentum * mu + d
        new.append((p - lr * mu, mu))
    return new


def test_lars_step_against_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[2].weight.zero_()  # a zero-norm weight: trust ratio falls back to 1
    groups = split_decay_groups(model, weight_decay=1e-2)
    opt = LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.02)
    params = [p for g in groups for p in g["params"]]
    adapt = [g["lars"] for g in groups for _ in g["params"]]
    assert adapt == [p.ndim > 1 for p in params]          # 1-D: no decay, no adaptation
    mus = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        x = torch.randn(8, 5)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        before = [p.detach().clone() for p in params]
        grads = [p.grad.clone() for p in params]
        expected = reference_lars_step(before, grads, mus, 0.5, 1e-2, 0.02, 0.9, adapt)
        opt.step()
        for p, (want, mu) in zip(params, expected):
            assert torch.allclose(p, want, atol=1e-6)
        mus = [mu for _, mu in expected]


@pytest.mark.parametrize("eta", [1e-3, 1e-2])
def test_pretraining_optimiser_moves_each_weight_matrix_by_rate_times_trust_coefficient(eta):
    """LARS's first step (no momentum yet) moves a weight matrix by exactly lr x eta of its norm:
    a configured ``ssl_lars_eta`` that did not reach pretraining's optimiser would move it by
    the default's 0.001 instead."""
    from lossless import config
    from lossless.optim import scaled_lr
    from lossless.pretrain import optimizer_for
    cfg = config.load_profile("smoke", ssl_lars_eta=eta)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    opt = optimizer_for(cfg, model)
    before = [m.weight.detach().clone() for m in (model[0], model[2])]
    model(torch.randn(16, 6)).pow(2).sum().backward()
    opt.step()
    for w0, m in zip(before, (model[0], model[2])):
        moved = float(torch.linalg.norm(m.weight.detach() - w0) / torch.linalg.norm(w0))
        assert math.isclose(moved, scaled_lr(cfg["ssl_lr"], cfg["ssl_batch_size"]) * eta, rel_tol=1e-4)


def test_schedule_warmup_then_cosine_to_one_thousandth():
    total, warm = 1000, 100
    assert warmup_cosine(0, total, warm) == 0.0
    assert math.isclose(warmup_cosine(50, total, warm), 0.5)
    assert math.isclose(warmup_cosine(warm, total, warm), 1.0)            # end of warm-up
    assert math.isclose(warmup_cosine(total, total, warm), 1e-3)          # the end: base / 1000
    mid = warmup_cosine(warm + (total - warm) // 2, total, warm)
    assert math.isclose(mid, 1e-3 + (1 - 1e-3) * 0.5, rel_tol=1e-6)
    values = [warmup_cosine(s, total, warm) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))               # monotone decay
