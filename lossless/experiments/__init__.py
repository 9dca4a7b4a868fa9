"""The experiments: each computes what is missing, loads what exists, and returns plain rows a
chapter renders (``claims``: sections 3.4, 3.5 and 5; ``active``: section 3.6)."""
from .claims import (LABELS, METHODS, PAPER, budget_rows, claims, difference_rows, frozen_probes,  # noqa: F401
                     one_seed, summary_rows)
