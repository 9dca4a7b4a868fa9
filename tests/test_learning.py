"""Each stage learns: checks that fail when training leaves a network where it started.

Pretraining on the smoke profile's sizes, but on real Fashion-MNIST: on the synthetic images a
randomly initialised network's k-NN is already as good as a pretrained one's (their classes
differ in hue, shape and stripes, which random convolutions separate), so they cannot show
learning. The reference is :func:`lossless.pretrain.initial_knn`: the same seed's initial
weights with their batch-norm statistics estimated on the same kind of views, which is where a
run with its learning rate at zero ends (measured: within 3 points of it on seeds 0 and 1).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lossless import config
from lossless.pretrain import initial_knn, pretrain

REAL = Path("/usr/share/datasets/fashion-mnist")
MARGIN = 0.05  # pretrained k-NN (validation) above the initial network's, each seed (measured: +12 to +16 points)


def short_fashion_run(tmp_path, seed: int, **kw) -> config.Config:
    """30 steps of Barlow Twins with the cpu profile's recipe at the smoke profile's sizes."""
    return config.load_profile("smoke", progress=False, runs_dir=str(tmp_path / "runs"), seed=seed,
                               dataset="fashion-mnist", ssl_epochs=2, ssl_max_steps_per_epoch=15,
                               ssl_lr=0.6, barlow_scale=1 / 32, projector="512-512-512", crop_scale_min=0.2, **kw)


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").exists() and not os.environ.get("CI"),
                    reason="dataset-fashion-mnist not installed (make test installs it)")
@pytest.mark.parametrize("seed", [0, 1])
def test_pretraining_learns_beyond_its_initialisation(tmp_path, seed):
    cfg = short_fashion_run(tmp_path, seed)
    start = initial_knn(cfg)["knn_val"]
    result = pretrain(cfg)
    assert result["knn_val"] >= start + MARGIN, (
        f"seed {seed}: pretrained k-NN {result['knn_val']:.3f} is not {MARGIN:.2f} above the initial "
        f"network's {start:.3f}")
