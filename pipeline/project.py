"""What the flows and the report know of the project's files, in one place.

dvc.yaml hands the stages their paths through argv; the flows, the retrain gate and the report
read some of the same files directly, and name them here, once. Also the two small helpers they
share for nested params and metrics. No Prefect, no torch, nothing heavy: `make run` imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

PARAMS_PATH = "params.yaml"
LOCK_PATH = "dvc.lock"
PREPARED_PATH = "data/prepared"  # prepare's output: the split arrays and their meta.json
MODEL_PATH = "models/model.pth"  # save's outputs: the published model and its card
MODEL_CARD_PATH = "models/model.json"
METRICS_PATH = "metrics/metrics.json"  # the published model's results: save publishes them, git-tracked
EVALUATION_PATH = "metrics/evaluation.json"
PREDICTIONS_PATH = "metrics/predictions.csv"
PER_CLASS_PATH = "metrics/per_class.csv"
HISTORY_PATH = "metrics/history.csv"  # its per-epoch history (train's, published by save), git-tracked
DATA_CHECKS_PATH = "metrics/data_checks.json"  # prepare's data checks before training, git-tracked


def flatten(prefix: str, value: object) -> dict[str, object]:
    """A nested mapping as {"a.b.c": leaf}; `prefix` ("" for none) goes in front of every key."""
    if isinstance(value, Mapping):
        flat: dict[str, object] = {}
        for key, inner in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return flat
    return {prefix: value}


def lookup(tree: object, dotted: str) -> object:
    """`tree["a"]["b"]` for "a.b"; None where a key is missing."""
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, Mapping) else None
    return tree
