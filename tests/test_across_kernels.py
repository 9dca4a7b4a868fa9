"""Numerically sensitive paths at the cpu profile's scale, under two families of CPU kernels.

`make test` runs the tests marked ``kernels`` (these, and the cells of every chapter with a float
check) a second time under ``conftest.OTHER_KERNELS``, which round otherwise, as another processor
would. A check whose tolerance is tighter than the arithmetic fails in one of the two runs.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import OTHER_KERNELS
from lossless import active
from lossless.experiments.active import head_probabilities, head_scores
from lossless.models import ClassifierHead

POOL, FEATURES, CLASSES = 58_680, 128, 10  # the cpu profile's pool after the labelled images

HEAD = """
import numpy as np, torch
from lossless.models import ClassifierHead
torch.manual_seed(0)
x = np.random.default_rng(0).standard_normal(({pool}, {features})).astype(np.float32)
head = ClassifierHead({features}, {classes}).eval()
with torch.no_grad():
    for p in head.parameters():
        p.mul_(8.0)         # a trained head's confidence: the median margin near 0.2, as on Fashion-MNIST
""".format(pool=POOL, features=FEATURES, classes=CLASSES)


def pool_and_head() -> tuple[np.ndarray, torch.nn.Module]:
    scope: dict = {}
    exec(HEAD, scope)
    return scope["x"], scope["head"]


@pytest.mark.kernels
def test_the_chapters_margin_rule_finds_the_packages_numbers_exactly_at_the_cpu_pool_size():
    """The active-learning chapter writes the margin out from the probabilities the package hands
    it and asserts equality, then ranks it: exact only because both sides are the same float32
    numbers (the same blocks). A product over the whole pool, as the chapter once took, rounds
    otherwise than 512-row blocks on an Intel Xeon (3 of 58,680 margins off by 2.4e-6)."""
    x, head = pool_and_head()
    scores = head_scores(head, x)
    p = head_probabilities(head, x)
    top_two = np.sort(p, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    np.testing.assert_array_equal(margin, scores.margin)
    assert np.array_equal(np.argmax(p, axis=1), scores.prediction)
    n = active.candidate_count(70_000 / 512_000, POOL)
    assert np.array_equal(np.argsort(margin, kind="stable")[:n], active.margin_order(scores.margin)[:n])


def test_the_other_kernels_round_otherwise():
    """The second run means something only if its kernels change the numbers: the pool's margins
    under OTHER_KERNELS (a fresh process) are not bit for bit this process's, and differ by the
    amount that broke an atol=1e-6 check on an Intel Xeon."""
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"other-kernels-{os.getpid()}.npy")
    code = HEAD + "from lossless.experiments.active import head_scores\n" + \
        f"np.save({out!r}, head_scores(head, x).margin)\n"
    env = {**os.environ, **OTHER_KERNELS}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    try:
        other = np.load(out)
    finally:
        os.unlink(out)
    x, head = pool_and_head()
    here = head_scores(head, x).margin
    assert not np.array_equal(here, other), f"{OTHER_KERNELS} left the numbers unchanged on this machine"
    assert np.abs(here - other).max() < 1e-4                    # the same arithmetic, rounded otherwise
