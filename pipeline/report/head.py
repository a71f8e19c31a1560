"""What the pull-request report judges at the head: numbers CI computed itself, with the BASE's code
(`python -m pipeline.report --check-head`, which `make pr-report` runs; docs/reports.md, "In CI").

A pull request's committed results, `dvc.lock`, `.dvc/config`, code and Makefile are all its author's,
so none of them is believed. In order:

1. the base's test images: the base's `data/prepared` (by the md5 the BASE's `dvc.lock` records) from
   the DVC cache or the remote the BASE's `.dvc/config` names, else made by the base's own prepare
   stage in the base's worktree; their fingerprint must be the base's committed one;
2. the head's model: `models/model.pth` and its card by the md5s the head's `dvc.lock` records, fetched
   the same way (never from the head's `.dvc/config`) and checked by md5. When the head's committed
   results are stale, or the model is in neither the cache nor the base's remote, the head's code
   trains it here (`dvc repro` in the head's workspace), or the untrusted CI job that did so hands it
   over (`--handed-over DIR`: its model.pth, model.json and data/prepared/manifest.csv); a trusted
   run never runs the head's code;
3. leakage: a base test image (by content hash) in the head's train or validation split makes the
   two not comparable (classifier.data.leakage, the one rule);
4. scoring: the base's `classifier.training.evaluate` (the base's worktree first on PYTHONPATH) scores the
   head's model, loaded weights-only, on the base's test images; these are the results judged;
5. the head's committed predictions against CI's own: where the scored model is the published one they
   are the results of, any difference means the committed results are not this model's (exit 2), never judged.

pipeline.report.__main__ runs all this from a git worktree of the base, so the judging code and the
`compare` policy are the base's too. No torch here: git, DVC and the base's evaluate as subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from classifier.files import file_digest
from classifier.data.leakage import leaked_between
from pipeline.project import (
    EVALUATION_PATH, LOCK_PATH, METRICS_PATH, MODEL_CARD_PATH, MODEL_PATH, PER_CLASS_PATH, PREDICTIONS_PATH,
    PREPARED_PATH,
)
from pipeline.report.escape import code
from pipeline.results import git, read_snapshot, workspace_reader
from pipeline.run.stages import ALWAYS_CHANGED, failure, lock_md5, stage_env, stream

# The environment variable that tells pipeline.report it already runs from the base's worktree.
BASE_TREE_ENV = "PR_REPORT_BASE_TREE"
MANIFEST = "manifest.csv"
# What the untrusted job hands over (`make pr-model`): the head's model, its card and its data's manifest.
HANDED_OVER = {"model.pth": MODEL_PATH, "model.json": MODEL_CARD_PATH, MANIFEST: f"{PREPARED_PATH}/{MANIFEST}"}
# What `dvc status` says of an output that is only not here (not pulled, not computed): absent, not stale.
ABSENT = frozenset({"deleted", "not in cache"})
REPRO_TIMEOUT_S = 3600.0
# The committed per-example loss against CI's: written with 6 decimals, and another CPU sums in another order.
LOSS_TOLERANCE = 1e-3
# Where CI's own results go, the same names as the committed ones.
SCORED = (METRICS_PATH, EVALUATION_PATH, PREDICTIONS_PATH, PER_CLASS_PATH)


@dataclass
class HeadCheck:
    """What the report judges at the head (CI's own scoring) and how CI got it: one line for each step."""

    lines: list[str] = field(default_factory=list)
    problem: str | None = None      # what leaves nothing to judge (exit 2): forged results, leakage, no model
    scored: Path | None = None      # CI's results: metrics/ files of the head's model on the base's test images
    prepared: Path | None = None    # the base's test images (for the pictures of flipped images)

    def stop(self, problem: str) -> HeadCheck:
        self.problem = problem
        self.lines.append(f"**Nothing judged: {problem}.**")
        return self


class OtherBytes(Exception):
    """A store that answers a model's md5 with other bytes: tampered with, or corrupt. Nothing is judged."""


# ---------------------------------------------------------------- pure


def lock_outputs(lock: Mapping | None) -> dict[str, str | None]:
    """Every output `dvc.lock` records, path -> md5."""
    outs = {}
    for stage in ((lock or {}).get("stages") or {}).values():
        for out in stage.get("outs") or []:
            outs[out["path"]] = out.get("md5")
    return outs


def lock_breaks(lock: Mapping | None) -> list[str]:
    """Where `dvc.lock` contradicts itself: a stage that records another stage's output as its input
    with other bytes (a hand-edited or badly merged lock), which `dvc status` cannot see while
    those outputs are absent."""
    outs = lock_outputs(lock)
    breaks = []
    for name, stage in ((lock or {}).get("stages") or {}).items():
        for dep in stage.get("deps") or []:
            path = dep["path"]
            if path in outs and dep.get("md5") != outs[path]:
                breaks.append(f"{code(name)} records {code(path)} as md5 {dep.get('md5')}, its producer as {outs[path]}")
    return breaks


def staleness(status: Mapping) -> list[str]:
    """From `dvc status --json`: why the committed results are not the lock's. An output that is only
    absent (not pulled, not yet computed) is not a change; a stage input that is another stage's output
    is judged where that output is."""
    stale = []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command"; "always changed" (dvc.yaml's snapshot) is by definition
                if entry != ALWAYS_CHANGED:
                    stale.append(f"{code(stage)}: {entry}")
                continue
            for path, change in (entry.get("changed deps") or {}).items():
                if isinstance(change, Mapping):  # params: {section: modified}
                    stale.append(f"{code(stage)}: params {', '.join(code(key) for key in change)} changed")
                elif change not in ABSENT:  # an absent input is another stage's output, not pulled
                    stale.append(f"{code(stage)}: {code(path)} {change}")
            for path, change in (entry.get("changed outs") or {}).items():
                if change not in ABSENT:
                    stale.append(f"{code(path)} is not what `dvc.lock` records ({change})")
    return sorted(set(stale))


def forged(committed: pd.DataFrame, scored: pd.DataFrame) -> str | None:
    """Where the committed per-example results say other than CI's scoring of the same model on the same
    images (paired by id): None when they agree on every image both hold."""
    pairs = committed.merge(scored, on="id", suffixes=("_committed", "_scored"))
    if pairs.empty:
        return None
    differ = ((pairs["actual_committed"] != pairs["actual_scored"])
              | (pairs["predicted_committed"] != pairs["predicted_scored"])
              | ((pairs["loss_committed"] - pairs["loss_scored"]).abs() > LOSS_TOLERANCE))
    if not differ.any():
        return None
    first = pairs[differ].iloc[0]
    return (f"the committed results are not this model's: {int(differ.sum())} of {len(pairs)} test images differ "
            f"from CI's own scoring (image {first['id']}: committed {first['predicted_committed']} with loss "
            f"{first['loss_committed']:.4f}, scored {first['predicted_scored']} with loss {first['loss_scored']:.4f})")


# ---------------------------------------------------------------- git and dvc (I/O)


def _dvc(where: Path, *args: str) -> subprocess.CompletedProcess:
    # -P: a `dvc/` folder the pull request commits at its root is not imported from the current folder.
    return subprocess.run([sys.executable, "-P", "-m", "dvc", *args], cwd=where, capture_output=True, text=True,
                          env=stage_env())


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [f"exit status {result.returncode}"])[-1].removeprefix("ERROR: ").strip()


