"""Which results of the head the pull-request report judges, and what CI checked and computed to know
(`python -m pipeline.report --check-head`, which `make pr-report` runs).

A pull request judges what merging it would make the champion. When the head's committed results are
the results of its `dvc.lock` (a retrain's pull request; any that committed its run), they are what is
judged, whatever this runner's CPU would make of the same inputs: CI computes only what is missing or
stale. In order:

1. pull the head's outputs from the default DVC remote, where one is set and readable (CI's read
   credentials); what could not be pulled is said, never hidden;
2. check a pulled model's bytes against the md5 `dvc.lock` records;
3. ask `dvc status` whether the committed results are the lock's: a changed param, command, source
   file or committed metric makes them stale; an output that is only absent (not pulled) does not;
4. fresh results: judged as committed. What is missing (the model, when nothing could be pulled) is
   reproduced in a scratch worktree, and the reproduction is one line of the report (same bytes,
   within noise, or not reproduced and why), never the results judged;
5. stale or missing results: `dvc repro` in the workspace, and the report says it judges this
   runner's run.

No Prefect and no torch: git, DVC (as subprocesses) and classifier.compare.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from classifier.compare import Verdict, headline, judge
from classifier.files import file_digest
from pipeline.project import LOCK_PATH, METRICS_PATH, MODEL_CARD_PATH, MODEL_PATH, PARAMS_PATH
from pipeline.report.changes import uncommitted
from pipeline.report.escape import code
from pipeline.results import ResultsError, compare_policy, git, read_snapshot, workspace_reader
from pipeline.run.stages import ALWAYS_CHANGED, dvc_cache_dir, failure, lock_md5, stage_env, stream

# What `dvc status` says of an output that is only not here (not pulled, not computed): absent, not stale.
ABSENT = frozenset({"deleted", "not in cache"})
REPRO_TIMEOUT_S = 3600.0


@dataclass
class HeadCheck:
    """What the report judges at the head, and how CI got there: one line for each step."""

    judged: str = "committed"      # "committed": the head's committed results; "runner": this runner's run
    lines: list[str] = field(default_factory=list)
    problem: str | None = None     # what leaves nothing to judge by (exit 2): a model not the lock's, a failed run


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


def staleness(status: Mapping, outputs: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """From `dvc status --json`: why the committed results are not the lock's (stale), and the inputs
    this runner does not have, so could not check (a data folder at a path of another machine).

    An output that is only absent (not pulled, not yet computed) is neither; a stage input that is
    another stage's output is judged where that output is.
    """
    stale, unchecked = [], []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command"; "always changed" (dvc.yaml's snapshot) is by definition
                if entry != ALWAYS_CHANGED:
                    stale.append(f"{code(stage)}: {entry}")
                continue
            for path, change in (entry.get("changed deps") or {}).items():
                if isinstance(change, Mapping):  # params: {section: modified}
                    stale.append(f"{code(stage)}: params {', '.join(code(key) for key in change)} changed")
                elif change in ABSENT:
                    if path not in outputs:
                        unchecked.append(f"{code(path)} ({code(stage)}'s input) is not on this runner")
                elif path not in outputs:  # another stage's changed output is reported at that stage
                    stale.append(f"{code(stage)}: {code(path)} {change}")
            for path, change in (entry.get("changed outs") or {}).items():
                if change not in ABSENT:
                    stale.append(f"{code(path)} is not what `dvc.lock` records ({change})")
    return sorted(set(stale)), sorted(set(unchecked))


def reproduction_line(committed_md5: str | None, runner_md5: str | None, judgement) -> str:
    """The reproduction's line: the committed model against this runner's, by bytes, then by verdict."""
    if committed_md5 is not None and committed_md5 == runner_md5:
        return f"**Reproduced: same bytes.** This runner's `{MODEL_PATH}` is the one `dvc.lock` records (md5 {runner_md5})."
    words = headline(judgement)
    if judgement.verdict == Verdict.NO_CHANGE:
        return (f"**Reproduced: within noise.** This runner's model has other bytes (md5 {runner_md5}; CPUs sum in "
                f"other orders) and scores as the committed one: {words}.")
    return (f"**Not reproduced:** this runner's model, against the committed results, is {words}. The committed "
            "results are still the ones judged above.")


# ---------------------------------------------------------------- git and dvc (I/O)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env=stage_env())


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [f"exit status {result.returncode}"])[-1].removeprefix("ERROR: ").strip()


def pull(repo: Path, log: Callable[[str], None]) -> tuple[str, bool]:
    """Pull what the default DVC remote holds of the head's outputs; the report's line on it, and whether it pulled."""
    remote = _dvc(repo, "remote", "default")
    if remote.returncode != 0 or not remote.stdout.strip():
        return "DVC remote: none set (`make remote`), so nothing was pulled.", False
    name = remote.stdout.strip()
    log(f"pulling the head's outputs from the DVC remote {name!r}")
    result = _dvc(repo, "pull", "--allow-missing")
    if result.returncode != 0:
        return (f"DVC remote {code(name)}: could not pull ({code(_last_line(result))}); a fork's pull request, or a "
                "run without the remote's read credentials, cannot check the head's model."), False
    return f"DVC remote {code(name)}: pulled what it holds of the head's outputs.", True


def model_check(repo: Path, lock: Mapping | None, pulled: bool) -> tuple[str, str | None]:
    """The model here against the md5 `dvc.lock` records: the report's line, and a problem when they differ."""
    recorded = lock_md5(lock, MODEL_PATH)
    model = repo / MODEL_PATH
    if recorded is None:
        return f"`{MODEL_PATH}`: not in the head's `dvc.lock`.", None
    if not model.is_file():
        return f"`{MODEL_PATH}`: not pulled, so not checked against `dvc.lock` (md5 {recorded}).", None
    found = file_digest(model, "md5")
    if found != recorded:
        problem = (f"the {'pulled' if pulled else 'present'} `{MODEL_PATH}` (md5 {found}) is not the model the head's "
                   f"`dvc.lock` records (md5 {recorded})"
                   + (": the DVC remote holds other bytes under its name" if pulled else ""))
        return f"**`{MODEL_PATH}`: does not match `dvc.lock`.** {problem}.", problem
    how = "pulled" if pulled else "here"
    return f"`{MODEL_PATH}`: {how}, md5 {found}, the one the head's `dvc.lock` records{trained_on(repo)}.", None


