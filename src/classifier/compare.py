"""Judge a new metrics.json against a base one, metric by metric, with tolerances from params.

Shared by the retraining gate (pipeline.retrain) and the pull-request report. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from classifier.params import CompareParams

# Which way is better for each test metric in metrics.json["test"].
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}

IMPROVED, REGRESSED, WITHIN, NEW = "improved", "regressed", "within tolerance", "new"


@dataclass(frozen=True)
class MetricChange:
    name: str
    base: float | None
    head: float
    tolerance: float
    verdict: str

    @property
    def delta(self) -> float | None:
        return None if self.base is None else self.head - self.base


def judge(name: str, base: float | None, head: float, tolerance: float) -> MetricChange:
    if base is None:
        return MetricChange(name, None, head, tolerance, NEW)
    gain = head - base if HIGHER_IS_BETTER[name] else base - head
    # The tolerance is inclusive, and a tiny epsilon absorbs float noise in the subtraction.
    if gain > tolerance + 1e-12:
        verdict = IMPROVED
    elif gain < -tolerance - 1e-12:
        verdict = REGRESSED
    else:
        verdict = WITHIN
    return MetricChange(name, base, head, tolerance, verdict)


def compare_metrics(base: Mapping | None, head: Mapping, compare_params: CompareParams) -> list[MetricChange]:
    """Compare the `test` block of two metrics.json payloads; `base` is None when there is none."""
    tolerances = compare_params.tolerances.model_dump()
    base_test = (base or {}).get("test", {})
    return [
        judge(name, base_test.get(name), head["test"][name], tolerances[name])
        for name in HIGHER_IS_BETTER
    ]


def at_least_as_good(changes: list[MetricChange]) -> bool:
    return all(change.verdict != REGRESSED for change in changes)
