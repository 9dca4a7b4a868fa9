"""Self-supervised methods: each turns two (or more) views of a batch into a loss (paper sections
3.3 and 4). A method is a small module with a task class (``prepare`` makes the views from a uint8
batch, ``forward`` returns ``{"loss", ...}``, ``after_step`` if it keeps state between steps) and
one entry in ``METHODS`` below: its views (from the one ``augment`` module), how to build its task
from a configuration, and the configuration keys that define its runs. ``pretrain`` builds every
method through this registry, so a fifth method is one new file and one entry; no method brings
its own loop, data path, checkpointing or augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from .. import config
from ..augment import ViewConfig, barlow_twins_views, simclr_views, swav_views
from .barlow import BarlowTwins, barlow_twins_loss, cross_correlation, redundancy_reduction_loss
from .byol import BYOL, byol_loss
from .simclr import SimCLR, nt_xent
from .swav import SwAV, sinkhorn, swapped_prediction

__all__ = ["BarlowTwins", "BYOL", "METHODS", "Method", "SimCLR", "SwAV", "barlow_twins_loss", "byol_loss",
           "cross_correlation", "get", "nt_xent", "redundancy_reduction_loss", "sinkhorn", "swapped_prediction"]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    views: Callable[[Mapping[str, Any], int], Sequence[ViewConfig]]
    build: Callable[[Mapping[str, Any], nn.Module, Any, int], nn.Module]  # (cfg, backbone, augmenter, steps/epoch)
    keys: tuple[str, ...]   # configuration keys of this method that define a run


def _shared(cfg: Mapping[str, Any]) -> dict:
    return dict(crop_scale=(cfg["crop_scale_min"], 1.0), blur_sigma=(0.1, cfg["blur_sigma_max"]),
                interpolation=cfg["interpolation"], strength=cfg["jitter_strength"])


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("barlow", "Barlow Twins: the cross-correlation of two views' embeddings pushed to the identity",
           lambda cfg, size: barlow_twins_views(size, **_shared(cfg)),
           lambda cfg, backbone, aug, steps: BarlowTwins(backbone, aug, config.sizes(cfg["projector"]),
                                                         cfg["barlow_lambda"], cfg["barlow_scale"]),
           ()),
    Method("simclr", "SimCLR: each view picks out its partner among the batch's other embeddings (NT-Xent)",
           lambda cfg, size: simclr_views(size, **_shared(cfg)),
           lambda cfg, backbone, aug, steps: SimCLR(backbone, aug, config.sizes(cfg["simclr_projector"]),
                                                    cfg["simclr_temperature"]),
           ("simclr_projector", "simclr_temperature")),
    Method("byol", "BYOL: an online network predicts a slowly moving target network's projection",
           lambda cfg, size: barlow_twins_views(size, **_shared(cfg)),   # BYOL's asymmetric pair
           lambda cfg, backbone, aug, steps: BYOL(backbone, aug, config.sizes(cfg["byol_projector"]),
                                                  config.sizes(cfg["byol_predictor"]), cfg["byol_momentum"]),
           ("byol_projector", "byol_predictor", "byol_momentum")),
    Method("swav", "SwAV: each view predicts the other's balanced assignment to learnable prototypes",
           lambda cfg, size: swav_views(size, small_crops=cfg["swav_small_crops"], **_shared(cfg)),
           lambda cfg, backbone, aug, steps: SwAV(
               backbone, aug, config.sizes(cfg["swav_projector"]), cfg["swav_prototypes"], cfg["swav_temperature"],
               cfg["swav_epsilon"], cfg["swav_iterations"], freeze_steps=cfg["swav_freeze_epochs"] * steps,
               queue_length=cfg["swav_queue"], queue_start_step=cfg["swav_queue_start_epoch"] * steps),
           ("swav_projector", "swav_prototypes", "swav_temperature", "swav_epsilon", "swav_iterations",
            "swav_freeze_epochs", "swav_queue", "swav_queue_start_epoch", "swav_small_crops")),
)}


def get(name: str) -> Method:
    """The method called ``name``; an unknown name lists the choices."""
    if name not in METHODS:
        raise config.ConfigError(f"ssl_method={name!r} is not a method; choose one of {', '.join(METHODS)}")
    return METHODS[name]
