"""Self-supervised methods: each turns two views of a batch into a loss (paper sections 3.3, 4)."""
from .barlow import BarlowTwins, barlow_twins_loss, cross_correlation, redundancy_reduction_loss

__all__ = ["BarlowTwins", "barlow_twins_loss", "cross_correlation", "redundancy_reduction_loss"]
