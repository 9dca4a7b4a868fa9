"""FixMatch (lossless/fixmatch.py): the loss against a per-image reference, the moving average,
the step's draws, a crashed run resumed to the same weights, and the result it writes."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossless import config, runs
from lossless.augment import Augmenter
from lossless.errors import LosslessError
from lossless.finetune import Classifier, load_classifier
from lossless.fixmatch import FixMatch, fixmatch, fixmatch_lr, fixmatch_optimizer
from lossless.models import build_backbone


def smoke(tmp_path, name="runs", **kw):
    small = dict(fm_epochs=2, fm_max_steps_per_epoch=3, fm_batch_size=8, fm_mu=2, checkpoint_every_steps=1)
    small.update(kw)
    return config.load_profile("smoke", dict(runs_dir=str(tmp_path / name), progress=False, **small))


def tiny_task(threshold=0.5, lambda_u=0.7, n_labelled=12, seed=0):
    torch.manual_seed(seed)
    backbone = build_backbone("resnet18", in_channels=1, width=0.125, image_size=16, maxpool=False)
    model = Classifier(backbone, 3, Augmenter([], (0.5,), (0.25,))).double()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_labelled, 16, 16, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, n_labelled)
    return FixMatch(model, images, labels, batch_size=4, threshold=threshold, lambda_u=lambda_u,
                    ema_decay=0.9, translate=0.125, blur_sigma_max=1.0), images, labels


def test_loss_equals_a_per_image_reference():
    """Labelled cross-entropy + lambda_u x the mean over ALL unlabelled images of the masked
    cross-entropy of the strong view against the weak view's arg-max (fp64, one image at a time;
    the task computes its losses in fp32)."""
    task, _, _ = tiny_task()
    task.eval()  # batch norm with running statistics: each image's logits do not depend on the batch
    with torch.no_grad():
        task.model.head[-1].weight.mul_(300.0)  # confidences spread out, not all near 1/3
    g = torch.Generator().manual_seed(0)
    xl, xw, xs = (torch.randn(k, 1, 16, 16, generator=g, dtype=torch.float64) for k in (4, 6, 6))
    yl = torch.tensor([0, 1, 2, 1])
    probs = [torch.softmax(task.model(xw[i:i + 1]), 1)[0] for i in range(6)]
    top = sorted(p.max().item() for p in probs)
    task.threshold = (top[2] + top[3]) / 2  # three images pass, three do not
    out = task((xl, yl, xw, xs, None))
    ref_l = np.mean([F.cross_entropy(task.model(xl[i:i + 1]), yl[i:i + 1]).item() for i in range(4)])
    terms = [F.cross_entropy(task.model(xs[i:i + 1]), p.argmax().view(1)).item()
             if p.max().item() >= task.threshold else 0.0 for i, p in enumerate(probs)]
    assert sum(t > 0 for t in terms) == 3
    assert out["loss_l"].item() == pytest.approx(ref_l, rel=1e-6)
    assert out["loss_u"].item() == pytest.approx(np.mean(terms), rel=1e-6)
    assert out["loss"].item() == pytest.approx(ref_l + 0.7 * np.mean(terms), rel=1e-6)
    assert out["mask"].item() == pytest.approx(0.5)


def test_no_confident_image_means_no_unlabelled_loss():
    task, _, _ = tiny_task(threshold=0.999999)
    task.eval()
    x = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    out = task((x, torch.tensor([0, 1]), x, x, None))
    assert out["loss_u"].item() == 0.0 and out["mask"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["loss_l"].item())


def test_moving_average_follows_its_formula():
    task, _, _ = tiny_task()
    before = [p.detach().clone() for p in task.ema.parameters()]
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
        for b in task.model.buffers():
            if b.is_floating_point():
                b.add_(2.0)
    task.after_step(0, 10)
    for e, p0, p in zip(task.ema.parameters(), before, task.model.parameters()):
        assert torch.allclose(e, 0.9 * p0 + 0.1 * p, atol=1e-12)
    for e, b in zip(task.ema.buffers(), task.model.buffers()):
        assert torch.equal(e, b)
    assert not any(p.requires_grad for p in task.ema.parameters())


def test_a_step_draws_labelled_images_only_and_repeats_from_its_seed():
    task, images, labels = tiny_task(n_labelled=5)
    pool = torch.from_numpy(np.full((6, 16, 16, 1), 7, dtype=np.uint8))
    a = task.prepare({"images": pool}, torch.Generator().manual_seed(3))
    b = task.prepare({"images": pool}, torch.Generator().manual_seed(3))
    for x, y in zip(a[:4], b[:4]):
        assert torch.equal(x, y)
    xl, yl, xw, xs, hidden = a
    assert xl.shape == (4, 1, 16, 16) and xw.shape == xs.shape == (6, 1, 16, 16) and hidden is None
    assert set(yl.tolist()) <= set(labels.tolist())
    # weak views of a constant image are that constant (a flip and a shift that repeats the border)
    assert torch.allclose(xw, torch.full_like(xw, (7 / 255 - 0.5) / 0.25), atol=1e-6)


def test_schedule_and_weight_decay_groups():
    assert fixmatch_lr(0, 100) == 1.0
    assert fixmatch_lr(100, 100) == pytest.approx(np.cos(7 * np.pi / 16))
    task, _, _ = tiny_task()
    opt = fixmatch_optimizer(task.model, 0.03, 5e-4)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0 and opt.defaults["nesterov"]
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    n = sum(1 for p in task.model.parameters())
    assert len(decayed["params"]) + len(plain["params"]) == n


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = fixmatch(smoke(tmp_path, "a"))
    original = FixMatch.after_step

    def crash(self, step, total):
        original(self, step, total)
        if step == 3:
            raise Crash
    monkeypatch.setattr(FixMatch, "after_step", crash)
    cfg = smoke(tmp_path, "b")
    with pytest.raises(Crash):
        fixmatch(cfg)
    monkeypatch.undo()
    resumed = fixmatch(cfg)
    a = runs.load_checkpoint(Path(straight["run"]) / "checkpoints" / "last.pt")
    b = runs.load_checkpoint(Path(resumed["run"]) / "checkpoints" / "last.pt")
    assert b["history"][-1]["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_result_is_a_classifier_the_other_chapters_can_load(tmp_path):
    cfg = smoke(tmp_path)
    result = fixmatch(cfg)
    assert result["steps"] == 6 and 0 <= result["test_accuracy"] <= 1
    assert fixmatch(cfg)["test_accuracy"] == result["test_accuracy"]  # loaded, not retrained
    from lossless.engine import resolve_device, resolve_precision
    from lossless.evaluate import report, score
    from lossless.pretrain import load_data
    split = load_data(cfg, False)
    device = resolve_device("cpu")
    amp = resolve_precision(cfg["precision"], device)
    model = load_classifier(cfg, split, Path(result["classifier"]), device, amp)
    s = score(model, split.images("test"), model.augmenter.plain, device, amp)
    assert report(s, split.labels("test"), split.data.num_classes)["accuracy"] == result["test_accuracy"]


def test_a_pool_smaller_than_a_step_is_refused(tmp_path):
    with pytest.raises(LosslessError, match="fm_mu"):
        fixmatch(smoke(tmp_path, fm_batch_size=64, fm_mu=100))
