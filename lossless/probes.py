"""How good is a representation without fine-tuning? (the monitors of section 3.3)

* :func:`knn_accuracy`: a weighted k-nearest-neighbour vote in cosine similarity (k = 20,
  weights exp(sim / 0.07), as in Wu et al., 2018), with the labelled images as the memory bank;
  cheap enough to log every epoch of pretraining.
* :func:`linear_probe_accuracy`: multinomial logistic regression on frozen, standardised features
  (scikit-learn), the standard linear evaluation.
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


def pixel_probes(split, k: int) -> dict:
    """The two probes on raw pixels (scaled to [0, 1]) of a split's labelled and test images: the
    baseline that pretrained features must beat. ``{"knn_test", "linear_probe_test"}``."""
    def pixels(name):
        return torch.from_numpy(split.images(name).reshape(len(split.indices(name)), -1) / 255.0).float()
    yl, yt = split.labels("labelled"), split.labels("test")
    bank, test = pixels("labelled"), pixels("test")
    return {"knn_test": knn_accuracy(bank, torch.from_numpy(yl), test, torch.from_numpy(yt), k=k,
                                     num_classes=split.data.num_classes),
            "linear_probe_test": linear_probe_accuracy(bank, yl, test, yt)}