def prepare_base_tree(repo: Path, tree: Path) -> str:
    """The base's worktree reads the base's `.dvc/config` and this clone's default DVC cache; the remote's local
    settings (credentials, `dvc remote modify --local`) come along only when git does not track them,
    so a pull request cannot commit them. Returns the line naming the remote."""
    local = repo / ".dvc" / "config.local"
    if local.is_file() and git(repo, "ls-files", "--error-unmatch", ".dvc/config.local").returncode != 0:
        shutil.copyfile(local, tree / ".dvc" / "config.local")
    # The clone's default cache, not the one the head's `.dvc/config` may name: what comes from it is checked
    # (models by md5, the base's test images by their fingerprint), but a PR must not choose where CI writes.
    _dvc(tree, "config", "--local", "cache.dir", str(repo / ".dvc" / "cache"))
    remote = _dvc(tree, "remote", "default")
    name = remote.stdout.strip() if remote.returncode == 0 else ""
    return (f"DVC remote {code(name)}, as the base's `.dvc/config` names it (the head's is never read)" if name
            else "DVC remote: the base's `.dvc/config` names none, so only this clone's DVC cache is read")


def fetch(tree: Path, name: str, md5: str, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """The head's output with `md5` (a file, or a folder for a `.dir` md5), from the cache or the base's
    remote (the base's worktree `tree` runs DVC); the path, or None and why not."""
    holder = tree / ".pr-head"
    holder.mkdir(exist_ok=True)
    (holder / f"{name}.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": name, "hash": "md5"}]}))
    log(f"fetching the head's {name} (md5 {md5}) from the DVC cache or the base's remote")
    pulled = _dvc(tree, "pull", f".pr-head/{name}.dvc")
    target = holder / name
    if pulled.returncode != 0 or not target.exists():
        return None, _last_line(pulled)
    if md5.endswith(".dir"):
        return target, ""  # a folder: its files are read for the manifest only; the test images are the base's
    found = file_digest(target, "md5")
    if found != md5:
        raise OtherBytes(f"the `{name}` fetched as md5 {md5} has md5 {found}: the DVC cache or the base's remote "
                         "holds other bytes under its name")
    return target, ""


