"""The pull-request report's content: both revisions gathered, judged and drawn into a `Report`.

The base is read from git (pipeline.results: metrics, per-example results and params are
git-tracked), the head is the workspace. Judging is classifier.judging.compare, under the BASE's
`compare` policy; what git and DVC say changed is pipeline.report.changes; the images are
pipeline.report.plots and, for the pictures of flipped test images, classifier.training.flips in a
subprocess (torch stays out of pipeline/). The markdown is pipeline.report.render.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from classifier.judging.compare import NOT_COMPARABLE, cannot_judge, judge, pairing_problem
from classifier.data.checks import read_report, report_note
from pipeline.project import (
    EVALUATION_PATH, LOCK_PATH, METRICS_PATH, MODEL_PATH, PARAMS_PATH, PREDICTIONS_PATH, PREPARED_PATH,
)
from pipeline.report import plots
from pipeline.report.changes import (
    ReportError, dvc_params_diff, dvc_plots, missing_base_note, model_hash, resolve, section_changes,
    stage_changes, stage_order, uncommitted,
)
from pipeline.report.render import ClassMove, Figure, Report
from pipeline.registry import champion_note
from pipeline.results import Reader, ResultsError, Snapshot, compare_policy, git_reader, read_snapshot, workspace_reader
from pipeline.run.stages import dvc_cache_dir

TOP_CLASSES = 5
# The picture of flipped test images shows at most this many of each kind.
MAX_FLIPS_SHOWN = 50


def class_moves(base_rows: Sequence[Mapping] | None, head_rows: Sequence[Mapping], top: int = TOP_CLASSES) -> list[ClassMove]:
    """The `top` classes whose F1 moved most, largest move first (ties by class order)."""
    base_f1 = {row["class"]: float(row["f1"]) for row in base_rows or []}
    moves = [ClassMove(row["class"], base_f1.get(row["class"]), float(row["f1"]), row.get("support", ""))
             for row in head_rows]
    return sorted(moves, key=lambda move: -abs(move.delta or 0.0))[:top]


def class_order(pairs: Sequence[tuple[str, str]], classes: Sequence[str]) -> list[str]:
    seen = {name for pair in pairs for name in pair}
    return [name for name in classes if name in seen] + sorted(seen - set(classes))


def flipped(base: pd.DataFrame, head: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paired test images the head now gets wrong, and those it now gets right."""
    right_at_base, right_at_head = base["actual"] == base["predicted"], head["actual"] == head["predicted"]
    rows = pd.DataFrame({"index": range(len(head)), "actual": head["actual"], "base": base["predicted"],
                         "head": head["predicted"]})
    return {"now wrong": rows[right_at_base & ~right_at_head], "now right": rows[~right_at_base & right_at_head]}


def draw_flips(prepared: Path, rows: pd.DataFrame, fingerprint: str, path: Path) -> str | None:
    """The picture of `rows`' test images, drawn by classifier.training.flips (torch stays out of pipeline/);
    returns why there is none, or None."""
    with tempfile.TemporaryDirectory() as scratch:
        flips_csv = Path(scratch) / "flips.csv"
        rows.head(MAX_FLIPS_SHOWN).to_csv(flips_csv, index=False)
        drawn = subprocess.run([sys.executable, "-P", "-m", "classifier.training.flips", str(prepared), str(flips_csv),
                                fingerprint, str(path)], cwd=scratch, capture_output=True, text=True)
    if drawn.returncode != 0:
        return (drawn.stderr.strip().splitlines() or [f"exit {drawn.returncode}"])[-1].removeprefix("error: ")
    return None


def draw_figures(base: Snapshot | None, head: Snapshot, classes: Sequence[str], out_dir: Path,
                 prepared: Path, notes: list[str]) -> list[Figure]:
    figures = []
    base_history = base.history if base else None
    if head.history:
        for file, title, y_label, columns in plots.CURVES:
            plots.curves_figure(out_dir / file, title, y_label, columns, head.history, base_history)
            figures.append(Figure(file, title + (", base dashed, head solid" if base_history else ", head")))
    for label, snapshot in (("head", head), ("base", base)):
        if snapshot is not None and snapshot.predictions is not None:
            file = f"confusion_{label}.png"
            pairs = list(zip(snapshot.predictions["actual"], snapshot.predictions["predicted"]))
            plots.confusion_figure(out_dir / file, f"Confusion matrix, {label}", pairs, class_order(pairs, classes))
            figures.append(Figure(file, f"Confusion matrix, {label}"))
    paired = (base is not None and base.results is not None and head.results is not None
              and base.results.fingerprint == head.results.fingerprint
              and pairing_problem(base.predictions, head.predictions) is None)
    if not paired:
        return figures
    base_pairs = list(zip(base.predictions["actual"], base.predictions["predicted"]))
    head_pairs = list(zip(head.predictions["actual"], head.predictions["predicted"]))
    title = "Confusion change, head - base"
    plots.change_figure(out_dir / "confusion_change.png", title, base_pairs, head_pairs,
                               class_order(base_pairs + head_pairs, classes))
    figures.append(Figure("confusion_change.png", title + " (diagonal: more is better; elsewhere: more is worse)"))
    for kind, rows in flipped(base.predictions, head.predictions).items():
        if rows.empty:
            continue
        file = f"flips_{kind.replace(' ', '_')}.png"
        problem = draw_flips(prepared, rows, head.results.fingerprint, out_dir / file)
        if problem:
            notes.append(f"No picture of the test images {kind}: {problem}.")
            continue
        shown = f"the first {MAX_FLIPS_SHOWN} of {len(rows)}" if len(rows) > MAX_FLIPS_SHOWN else f"all {len(rows)}"
        figures.append(Figure(file, f"Test images {kind} ({shown}), each captioned true: base -> head"))
    return figures