def trained_on(repo: Path) -> str:
    """What the model card says trained the model (a GPU promotion's says cuda, though its params say auto)."""
    try:
        device = json.loads((repo / MODEL_CARD_PATH).read_text(encoding="utf-8")).get("trained_on")
    except (OSError, ValueError, AttributeError):
        return ""
    return f", trained on {code(str(device))}" if device else ""


def dvc_status(repo: Path) -> dict:
    result = _dvc(repo, "status", "--json")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        return yaml.safe_load(lines[-1]) if result.returncode == 0 and lines else {"dvc status": [_last_line(result)]}
    except yaml.YAMLError:
        return {"dvc status": [_last_line(result)]}


def run_repro(where: Path, log: Callable[[str], None]) -> str | None:
    """`dvc repro` in `where`, its output in the log; None when it ran, else the line that says why not."""
    returncode, lines = stream([sys.executable, "-m", "dvc", "repro"], where, log, REPRO_TIMEOUT_S, "dvc repro")
    return None if returncode == 0 else failure(returncode, lines).summary


def reproduce(repo: Path, log: Callable[[str], None]) -> str:
    """Run the head again in a scratch worktree sharing the DVC cache, and compare with what is committed."""
    committed = read_snapshot(workspace_reader(repo), "committed at the head")
    scratch = Path(tempfile.mkdtemp(prefix="pr-report-reproduction-"))
    worktree = scratch / "head"
    try:
        added = git(repo, "worktree", "add", "--detach", str(worktree), "HEAD")
        if added.returncode != 0:
            return f"**Not reproduced:** no scratch worktree ({code(added.stderr.strip()[-200:])})."
        cache = dvc_cache_dir(repo)
        if cache is not None:
            _dvc(worktree, "config", "--local", "cache.dir", str(cache))
        log("reproducing the head in a scratch worktree; the committed results stay the ones judged")
        if (failed := run_repro(worktree, log)) is not None:
            return f"**Not reproduced:** {failed}. The committed results are still the ones judged above."
        # What the scratch run made is in the shared cache: bring the prepared data (for the pictures) here.
        _dvc(repo, "checkout", "--allow-missing")
        runner = read_snapshot(workspace_reader(worktree), "reproduced on this runner")
        policy, _ = compare_policy(committed.params, "at the head")
        judgement = judge(committed.results, runner.results, policy)
        return reproduction_line(lock_md5(committed.lock, MODEL_PATH), lock_md5(runner.lock, MODEL_PATH), judgement)
    except ResultsError as error:
        return f"**Not reproduced:** {error}."
    finally:
        git(repo, "worktree", "remove", "--force", str(worktree))
        shutil.rmtree(scratch, ignore_errors=True)


def check_head(repo: Path, log: Callable[[str], None]) -> HeadCheck:
    """Pull, check and compute what the report needs to judge the head (module docstring, steps 1-5)."""
    check = HeadCheck()
    line, pulled = pull(repo, log)
    check.lines.append(line)
    lock_text = (repo / LOCK_PATH).read_text(encoding="utf-8") if (repo / LOCK_PATH).is_file() else None
    lock = yaml.safe_load(lock_text) if lock_text else None
    line, check.problem = model_check(repo, lock, pulled)
    check.lines.append(line)
    stale, unchecked = staleness(dvc_status(repo), lock_outputs(lock)) if lock else (["no `dvc.lock`"], [])
    stale += lock_breaks(lock)
    if unchecked:
        check.lines.append("Not checked here: " + "; ".join(unchecked) + ".")
    if not stale and (repo / METRICS_PATH).is_file():
        # A local `make pr-report` after an uncommitted run: the same check, of the workspace's results.
        whose = "the workspace's results" if uncommitted(repo, [LOCK_PATH, PARAMS_PATH, "metrics"]) else \
            "the head's committed results"
        check.lines.insert(0, f"**Judged: {whose}**, which are the results of its `dvc.lock`.")
        if check.problem is None:  # a remote that holds other bytes stops the report: nothing to reproduce for
            check.lines.append("Reproduction: not needed, the model `dvc.lock` records is here (pulled, or made here)."
                               if (repo / MODEL_PATH).is_file() else "Reproduction: " + reproduce(repo, log))
        return check
    why = "; ".join(stale) if stale else f"no `{METRICS_PATH}` is committed"
    check.judged = "runner"
    check.lines.insert(0, f"**Judged: this runner's run of the head**, not the committed results, which are stale "
                          f"({why}).")
    log(f"the head's committed results are stale ({why}): running the pipeline here")
    if (failed := run_repro(repo, log)) is not None:
        check.problem = f"the head's committed results are stale and the pipeline failed here: {failed}"
        check.lines[0] = (f"**Nothing judged:** the head's committed results are stale ({why}) and the pipeline "
                          f"failed on this runner ({failed}); the numbers below are whatever the workspace holds.")
    return check