def dvc_status(repo: Path) -> dict:
    result = _dvc(repo, "status", "--json")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        return yaml.safe_load(lines[-1]) if result.returncode == 0 and lines else {"dvc status": [_last_line(result)]}
    except yaml.YAMLError:
        return {"dvc status": [_last_line(result)]}


def run_repro(where: Path, log: Callable[[str], None], *targets: str) -> str | None:
    """`dvc repro` in `where` with the code checked out there (its `src/` first on PYTHONPATH, so the stages
    import `where`'s own `classifier`, whatever checkout the editable install names); None when it ran,
    else the line that says why not."""
    returncode, lines = stream([sys.executable, "-m", "dvc", "repro", *targets], where, log, REPRO_TIMEOUT_S,
                               "dvc repro", {"PYTHONPATH": str(where / "src"), BASE_TREE_ENV: ""})
    return None if returncode == 0 else failure(returncode, lines).summary


def base_test_images(tree: Path, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """The base's `data/prepared`: pulled as the base's `dvc.lock` records it, else made by the base's own
    prepare stage; checked against the base's committed test fingerprint by the base's evaluate (later)."""
    prepared = tree / PREPARED_PATH
    if _dvc(tree, "pull", PREPARED_PATH).returncode == 0 and (prepared / "meta.json").is_file():
        return prepared, "pulled as the base's `dvc.lock` records them"
    log("the base's test images are not in the cache or the remote: the base's prepare stage makes them")
    if (failed := run_repro(tree, log, "prepare")) is not None:
        return None, f"neither pulled nor made by the base's prepare stage ({failed})"
    return prepared, "made here by the base's own prepare stage"


def score(tree: Path, prepared: Path, model: Path, card: Path, out: Path) -> str | None:
    """The base's `classifier.training.evaluate` (the base's `src/` first on PYTHONPATH, which wins over the editable
    install) scores `model` on `prepared`'s test split into out/metrics/...; None, or why it could not."""
    paths = [out / name for name in SCORED]
    done = subprocess.run([sys.executable, "-P", "-m", "classifier.training.evaluate", str(prepared), str(model), str(card),
                           *map(str, paths)], cwd=tree, capture_output=True, text=True,
                          env=stage_env({"PYTHONPATH": str(tree / "src")}))
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1].removeprefix("error: ")
    return None


