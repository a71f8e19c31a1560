"""The verdicts' intervals cover the true change, and the gate promotes an equally good challenger:
benchmarks/verdict_coverage.py's populations with few replications, so `make test` catches a
regression in seconds (the benchmark itself runs thousands; docs/reports.md has its table)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.verdict_coverage import WON, measure, population
from classifier.params import load_params
from tests.conftest import PROJECT_ROOT

REPLICATIONS = 300


@pytest.fixture(scope="module")
def policy():
    return load_params(PROJECT_ROOT / "params.yaml").compare


@pytest.mark.parametrize("shape", list(WON))
def test_every_interval_covers_and_an_equally_good_challenger_is_promoted(shape, policy):
    rng = np.random.default_rng(30)
    for change in (0.0, -policy.min_effect.accuracy):
        people = population(change, shape)
        assert people.changes["accuracy"] == pytest.approx(change)
        result = measure(people, 1051, REPLICATIONS, policy, rng)
        for name in ("accuracy", "macro_f1", "loss"):
            assert result[name] >= 0.90, (name, change, result)
        if change == 0:
            assert result["promoted"] >= 0.90, result
        else:
            assert result["promoted"] <= 0.10, result  # worse by min_effect: kept out
