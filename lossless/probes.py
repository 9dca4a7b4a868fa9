"""How good is a representation without fine-tuning? (the monitors of section 3.3)

* :func:`knn_accuracy`: a weighted k-nearest-neighbour vote in cosine similarity (k = 20 by
  default, weights exp(sim / 0.07), as in Wu et al., 2018), with the labelled images as the memory bank;
  cheap enough to log every epoch of pretraining.
* :func:`linear_probe_accuracy`: multinomial logistic regression on frozen, standardised features
  (scikit-learn), the standard linear evaluation.
* :func:`chosen_probes`: both probes as the book reports them, for features and pixels alike:
  k and C each chosen on the validation images from one grid, then scored once on test.
* :func:`embedding_std`: the collapse signal. For L2-normalised D-dim embeddings, the mean
  per-dimension standard deviation times sqrt(D) is about 1 when the embeddings spread out and
  falls towards 0 when they collapse to a point.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augmenter
from .engine import autocast_context


@torch.no_grad()
def embed(module: nn.Module, images: np.ndarray, augmenter: Augmenter, device: torch.device,
          amp_dtype: torch.dtype | None = None, batch_size: int = 512, size: int | None = None) -> torch.Tensor:
    """``module`` applied to plainly normalised (N, H, W, C) uint8 images -> (N, D) float32 on CPU."""
    was_training = module.training
    module.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)
        with autocast_context(device, amp_dtype):
            out.append(module(augmenter.plain(batch, size)).float().cpu())
    module.train(was_training)
    return torch.cat(out)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None) -> float:
    """Weighted k-NN accuracy in cosine similarity (features need not be normalised)."""
    bank, queries = F.normalize(bank.float(), dim=1), F.normalize(queries.float(), dim=1)
    bank_labels, query_labels = torch.as_tensor(bank_labels), torch.as_tensor(query_labels)
    c = num_classes or int(bank_labels.max()) + 1
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), 1024):
        sim = queries[start:start + 1024] @ bank.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), c).scatter_add_(1, bank_labels[idx], torch.exp(top / temperature))
        correct += int((votes.argmax(1) == query_labels[start:start + 1024]).sum())
    return correct / len(queries)


def linear_probe_accuracy(train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y,
                          c: float = 1.0, max_iter: int = 2000) -> float:
    """Logistic regression on standardised frozen features (statistics from the training set)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(np.asarray(train_x), np.asarray(train_y))
    return float(clf.score(np.asarray(test_x), np.asarray(test_y)))


def embedding_std(z: torch.Tensor) -> float:
    """sqrt(D) x mean per-dimension std of L2-normalised embeddings: ~1 healthy, -> 0 collapsed."""
    z = F.normalize(z.float(), dim=1)
    return float(z.std(0).mean() * z.shape[1] ** 0.5)


C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)   # logistic regression's inverse regularisation
K_GRID = (1, 3, 5, 10, 20)                 # k-NN's neighbours


def chosen_probes(bank, bank_labels, val, val_labels, test=None, test_labels=None, num_classes: int | None = None,
                  c_grid=C_GRID, k_grid=K_GRID) -> dict:
    """The k-NN and the linear probe with their settings (k, C) chosen on the validation set from
    the grids (ties: the first in the grid), then scored once on test when given. One protocol
    for every representation the book compares (pixels, an initial network, a pretrained one),
    so none is favoured by a better-tuned probe.

    Returns ``{"knn_val", "linear_val", "knn_k", "linear_c", "grid"}`` and, with a test set,
    ``"knn_test"`` and ``"linear_probe_test"`` (``grid``: validation accuracy of every setting)."""
    bank, val = torch.as_tensor(bank), torch.as_tensor(val)
    yb, yv = torch.as_tensor(np.asarray(bank_labels)), torch.as_tensor(np.asarray(val_labels))
    classes = num_classes or int(max(yb.max(), yv.max())) + 1
    knn = {k: knn_accuracy(bank, yb, val, yv, k=k, num_classes=classes) for k in k_grid}
    lin = {c: linear_probe_accuracy(bank, yb, val, yv, c=c) for c in c_grid}
    best_k, best_c = max(knn, key=knn.get), max(lin, key=lin.get)
    out = {"knn_k": best_k, "linear_c": best_c, "knn_val": knn[best_k], "linear_val": lin[best_c],
           "grid": {"knn_val": {str(k): v for k, v in knn.items()},
                    "linear_val": {str(c): v for c, v in lin.items()}}}
    if test is not None and len(test):
        test, yt = torch.as_tensor(test), torch.as_tensor(np.asarray(test_labels))
        out["knn_test"] = knn_accuracy(bank, yb, test, yt, k=best_k, num_classes=classes)
        out["linear_probe_test"] = linear_probe_accuracy(bank, yb, test, yt, c=best_c)
    return out


def pixel_probes(split, c_grid=C_GRID, k_grid=K_GRID) -> dict:
    """The baseline that pretrained features must beat: :func:`chosen_probes` on the raw pixels
    of the split's labelled, validation and test images, standardised with the labelled images'
    statistics."""
    def pixels(name):
        return split.images(name).reshape(len(split.indices(name)), -1).astype(np.float32) / 255.0

    lab, val, test = pixels("labelled"), pixels("val"), pixels("test")
    mean, std = lab.mean(0), lab.std(0)
    std[std < 1e-6] = 1.0  # constant pixels (a border that is always black) stay at zero
    lab, val, test = ((a - mean) / std for a in (lab, val, test))
    return chosen_probes(torch.from_numpy(lab), split.labels("labelled"), torch.from_numpy(val), split.labels("val"),
                         torch.from_numpy(test), split.labels("test"), split.data.num_classes, c_grid, k_grid)