def head_model(repo: Path, tree: Path, lock: Mapping | None, stale: list[str], handed_over: Path | None,
               check: HeadCheck, log: Callable[[str], None]) -> tuple[Path | None, Path | None, Path | None]:
    """The head's model, its card and its data's manifest, and a line on where they came from."""
    recorded = {path: lock_md5(lock, path) for path in (MODEL_PATH, MODEL_CARD_PATH, PREPARED_PATH)}
    why = "the head's committed results are stale (" + "; ".join(stale) + ")" if stale else None
    if why is None and recorded[MODEL_PATH] and recorded[MODEL_CARD_PATH]:
        try:
            model, why_not = fetch(tree, "model.pth", recorded[MODEL_PATH], log)
            card, card_why_not = fetch(tree, "model.json", recorded[MODEL_CARD_PATH], log) if model else (None, "")
        except OtherBytes as error:
            check.stop(str(error))
            return None, None, None
        if model and card:
            prepared, _ = fetch(tree, "prepared", recorded[PREPARED_PATH], log) if recorded[PREPARED_PATH] else (None, "")
            check.lines.append(f"`{MODEL_PATH}`: fetched, md5 {recorded[MODEL_PATH]}, the one the head's `dvc.lock` "
                               f"records{trained_on(card)}.")
            return model, card, (prepared / MANIFEST if prepared else None)
        why = (f"`{MODEL_PATH}` (md5 {recorded[MODEL_PATH]}) is in neither this clone's DVC cache nor the base's "
               f"remote ({code(why_not or card_why_not)})")
    elif why is None:
        why = f"the head's `{LOCK_PATH}` records no `{MODEL_PATH}`"
    if handed_over is not None:
        files = {name: handed_over / name for name in HANDED_OVER}
        if not all(path.is_file() for path in files.values()):
            check.stop(f"{why}, and the untrusted job handed over no model (it failed, or was not run)")
            return None, None, None
        found = file_digest(files["model.pth"], "md5")
        check.lines.append(f"`{MODEL_PATH}`: {why}; **reproduced with the head's code by the untrusted job**, which "
                           f"handed it over (md5 {found}).")
        if not unpublished(check, recorded[MODEL_PATH], found, stale):
            return None, None, None
        return files["model.pth"], files["model.json"], files[MANIFEST]
    log(f"{why}: the head's code trains it here (dvc repro)")
    if (failed := run_repro(repo, log)) is not None:
        check.stop(f"{why}, and the head's pipeline failed here: {failed}")
        return None, None, None
    found = file_digest(repo / MODEL_PATH, "md5")
    check.lines.append(f"`{MODEL_PATH}`: {why}; **reproduced here with the head's code** (md5 {found}).")
    if not unpublished(check, recorded[MODEL_PATH], found, stale):
        return None, None, None
    return repo / MODEL_PATH, repo / MODEL_CARD_PATH, repo / PREPARED_PATH / MANIFEST


def unpublished(check: HeadCheck, recorded: str | None, found: str, stale: list[str]) -> bool:
    """Whether the reproduction may be judged: it may when it is the model the head's fresh `dvc.lock` records,
    or when that lock is stale (merging publishes no model until the pipeline reruns, which makes this one).
    A fresh lock naming bytes nobody could fetch or make is what merging would publish unscored (and what its
    author could push to the remote after the merge): nothing is judged."""
    if stale or recorded is None or found == recorded:
        return True
    check.stop(f"what merging would publish was not scored: the head's `{LOCK_PATH}` records `{MODEL_PATH}` md5 "
               f"{recorded}, which is in neither this clone's DVC cache nor the base's remote, and the head's code "
               f"trains other bytes (md5 {found}); push the head's outputs to the base's remote (`dvc push`), or "
               "commit a run whose model is there")
    return False


def trained_on(card: Path) -> str:
    """What the model card says trained the model (a GPU promotion's says cuda, though its params say auto)."""
    try:
        device = json.loads(card.read_text(encoding="utf-8")).get("trained_on")
    except (OSError, ValueError, AttributeError):
        return ""
    return f", trained on {code(str(device))}" if device else ""


