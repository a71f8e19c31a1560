"""The retrain gate's inputs and record: what `classifier.judging.compare.gate` judges, read from git.

The champion is the registry's (pipeline.registry): the commit of the version GTO shows in
`classifier#prod`, or BASE's where nothing is registered yet; so `gto assign ... --stage prod` rolls
back, and the next retrain must beat the model rolled back to. At the champion's commit: its per-example
results and test-split fingerprint (git-tracked outputs of evaluate), and the record `metrics/best.json`,
the best test accuracy promoted on that test split up to it. The `compare` policy is BASE's params.yaml
(a retrain cannot loosen the rule it is judged by, nor a rollback bring back an older one). The challenger is the workspace after its run. Anything
missing or unreadable stops the gate with the reason: nothing is promoted on a guess.

When the data changed (new images: another test split), the champion's committed results
describe other examples. Then its published model (BASE's models/model.pth, from the DVC cache,
or the remote through `dvc get`) is re-scored on the new test split in the same run, by the
evaluate stage's own code in a subprocess (no torch here), and both are judged on those same
examples. That is fair only if no image the champion trained on can be in the new test split:
splits are a function of each image's content hash and the split params, so a change of those
(seed, data.dataset, data.test_fraction, data.val_fraction, data.image_size) is not comparable,
and neither is a change in the set of classes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from classifier.judging.compare import MEANING, GateDecision, Results, gate, headline, read_predictions
from classifier.files import file_digest
from pipeline.project import MODEL_CARD_PATH, MODEL_PATH, PARAMS_PATH, PREPARED_PATH, lookup
from pipeline.registry import ARTIFACT, STAGE, RegistryError, champion as registered_champion
from pipeline.results import ResultsError, Snapshot, compare_policy, git_reader, read_snapshot, workspace_reader
from pipeline.run.stages import cached_file, dvc_cache_dir, lock_md5, stage_env

# Written by a promotion, beside the metrics it judged: {"test_fingerprint", "best_accuracy"}.
RECORD_PATH = "metrics/best.json"


class GateError(Exception):
    """The gate cannot judge: a side has no results, the test sets differ, or no policy."""


def snapshot_of(read, where: str) -> Snapshot:
    try:
        return read_snapshot(read, where)
    except (ResultsError, ValueError) as error:  # an unreadable table or file, named by read_snapshot
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


# The params that decide each image's split (classifier.data.prepare.assign_splits): equal values put
# every image the champion trained on in the training pool again.
SPLIT_PARAMS = ("seed", "data.dataset", "data.test_fraction", "data.val_fraction", "data.image_size")
# What evaluate writes, in the order dvc.yaml passes them.
EVALUATE_OUTPUTS = ("metrics.json", "evaluation.json", "predictions.csv", "per_class.csv")


def _nothing(message: str) -> None:
    pass


@dataclass(frozen=True)
class Champion:
    rev: str  # where its model and results are committed: the prod version's commit, or BASE
    name: str  # in messages, after "the champion at": `main`, or `classifier@v0.2.0 (classifier#prod, commit 1a2b3c4)`
    version: str | None = None  # GTO's version ("v0.2.0"); None before the first registration


def champion_of(workspace: Path, base: str) -> Champion:
    """The model in prod (`gto show classifier#prod`), or BASE's committed one while none is registered."""
    try:
        found = registered_champion(workspace)
    except RegistryError as error:
        raise GateError(f"the model registry cannot be read: {error}") from None
    if found is None:
        return Champion(base, base)
    return Champion(found.commit, f"{found.tag} ({ARTIFACT}#{STAGE}, commit {found.commit[:7]})", found.version)


