"""The retrain gate's inputs and record: what `classifier.compare.gate` judges, read from git.

The champion is what BASE committed: its per-example results and test-split fingerprint
(git-tracked outputs of evaluate), its `compare` policy (params.yaml at BASE: a retrain cannot
loosen the rule it is judged by) and the record `metrics/best.json`, the best test accuracy
ever promoted on that test split. The challenger is the workspace after its run. Anything
missing or unreadable stops the gate with the reason: nothing is promoted on a guess.
"""

from __future__ import annotations

import json
from pathlib import Path

from classifier.compare import GateDecision, Results, gate
from pipeline.report_gather import (
    PARAMS_PATH,
    ReportError,
    Snapshot,
    compare_policy,
    git_reader,
    read_snapshot,
    workspace_reader,
)

# Written by a promotion, beside the metrics it judged: {"test_fingerprint", "best_accuracy"}.
RECORD_PATH = "metrics/best.json"


class GateError(Exception):
    """The gate cannot judge: a side has no results, the test sets differ, or no policy."""


def snapshot_of(read, where: str) -> Snapshot:
    try:
        return read_snapshot(read, where)
    except (ReportError, ValueError) as error:  # an unreadable table or file, named by read_snapshot
        raise GateError(str(error)) from None


def results_of(snapshot: Snapshot, where: str) -> Results:
    if snapshot.results is None:
        raise GateError(f"no per-example results (metrics/predictions.csv, metrics/evaluation.json) {where}")
    return snapshot.results


def best_accuracy(read, fingerprint: str) -> float | None:
    """The record kept at BASE for this test split; None without one (or for another split)."""
    text = read(RECORD_PATH)
    if text is None:
        return None
    try:
        record = json.loads(text)
        recorded_on, best = record["test_fingerprint"], float(record["best_accuracy"])
    except (ValueError, KeyError, TypeError) as error:
        raise GateError(f"{RECORD_PATH} at the champion's revision cannot be read ({error})") from None
    return best if recorded_on == fingerprint else None


def judge_challenger(workspace: Path, base: str) -> GateDecision:
    """The gate's decision on the workspace's new model against the champion committed at `base`."""
    at_base = git_reader(workspace, base)
    champion_snapshot = snapshot_of(at_base, f"at {base}")
    champion = results_of(champion_snapshot, f"at {base}")
    challenger = results_of(snapshot_of(workspace_reader(workspace), "in the workspace"), "in the retrained workspace")
    if champion.fingerprint != challenger.fingerprint:
        raise GateError(f"not comparable: the champion at {base} was scored on test split {champion.fingerprint}, "
                        f"the new model on {challenger.fingerprint}; a change of seed or data redraws the test set")
    policy, problem = compare_policy(champion_snapshot.params, f"at {base}")
    if policy is None:
        raise GateError(problem or f"no `compare` policy in {PARAMS_PATH} at {base}")
    try:
        return gate(champion.predictions, challenger.predictions, policy, best_accuracy(at_base, champion.fingerprint))
    except ValueError as error:  # the tables do not pair, example by example
        raise GateError(str(error)) from None


def write_record(workspace: Path, decision: GateDecision) -> None:
    """Keep the gate's record beside the promoted metrics, for the next retrain to judge by."""
    fingerprint = results_of(snapshot_of(workspace_reader(workspace), "in the workspace"), "in the workspace").fingerprint
    record = {"test_fingerprint": fingerprint, "best_accuracy": round(decision.best_accuracy, 6)}
    (workspace / RECORD_PATH).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def decision_report(decision: GateDecision, base: str, branch: str | None) -> str:
    lines = [f"# Retrain against the champion at `{base}`", "",
             "| metric | champion | new | lower bound of the gain | passes |", "|---|---|---|---|---|"]
    for name, lower in decision.gain_lower_bounds.items():
        passed = decision.checks.get(f"{name} non-inferior")
        lines.append(f"| {name} | {decision.champion[name]:.4f} | {decision.challenger[name]:.4f} | "
                     f"{lower:+.4f} | {'yes' if passed else 'no'} |")
    paired = decision.paired
    lines += ["", f"Accuracy floor (best promoted minus min_effect): {decision.floor:.4f}.",
              f"Paired examples: {paired.n}; right only for the champion {paired.base_only}, "
              f"only for the new model {paired.head_only} (McNemar p = {paired.p_value:.3g}).", "",
              decision.reason, "",
              f"Promoted on branch `{branch}`." if branch else "Not promoted: the champion stays."]
    return "\n".join(lines) + "\n"