def check_head(repo: Path, base_tree: Path, base_fingerprint: str | None, scratch: Path,
               log: Callable[[str], None], handed_over: Path | None = None) -> HeadCheck:
    """Fetch or train the head's model, and score it with the base's code (module docstring, steps 1-5)."""
    check = HeadCheck()
    # The head's files as they are in its workspace (in CI, its commit), read before anything runs here.
    workspace = read_snapshot(workspace_reader(repo), "in the head's workspace")
    lock = workspace.lock
    check.lines.append(prepare_base_tree(repo, base_tree) + ".")
    stale = (staleness(dvc_status(repo)) + lock_breaks(lock)) if lock else [f"no `{LOCK_PATH}`"]
    if workspace.predictions is None:
        stale.append(f"no `{PREDICTIONS_PATH}` is committed")

    prepared, how = base_test_images(base_tree, log)
    if prepared is None:
        return check.stop(f"the base's test images could not be had: {how}")
    check.prepared = prepared
    model, card, manifest = head_model(repo, base_tree, lock, stale, handed_over, check, log)
    if model is None:
        return check

    if manifest is None or not manifest.is_file():  # a head that hides its data cannot be compared
        return check.stop(f"not comparable: no `{PREPARED_PATH}/{MANIFEST}` of the head's data could be had (the "
                          f"`{PREPARED_PATH}` its `{LOCK_PATH}` records is not in the base's remote), so whether it "
                          "trained on the base's test images cannot be checked")
    if leaked := leaked_between(prepared / MANIFEST, manifest):
        return check.stop(f"not comparable: {len(leaked)} test images are in the head's training data "
                          "(its train or validation split holds the base's test images, by content hash)")
    check.lines.append("Leakage: none of the base's test images is in the head's training data (by content hash).")

    check.scored = scratch / "scored"
    if (failed := score(base_tree, prepared, model, card, check.scored)) is not None:
        return check.stop(f"not comparable: the base's evaluate could not score the head's model on the base's "
                          f"test images ({code(failed)})")
    scored = read_snapshot(workspace_reader(check.scored), "as CI scored it")
    fingerprint = str(scored.evaluation.get("test_fingerprint"))
    if base_fingerprint is not None and fingerprint != base_fingerprint:
        return check.stop(f"the test images CI had ({fingerprint[:19]}) are not the base's ({base_fingerprint[:19]})")
    check.lines.insert(0, f"**Judged: CI's own scoring** of the head's model, by the base's evaluate code, on the "
                          f"base's {len(scored.predictions):,} test images ({how}).")

    # The committed metrics/ are the published model's results (save publishes them with it).
    claimed = lock_md5(lock, MODEL_PATH)
    if workspace.predictions is not None and claimed is not None and claimed == file_digest(model, "md5"):
        if (problem := forged(workspace.predictions, scored.predictions)) is not None:
            return check.stop(problem)
        check.lines.append("The head's committed results are this model's: they agree with CI's scoring on every "
                           "test image both hold.")
    else:
        check.lines.append("The head's committed results are of another model than the one scored, so not "
                           "checked against it; they are not what is judged.")
    return check


def judged_reader(repo: Path, scored: Path):
    """The head as the report reads it: CI's own scoring for the results, the workspace for the rest."""
    workspace = workspace_reader(repo)
    own = workspace_reader(scored)

    def read(path: str) -> str | None:
        return own(path) if path in SCORED else workspace(path)
    return read


def running_from(tree: Path) -> bool:
    """Whether this process imports pipeline and classifier from `tree` (the base's worktree)."""
    import classifier
    import pipeline
    return all(Path(module.__file__).resolve().is_relative_to(tree.resolve()) for module in (classifier, pipeline))


def base_env(tree: Path) -> dict[str, str]:
    """The environment that makes `python -P -m pipeline.report` the base's: its worktree first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), str(tree)]), BASE_TREE_ENV: str(tree)}