def judge_challenger(workspace: Path, base: str, log: Callable[[str], None] = _nothing,
                     champion: Champion | None = None) -> tuple[GateDecision, str]:
    """The gate's decision on the workspace's new model against the champion (champion_of: the registry's
    prod version, else BASE's model), under BASE's policy, and the fingerprint of the test split it was made on.

    On another test split (the data changed), the champion's model is re-scored on the new one first.
    """
    champion = champion or champion_of(workspace, base)
    at_champion = git_reader(workspace, champion.rev)
    champion_snapshot = snapshot_of(at_champion, f"at {champion.name}")
    results = results_of(champion_snapshot, f"at {champion.name}")
    challenger_snapshot = snapshot_of(workspace_reader(workspace), "in the workspace")
    challenger = results_of(challenger_snapshot, "in the retrained workspace")
    base_params = champion_snapshot.params if champion.rev == base else snapshot_of(git_reader(workspace, base),
                                                                                     f"at {base}").params
    policy, problem = compare_policy(base_params, f"at {base}")
    if policy is None:
        raise GateError(problem or f"no `compare` policy in {PARAMS_PATH} at {base}")
    if results.fingerprint != challenger.fingerprint:
        results = rescore_champion(workspace, champion, champion_snapshot, challenger_snapshot, log)
    try:
        decision = gate(results.predictions, challenger.predictions, policy,
                        best_accuracy(at_champion, results.fingerprint))
    except ValueError as error:  # the tables do not pair, example by example
        raise GateError(str(error)) from None
    return decision, challenger.fingerprint


def split_params(lock: dict | None) -> dict | None:
    """The split-deciding params the prepare stage ran with, as dvc.lock records them."""
    recorded = (((lock or {}).get("stages") or {}).get("prepare") or {}).get("params", {}).get(PARAMS_PATH)
    return None if recorded is None else {name: lookup(recorded, name) for name in SPLIT_PARAMS}


def rescore_champion(workspace: Path, at: Champion, champion: Snapshot, challenger: Snapshot,
                     log: Callable[[str], None] = _nothing) -> Results:
    """The champion's per-example results on the workspace's (new) test split, or GateError saying
    why the two cannot be compared."""
    base, rev = at.name, at.rev  # the champion's name in messages; the commit its model is read at
    old, new = champion.evaluation or {}, challenger.evaluation or {}
    prefix = (f"not comparable: the champion at {base} was scored on test split {old.get('test_fingerprint')}, "
              f"the new model on {new.get('test_fingerprint')}")
    if list(old.get("classes") or []) != list(new.get("classes") or []):
        added = sorted(set(new.get("classes") or []) - set(old.get("classes") or []))
        removed = sorted(set(old.get("classes") or []) - set(new.get("classes") or []))
        change = "; ".join(part for part in (f"added {added}" if added else "", f"removed {removed}" if removed else "")
                           if part) or "reordered"
        raise GateError(f"{prefix}; the set of classes changed ({change}): the champion cannot answer the new "
                        "question, so there is nothing to compare it on")
    before, after = split_params(champion.lock), split_params(challenger.lock)
    if before is None or after is None:
        raise GateError(f"{prefix}; dvc.lock {'at ' + base if before is None else 'in the workspace'} does not "
                        "record the prepare stage's params, so the split rule cannot be checked")
    changed = [f"{name} ({before[name]!r} -> {after[name]!r})" for name in SPLIT_PARAMS if before[name] != after[name]]
    if changed:
        raise GateError(f"{prefix}; {', '.join(changed)} changed, which redraws the split: images the champion "
                        "trained on may now be test images")
    log(f"the data changed (test split {old.get('test_fingerprint', '')[:19]} -> {new.get('test_fingerprint', '')[:19]}):"
        f" re-scoring the champion at {base} on the new test split")
    with tempfile.TemporaryDirectory(prefix="champion-") as scratch:
        folder = Path(scratch)
        model, card = champion_model(workspace, rev, champion.lock, folder)
        outputs = [folder / name for name in EVALUATE_OUTPUTS]
        result = subprocess.run([sys.executable, "-m", "classifier.training.evaluate", PREPARED_PATH, str(model), str(card),
                                 *map(str, outputs)], cwd=workspace, env=stage_env(), capture_output=True, text=True)
        if result.returncode != 0:
            raise GateError(f"re-scoring the champion at {base} on the new test split failed "
                            f"(exit {result.returncode}):\n{result.stderr.strip()[-2000:]}")
        evaluation = json.loads(outputs[1].read_text())
        if evaluation["test_fingerprint"] != new.get("test_fingerprint"):
            raise GateError(f"the champion was re-scored on test split {evaluation['test_fingerprint']}, not the "
                            f"new model's {new.get('test_fingerprint')}")
        table = read_predictions(outputs[2].read_text(), f"the champion's re-scored {EVALUATE_OUTPUTS[2]}")
    accuracy = (table["actual"] == table["predicted"]).mean()
    log(f"champion re-scored on the {len(table)} new test examples: accuracy {accuracy:.4f}")
    return Results(evaluation["test_fingerprint"], table)


