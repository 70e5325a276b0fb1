"""Rung budgets, Hyperband brackets and the asynchronous successive-halving rule."""
from __future__ import annotations

import pytest

from sparse4d.automl.rungs import bracket_of, min_epochs_for, n_brackets, promote, rung_epochs
from sparse4d.errors import SpecError


def test_rung_budgets():
    assert rung_epochs(1, 4, 2) == [1, 2, 4]
    assert rung_epochs(1, 10, 3) == [1, 3, 9, 10]
    assert rung_epochs(1, 4, 2, bracket=1) == [2, 4] and rung_epochs(1, 4, 2, bracket=2) == [4]
    assert rung_epochs(5, 5, 3) == [5]
    assert min_epochs_for(30, 3, 3) == 3 and min_epochs_for(4, 2, 3) == 1 and min_epochs_for(2, 3, 5) == 1
    assert n_brackets(1, 4, 2) == 3 and n_brackets(1, 10, 3) == 3 and n_brackets(5, 5, 3) == 1
    assert [bracket_of(n, "hyperband", 3) for n in range(5)] == [0, 1, 2, 0, 1]
    assert bracket_of(4, "asha", 3) == 0
    with pytest.raises(SpecError):
        rung_epochs(3, 2, 2)
    with pytest.raises(SpecError):
        rung_epochs(1, 4, 1)


def test_promotion_keeps_the_top_fraction():
    assert promote(0.1, [0.1], 3)  # a lone first trial goes on
    assert promote(0.5, [0.4, 0.5], 3) and not promote(0.4, [0.4, 0.5], 3)  # fewer than eta: best only
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert [promote(v, values, 3) for v in values] == [False, False, False, False, True, True]
    assert [promote(v, values, 2) for v in values] == [False, False, False, True, True, True]
