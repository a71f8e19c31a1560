"""Which test images a training split also holds, by content hash (manifest.csv's sha256).

One rule, two callers: the data checks before training (a duplicate across splits blocks the run)
and the pull-request report (a head whose training data holds the base's test images is not
comparable). A model that has seen its test images scores well on them whatever it learned, so no
score can catch it; only an overlap of content hashes can.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from classifier.cli import UserError

TRAINING_SPLITS = ("train", "val")
SPLIT_ORDER = ("train", "val", "test")


def split_hashes(manifest_path: Path) -> dict[str, frozenset[str]]:
    """Each split's content hashes, from prepare's manifest.csv (columns sha256 and split)."""
    try:
        table = pd.read_csv(manifest_path, usecols=["sha256", "split"], dtype=str)
    except FileNotFoundError:
        raise UserError(f"{manifest_path}: no manifest; run the prepare stage first") from None
    except ValueError as error:
        raise UserError(f"{manifest_path}: not a manifest with sha256 and split columns ({error})") from None
    return {str(split): frozenset(group["sha256"]) for split, group in table.groupby("split", sort=True)}


def leaked(test_hashes: Iterable[str], training_hashes: Iterable[str]) -> list[str]:
    """The test images (hashes, sorted) that the training data also holds."""
    return sorted(set(test_hashes) & set(training_hashes))


def leaked_between(test_manifest: Path, training_manifest: Path) -> list[str]:
    """The test split of one manifest against the train and validation splits of another (or the same)."""
    test = split_hashes(test_manifest).get("test", frozenset())
    training = split_hashes(training_manifest)
    return leaked(test, frozenset().union(*(training.get(name, frozenset()) for name in TRAINING_SPLITS)))


def leaked_across(hashes_by_split: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Within one data set, each later split's hashes that an earlier one also holds (the same rule):
    {"val": val's hashes also in train, "test": test's also in train or val}."""
    found, seen = {}, frozenset()
    for name in SPLIT_ORDER:
        held = frozenset(hashes_by_split.get(name, ()))
        if name != SPLIT_ORDER[0]:
            found[name] = leaked(held, seen)
        seen |= held
    return found