def champion_model(workspace: Path, base: str, lock: dict | None, folder: Path) -> tuple[Path, Path]:
    """BASE's published model and card, copied into `folder` from the DVC cache (shared with the repo),
    or else fetched with `dvc get` (its remote); the model checked against the card's sha256."""
    cache = dvc_cache_dir(workspace)
    copies = {}
    for path in (MODEL_PATH, MODEL_CARD_PATH):
        target = folder / Path(path).name
        md5 = lock_md5(lock, path)
        if (cached := cached_file(cache, md5)) is not None:
            target.write_bytes(cached.read_bytes())
        else:
            got = subprocess.run([sys.executable, "-m", "dvc", "get", ".", path, "--rev", base, "-o", str(target)],
                                 cwd=workspace, env=stage_env(), capture_output=True, text=True)
            if got.returncode != 0:
                raise GateError(f"the champion's {path} at {base} (md5 {md5}) is neither in the DVC cache nor "
                                f"fetchable from the remote:\n{got.stderr.strip()[-1000:]}")
        copies[path] = target
    card = json.loads(copies[MODEL_CARD_PATH].read_text())
    if file_digest(copies[MODEL_PATH]) != (card or {}).get("sha256"):
        raise GateError(f"the champion's {MODEL_PATH} at {base} does not match the sha256 of its card")
    return copies[MODEL_PATH], copies[MODEL_CARD_PATH]


def write_record(workspace: Path, decision: GateDecision, fingerprint: str) -> None:
    """Keep the gate's record beside the promoted metrics, for the next retrain to judge by."""
    record = {"test_fingerprint": fingerprint, "best_accuracy": round(decision.best_accuracy, 6)}
    (workspace / RECORD_PATH).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def decision_report(decision: GateDecision, base: str, branch: str | None) -> str:
    """The `retrain-comparison` artifact: the verdict in the pull-request report's words, then the gate's checks.
    `base` names the champion (Champion.name)."""
    judgement = decision.judgement
    level = f"{judgement.confidence:.0%}"
    name = f"`{base}`" if " " not in base else f"`{base.split(' ', 1)[0]}` {base.split(' ', 1)[1]}"
    lines = [f"# Retrain against the champion at {name}", "",
             f"**Verdict: {headline(judgement)}.** {MEANING[judgement.verdict]}", "",
             f"| metric | champion | new | change | {level} interval | verdict | its lower end, as a gain | non-inferior |",
             "|---|---|---|---|---|---|---|---|"]
    for metric in judgement.metrics:
        passed = decision.checks.get(f"{metric.name} non-inferior")
        lines.append(f"| {metric.name} | {metric.base:.4f} | {metric.head:.4f} | {metric.delta:+.4f} | "
                     f"{metric.low:+.4f} to {metric.high:+.4f} | {metric.verdict} | "
                     f"{decision.gain_lower_bounds[metric.name]:+.4f} | {'yes' if passed else 'no'} |")
    paired = decision.paired
    lines += ["", "The gate's checks: " + "; ".join(f"{check} {'yes' if passed else '**no**'}"
                                                     for check, passed in decision.checks.items()) + ".",
              f"Accuracy floor (best promoted minus min_effect): {decision.floor:.4f}.",
              f"Paired examples: {paired.n}; right only for the champion {paired.base_only}, "
              f"only for the new model {paired.head_only} (McNemar p = {paired.p_value:.3g}).", "",
              decision.reason, "",
              "What this test split resolves (the margin an equally good model clears 95% of the time):", ""]
    lines += [f"- {item.describe()}" for item in decision.resolution]
    lines += ["", f"Promoted on branch `{branch}`." if branch else "Not promoted: the champion stays."]
    return "\n".join(lines) + "\n"
