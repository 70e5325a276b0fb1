"""Epoch budgets of the rungs and the promotion rule of successive halving (pure functions).

A trial of a multi-fidelity algorithm trains to its first rung's epoch budget, is compared with every
trial (of its bracket) that reached that rung, and continues to the next rung only when it ranks in
the top ``1 / reduction_factor`` of them. Decisions are asynchronous (ASHA): a trial never waits for
others; with fewer than ``reduction_factor`` competitors a trial goes on only when it is the best so
far, so a lone first trial is always promoted.

Hyperband runs several brackets that differ in their first budget: bracket ``b`` starts at
``min_epochs * reduction_factor**b``; a trial's bracket is ``trial_number % n_brackets``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import SpecError

ALGORITHMS = ("bayesian", "asha", "hyperband", "bohb")
MULTI_FIDELITY = ("asha", "hyperband", "bohb")


def rung_epochs(min_epochs: int, max_epochs: int, reduction_factor: int, bracket: int = 0) -> list[int]:
    """Epoch budgets of the rungs of one bracket, increasing, ending at `max_epochs`."""
    if min_epochs < 1 or max_epochs < min_epochs:
        raise SpecError(f"need 1 <= min epochs ({min_epochs}) <= max epochs ({max_epochs})", key="max_epochs")
    if reduction_factor < 2:
        raise SpecError(f"reduction factor must be at least 2, got {reduction_factor}", key="reduction_factor")
    out = []
    budget = min_epochs * reduction_factor ** bracket
    while budget < max_epochs:
        out.append(budget)
        budget *= reduction_factor
    out.append(max_epochs)
    return out


def n_brackets(min_epochs: int, max_epochs: int, reduction_factor: int) -> int:
    """How many distinct Hyperband brackets the budgets allow (at least 1)."""
    return int(math.floor(math.log(max_epochs / min_epochs, reduction_factor) + 1e-9)) + 1


def min_epochs_for(max_epochs: int, reduction_factor: int, rungs: int) -> int:
    """The first rung's budget so that `rungs` rungs end at `max_epochs` (at least 1 epoch)."""
    if rungs < 1:
        raise SpecError(f"rungs must be at least 1, got {rungs}", key="rungs")
    return max(1, int(round(max_epochs / reduction_factor ** (rungs - 1))))


def bracket_of(trial_number: int, algorithm: str, brackets: int) -> int:
    return trial_number % brackets if algorithm in ("hyperband", "bohb") else 0


def promote(value: float, competitors: Sequence[float], reduction_factor: int) -> bool:
    """True when `value` (maximised) ranks in the top 1/reduction_factor of `competitors`.

    `competitors` holds every value recorded at this rung, this trial's own included.
    """
    ranked = sorted(competitors, reverse=True)
    keep = max(1, len(ranked) // reduction_factor)
    return value >= ranked[keep - 1]
