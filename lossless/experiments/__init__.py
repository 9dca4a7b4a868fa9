"""The experiments, one module each: each computes what is missing, loads what exists, and
returns plain rows and :class:`lossless.comparison.Comparison` results a chapter renders
(``claims``: sections 3.4, 3.5 and 5; ``active``: section 3.6; ``table1``, ``ensembles`` and
``architectures``: section 4; ``screen``: the backbone study). Each module keeps its own name
(``lossless.experiments.claims`` is the module, ``claims.claims`` its experiment)."""
from . import active, architectures, claims, ensembles, screen, table1  # noqa: F401
from .claims import LABELS, METHODS, PAPER, frozen_probes  # noqa: F401