def judge_snapshots(base: Snapshot | None, head: Snapshot, base_where: str, notes: list[str]):
    """The verdict and the policy that gave it; `notes` gains a sentence for each thing missing at base."""
    if base is None:
        return cannot_judge(head.predictions, f"the base revision {base_where} was not found or not readable"), None
    if base.metrics is None:
        notes.append(f"The base has no `{METRICS_PATH}`: this is the pipeline's first pull request, so every "
                     "metric is new and nothing can regress.")
        return judge(None, head.results, None), None
    if base.results is None:
        notes.append(f"The base has `{METRICS_PATH}` but no per-example results (`{PREDICTIONS_PATH}` and "
                     f"`{EVALUATION_PATH}`), so nothing can be paired or judged: rerun the pipeline on the base "
                     "and commit its `metrics/`.")
        return cannot_judge(head.predictions, "the base has no per-example results"), None
    policy, problem = compare_policy(base.params, base_where)
    judgement = judge(base.results, head.results, policy)
    if policy is None and judgement.verdict != NOT_COMPARABLE:
        notes.append(f"{problem}, so nothing was judged.")
    return judgement, policy


def build_report(repo: Path, base_name: str, out_dir: Path, head_check: list[str] | None = None,
                 read_head: Reader | None = None, prepared: Path | None = None, problem: str | None = None) -> Report:
    """`head_check`: CI's lines on what is judged at the head and how (pipeline.report.head); `read_head`: how
    the head's files are read (CI's own scoring for its results), else the workspace; `prepared`: the test
    images for the pictures; `problem`: why nothing is judged (forged results, leakage, no model)."""
    head = read_snapshot(read_head or workspace_reader(repo), "in the workspace")
    if head.metrics is None or head.results is None:
        raise ReportError(f"{METRICS_PATH}, {EVALUATION_PATH} and {PREDICTIONS_PATH} must all be in the workspace: "
                          "run the pipeline first (`dvc repro` or `make run`)")
    notes: list[str] = []
    notes += champion_note(repo)  # the version in classifier#prod (issue 42), when the registry has one
    base_sha = resolve(repo, base_name)
    base = None
    base_where = f"at {base_name} ({base_sha[:10]})" if base_sha else f"`{base_name}`"
    if base_sha is None:
        notes.append(missing_base_note(repo, base_name))
    else:
        try:
            base = read_snapshot(git_reader(repo, base_sha), base_where)
        except ResultsError as error:
            notes.append(f"The base's results cannot be read, so nothing was judged: {error}")
    judgement, policy = judge_snapshots(base, head, base_where, notes)
    # issue 43: the head's data checks before training, when they found anything (classifier.data.checks).
    notes += filter(None, [report_note(read_report(repo / "metrics/data_checks.json"))])
    if problem is not None:  # CI's check of the head found something: its numbers are shown, never judged
        judgement, policy = cannot_judge(head.predictions, problem), None
    head_changes = uncommitted(repo, [PARAMS_PATH, LOCK_PATH, "metrics"])
    if base_sha is not None and base_sha == resolve(repo, "HEAD") and not head_changes:
        notes.append(f"The base {base_name} is the head's own commit and the workspace changes none of its "
                     "params or results: this report compares the commit with itself.")
    if base is not None and base.lock is None:
        notes.append(f"The base has no `{LOCK_PATH}` (the pipeline was never run and committed there): every "
                     "stage counts as new and there is no base model hash.")

    params, params_problem = (None, "No base to compare params with.") if base_sha is None else dvc_params_diff(repo, base_sha)
    cache_dir = dvc_cache_dir(repo)
    report = Report(
        base_name=base_name,
        base_sha=base_sha,
        head_sha=resolve(repo, "HEAD"),
        head_changes=head_changes,
        evaluation=head.evaluation,
        samples=head.metrics.get("samples", {}),
        notes=notes,
        judgement=judgement,
        policy=policy,
        policy_changes=section_changes(base.params, head.params, "compare") if base else [],
        params=params,
        params_problem=params_problem,
        classes=class_moves(base.per_class if base else None, head.per_class) if head.per_class else None,
        stages=stage_changes(base.lock if base else None, head.lock, stage_order(repo)) if head.lock else None,
        model_base=model_hash(base.lock, cache_dir, None) if base and base.lock else None,
        model_head=model_hash(head.lock, cache_dir, repo / MODEL_PATH),
        head_check=head_check,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.figures = draw_figures(base, head, head.evaluation.get("classes", []), out_dir,
                                  prepared or repo / PREPARED_PATH, notes)
    report.plots_html, report.plots_problem = dvc_plots(repo, base_sha, out_dir)
    return report
