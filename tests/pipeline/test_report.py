"""The pull-request report: verdicts on real two-commit histories, checked against the committed files.

The slow tests share one baseline: a temporary git repo of the project (10 epochs, as shipped),
run and committed. Each case copies it, commits one change on top, reruns what DVC says changed,
and reports the workspace against HEAD~1:
- `train.epochs: 1`, with the head's params.yaml raising every min_effect: judged by the base's min_effect;
- `data.test_fraction: 0.25`: *not comparable* (another test split), exit 2;
- a reworded comment in params.yaml: *no detectable change*, zero discordant pairs, exit 0;
- `train.epochs: 3`: a drop near the split's resolution, and a retrain of the change in the same words.

Which verdict case a retrained model lands in depends on the CPU (its SIMD kernels sum in their own
order, so other bytes): a test that trains asserts that the words follow from the run's own numbers
(words_follow_their_numbers), never which case comes out. Every case, exactly, is tested on
constructed tables in tests/unit/test_compare.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from classifier.judging.compare import (
    NEW, NO_CHANGE, NOT_COMPARABLE, REGRESSED, SEVERITY, Results, judge, point_metrics, read_predictions,
)
from classifier.params import CompareParams
from pipeline.report import build as report_module
from pipeline.report.build import class_moves
from pipeline.report.changes import ModelHash, ParamChange, section_changes, stage_changes
from pipeline.report.render import Figure, Report, render_markdown
from pipeline.retrain.flow import KEPT_EVENT, PROMOTED_EVENT, retrain
from tests.conftest import PROJECT_ROOT, commit_all, copy_project, dvc, git, run
from tests.pipeline.test_retrain import events_of

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "pr-report.yml"
JUDGE_WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "pr-report-judge.yml"
IMAGES = ["loss.png", "accuracy.png", "confusion_head.png", "confusion_base.png"]


# ---------------------------------------------------------------- reading the report back


def table(text: str, section: str) -> dict[str, list[str]]:
    """The markdown table under `### section`, keyed by its first cell (header row dropped)."""
    body = text.split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]
    return {row[0]: row[1:] for row in cells}


def verdict(text: str) -> str:
    return re.search(r"\*\*Verdict: ([^*]+)\*\*", text).group(1)


def close(cell: str, value: float) -> bool:
    # Right to the printed precision (4 decimals): within half a unit of the last digit.
    return abs(float(cell) - value) <= 0.5e-4 + 1e-12


def check_images(folder: Path, names: list[str]) -> None:
    for name in names:
        with Image.open(folder / name) as image:
            image.verify()  # raises on a truncated or corrupt file
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 200, name


def at(project: Path, revision: str, path: str) -> str:
    return git(project, "show", f"{revision}:{path}")


def report(project: Path, *args: str, out: str = "report") -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pipeline.report", "--out", out, *args], cwd=project, check=False)


# ---------------------------------------------------------------- rendering, no dvc


def policy(**min_effect) -> CompareParams:
    return CompareParams.model_validate(
        {"alpha": 0.05, "min_effect": {"accuracy": 0.005, "macro_f1": 0.005, "loss": 0.02, **min_effect}})


def predictions(accuracy: float, n: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    actual = np.arange(n) % 10
    predicted = np.where(np.arange(n) < round(n * accuracy), actual, (actual + 1) % 10)
    text = "id,actual,predicted,loss\n" + "".join(
        f"{i:06x},{a},{p},{0.1 if a == p else 2.0 + rng.random():.6f}\n" for i, (a, p) in enumerate(zip(actual, predicted)))
    return read_predictions(text)


def crafted_report(judgement, rules=None, params=(), policy_changes=()) -> Report:
    return Report(
        base_name="main", base_sha="a" * 40, head_sha="b" * 40, head_changes=[],
        evaluation={"dataset": "mnist-5k", "test_fingerprint": "sha256:" + "f" * 64},
        samples={"train": 3600, "val": 400, "test": 1000}, notes=[], judgement=judgement, policy=rules,
        policy_changes=list(policy_changes), params=list(params), params_problem=None, classes=None, stages=None,
        model_base=None, model_head=ModelHash("md5", "c" * 32, "from dvc.lock"),
    )


def test_render_shows_a_regression_with_its_interval_p_value_and_counts():
    base, head = predictions(0.95), predictions(0.90)
    rules = policy()
    judged = judge(Results("sha256:x", base), Results("sha256:x", head), rules)
    text = render_markdown(crafted_report(judged, rules))

    assert verdict(text) == REGRESSED
    rows = table(text, "Metrics (test split)")
    better, base_cell, head_cell, change, interval, min_effect, metric_verdict = rows["accuracy"]
    assert (better, metric_verdict, min_effect) == ("higher", "**worse by more than matters**", "0.005")
    assert close(base_cell, 0.95) and close(head_cell, 0.90) and close(change, -0.05)
    low, high = (float(end) for end in interval.split(" to "))
    assert low <= -0.05 < high < 0  # all 50 pairs one way: the change cannot be worse than -0.05
    assert "95% interval" in text
    assert "50 right only at base, 0 right only at head" in text and "p = 1.5e-12" in text  # McNemar's score test


def test_render_of_a_first_pull_request_calls_everything_new():
    text = render_markdown(crafted_report(judge(None, Results("sha256:x", predictions(0.9)), None)))
    assert verdict(text) == NEW
    rows = table(text, "Metrics (test split)")
    assert {row[-1] for row in rows.values()} == {"new"} and {row[1] for row in rows.values()} == {"—"}


def test_render_of_different_test_sets_names_both_fingerprints_and_the_params():
    judged = judge(Results("sha256:aaa", predictions(0.95)), Results("sha256:bbb", predictions(0.9)), policy())
    change = ParamChange("params.yaml", "data.test_fraction", 0.2, 0.25)
    text = render_markdown(crafted_report(judged, params=[change]))
    assert verdict(text) == NOT_COMPARABLE
    assert "sha256:aaa" in text and "sha256:bbb" in text and "`data.test_fraction`" in text
    assert all(row[4] == "—" for row in table(text, "Metrics (test split)").values())  # no interval


def test_render_says_a_policy_change_takes_effect_only_once_merged():
    base = {"compare": {"alpha": 0.05, "min_effect": {"accuracy": 0.005, "loss": 0.02}}}
    head = {"compare": {"alpha": 0.05, "min_effect": {"accuracy": 1.0, "loss": 0.02}}}
    changes = section_changes(base, head, "compare")
    assert changes == [ParamChange("params.yaml", "compare.min_effect.accuracy", 0.005, 1.0)]
    judged = judge(Results("sha256:x", predictions(0.95)), Results("sha256:x", predictions(0.95)), policy())
    text = render_markdown(crafted_report(judged, policy(), policy_changes=changes))
    assert verdict(text) == NO_CHANGE
    assert "changes the policy (`compare.min_effect.accuracy` `0.005` → `1.0`)" in text and "once merged" in text


def test_comment_points_at_the_artifact_instead_of_embedding_images():
    rendered = crafted_report(judge(None, Results("sha256:x", predictions(0.9)), None))
    rendered.figures = [Figure(name, name) for name in IMAGES]
    comment = render_markdown(rendered, inline_images=False, artifacts_url="https://example.invalid/runs/1")
    assert "![" not in comment and "https://example.invalid/runs/1" in comment
    assert all(name in comment for name in IMAGES)
    assert "![loss.png](loss.png)" in render_markdown(rendered)


def test_class_moves_rank_by_size_of_f1_change():
    base = [{"class": c, "f1": f} for c, f in [("0", "0.90"), ("1", "0.80"), ("2", "0.70")]]
    head = [{"class": c, "f1": f, "support": "10"} for c, f in [("0", "0.91"), ("1", "0.60"), ("2", "0.75")]]
    moves = class_moves(base, head, top=2)
    assert [move.name for move in moves] == ["1", "2"]
    assert moves[0].delta == pytest.approx(-0.20)


def test_stage_changes_name_the_params_and_deps_that_differ():
    def stage(epochs: int, checkpoint_md5: str) -> dict:
        return {"cmd": "python -m classifier.training.evaluate", "params": {"params.yaml": {"train": {"epochs": epochs}}},
                "deps": [{"path": "models/checkpoint.pt", "md5": checkpoint_md5, "size": 1}]}

    base = {"stages": {"train": stage(1, "a"), "evaluate": stage(1, "a"), "gone": stage(1, "a")}}
    head = {"stages": {"train": stage(2, "a"), "evaluate": stage(1, "b"), "new": stage(1, "a")}}
    changes = {change.stage: change for change in stage_changes(base, head)}
    assert changes["train"].reran and changes["train"].reasons == ("params `train.epochs`",)
    assert changes["evaluate"].reran and changes["evaluate"].reasons == ("deps `models/checkpoint.pt`",)
    assert changes["new"].reran and not changes["gone"].reran
    assert not any(change.reran for change in stage_changes(base, base))


def test_flipped_pairs_the_images_that_changed_sides():
    base = read_predictions("id,actual,predicted,loss\na,1,1,0.1\nb,2,3,0.9\nc,3,3,0.2\nd,4,5,0.8\n")
    head = read_predictions("id,actual,predicted,loss\na,1,7,0.9\nb,2,2,0.1\nc,3,3,0.2\nd,4,6,0.7\n")
    flips = report_module.flipped(base, head)
    assert flips["now wrong"].to_dict("records") == [{"index": 0, "actual": "1", "base": "1", "head": "7"}]
    assert flips["now right"].to_dict("records") == [{"index": 1, "actual": "2", "base": "3", "head": "2"}]


def test_pipeline_package_never_imports_torch():
    # Every module of pipeline/, each room included.
    code = ("import importlib, pkgutil, sys, pipeline; "
            "[importlib.import_module(module.name) for module in pkgutil.walk_packages(pipeline.__path__, 'pipeline.')]; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    run([sys.executable, "-c", code], cwd=PROJECT_ROOT)


# ---------------------------------------------------------------- the workflow


def test_workflow_parses_and_its_make_targets_exist():
    # Issue 38: the pull_request workflow runs the pull request's own files, so it only trains and hands the model
    # over (no secrets, no id-token, no write); the workflow_run judge runs the base's code and alone may post.
    workflow = yaml.safe_load(WORKFLOW.read_text())
    judge_workflow = yaml.safe_load(JUDGE_WORKFLOW.read_text())
    # PyYAML reads the bare key `on` as True.
    assert set(workflow[True]) == {"pull_request"} and set(judge_workflow[True]) == {"workflow_run"}
    assert judge_workflow[True]["workflow_run"]["workflows"] == [workflow["name"]]
    assert workflow["permissions"] == {} and judge_workflow["permissions"] == {}
    [model_job] = workflow["jobs"].values()
    assert model_job["permissions"] == {"contents": "read"}
    assert "secrets." not in WORKFLOW.read_text() and "id-token" not in str(model_job)
    steps = model_job["steps"]
    checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert any(step.get("uses", "").startswith("actions/upload-artifact") and step["with"]["path"] == "pr-model/"
               for step in steps)

    [judge_job] = judge_workflow["jobs"].values()
    assert judge_job["permissions"] == {"contents": "read", "actions": "read", "pull-requests": "write",
                                        "id-token": "write"}
    judge_steps = judge_job["steps"]
    [judge_checkout] = [step for step in judge_steps if step.get("uses", "").startswith("actions/checkout")]
    assert "ref" not in judge_checkout["with"] and judge_checkout["with"]["fetch-depth"] == 0  # the base, never the head
    judged = next(step for step in judge_steps if "make pr-report" in step.get("run", ""))
    assert "--repo pr-head --handed-over pr-model" in judged["run"]
    sticky = next(step for step in judge_steps if step.get("uses", "").startswith("marocchino/sticky-pull-request-comment@"))
    assert sticky["with"]["path"] == "report/comment.md" and sticky["with"]["header"] and sticky["with"]["number"]

    commands = " ".join(step.get("run", "") for step in [*steps, *judge_steps])
    targets = re.findall(r"\bmake\s+([a-z][\w-]*)", commands)
    assert {"install", "pr-model", "pr-report"} <= set(targets)
    for target in [*targets, "pr-comment"]:
        # -n prints the recipe without running it; an unknown target fails here.
        dry_run = subprocess.run(["make", "-n", target, "BASE=origin/main", "PR=1"], cwd=PROJECT_ROOT,
                                 capture_output=True, text=True)
        assert dry_run.returncode == 0, f"make {target}: {dry_run.stderr}"


# ---------------------------------------------------------------- real two-commit histories


def set_param(root: Path, key: str, value: object) -> None:
    """Edit one `key: value` line of params.yaml in place, so its comments survive (yaml.safe_dump drops them)."""
    path = root / "params.yaml"
    text, count = re.subn(rf"^(\s*{key}:\s*)[^\s#]+", lambda match: f"{match.group(1)}{value}", path.read_text(),
                          count=1, flags=re.MULTILINE)
    assert count == 1, key
    path.write_text(text)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The project as shipped (10 epochs), run and committed; save's bar lowered so a 1-epoch head publishes."""
    root = copy_project(tmp_path_factory.mktemp("report") / "project")
    set_param(root, "min_accuracy", 0.5)
    dvc(root, "repro")
    commit_all(root, "baseline run, 10 epochs")
    return root


def head_commit(baseline: Path, destination: Path, changes: dict[str, object] = {}, text: tuple[str, str] | None = None) -> Path:
    """A copy of the baseline (workspace, history and DVC cache) with one change run and committed."""
    root = Path(shutil.copytree(baseline, destination, symlinks=True))
    for key, value in changes.items():
        set_param(root, key, value)
    if text:
        path = root / "params.yaml"
        assert text[0] in path.read_text()
        path.write_text(path.read_text().replace(*text))
    dvc(root, "repro")
    commit_all(root, "the change")
    return root


def paired_counts(root: Path) -> tuple[int, int]:
    """Right only at base, right only at head: counted here from the two committed CSVs."""
    base = read_predictions(at(root, "HEAD~1", "metrics/predictions.csv"))
    head = read_predictions(at(root, "HEAD", "metrics/predictions.csv"))
    assert (base["id"] == head["id"]).all()
    base_right, head_right = base["actual"] == base["predicted"], head["actual"] == head["predicted"]
    return int((base_right & ~head_right).sum()), int((~base_right & head_right).sum())



# ---------------------------------------------------------------- words from numbers, independently

# The words' rule (docs/reports.md, "The verdicts"), restated here rather than imported: an interval of
# head - base that holds 0 detects nothing; one that excludes 0 detects a change, sized against min_effect.
DETECTED_WORDS = {  # (direction, how far the nearer end reaches, how far the farther end) -> words
    ("better", "near", "near"): "better, but by less than matters", ("worse", "near", "near"): "worse, but by less than matters",
    ("better", "near", "far"): "better, perhaps by enough to matter", ("worse", "near", "far"): "worse, perhaps by enough to matter",
    ("better", "far", "far"): "better by more than matters", ("worse", "far", "far"): "worse by more than matters"}
# The words under which --fail-on-regression exits 1: the change may be worse by as much as matters.
FAILING_WORDS = {"worse by more than matters", "worse, perhaps by enough to matter",
                 "cannot tell: perhaps worse by enough to matter", "cannot tell: perhaps better or worse by enough to matter"}
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}


def metric_words(name: str, low: float, high: float, min_effect: float) -> str:
    gain_low, gain_high = (low, high) if HIGHER_IS_BETTER[name] else (-high, -low)
    if gain_low <= 0 <= gain_high:
        may_gain, may_lose = gain_high >= min_effect, -gain_low >= min_effect
        return {(True, True): "cannot tell: perhaps better or worse by enough to matter",
                (False, True): "cannot tell: perhaps worse by enough to matter",
                (True, False): "cannot tell: perhaps better by enough to matter",
                (False, False): NO_CHANGE}[may_gain, may_lose]
    direction, near, far = ("better", gain_low, gain_high) if gain_low > 0 else ("worse", -gain_high, -gain_low)
    return DETECTED_WORDS[direction, "far" if near >= min_effect else "near", "far" if far >= min_effect else "near"]


def exit_status_for(words: str) -> int:
    return 1 if words in FAILING_WORDS else 0


@dataclass(frozen=True)
class MetricRow:
    change: float
    low: float
    high: float
    min_effect: float
    words: str


def words_follow_their_numbers(root: Path, text: str) -> dict[str, MetricRow]:
    """Check the report's metric rows against the committed CSVs of HEAD~1 and HEAD (point changes and
    McNemar's counts recomputed here) and each verdict against its own interval and the BASE's min_effect
    (the printed interval is rounded to 4 decimals: ends that close to a boundary may read either way)."""
    base_csv = read_predictions(at(root, "HEAD~1", "metrics/predictions.csv"))
    head_csv = read_predictions(at(root, "HEAD", "metrics/predictions.csv"))
    base_points, head_points = point_metrics(base_csv), point_metrics(head_csv)
    base_min_effect = yaml.safe_load(at(root, "HEAD~1", "params.yaml"))["compare"]["min_effect"]
    rows = {}
    for name, cells in table(text, "Metrics (test split)").items():
        low, high = (float(end) for end in cells[4].split(" to "))
        row = MetricRow(float(cells[3]), low, high, float(cells[5]), cells[6].strip("*"))
        assert close(cells[3], head_points[name] - base_points[name]), (name, cells)
        assert row.min_effect == base_min_effect[name], (name, cells)  # the base's policy judges
        assert low - 1e-4 <= row.change <= high + 1e-4, (name, cells)
        readings = {metric_words(name, low + nudge_low, high + nudge_high, row.min_effect)
                    for nudge_low in (-0.5e-4, 0.5e-4) for nudge_high in (-0.5e-4, 0.5e-4)}
        assert row.words in readings, (name, cells, readings)
        rows[name] = row
    assert set(rows) == set(HIGHER_IS_BETTER)
    overall_words = verdict(text)
    assert overall_words in {row.words for row in rows.values()}
    assert SEVERITY.index(overall_words) == min(SEVERITY.index(row.words) for row in rows.values())

    # McNemar's counts, and its p-value agreeing with accuracy's interval: p < alpha exactly when 0 is outside.
    base_only, head_only = paired_counts(root)
    match = re.search(r"(\d+) right only at base, (\d+) right only at head.*?p = ([0-9.e+-]+);", text)
    assert (int(match.group(1)), int(match.group(2))) == (base_only, head_only)
    alpha = yaml.safe_load(at(root, "HEAD~1", "params.yaml"))["compare"]["alpha"]
    accuracy = rows["accuracy"]
    assert (float(match.group(3)) < alpha) == (accuracy.high < 0 or accuracy.low > 0), (match.group(0), accuracy)
    return rows

@pytest.mark.slow
def test_one_epoch_is_judged_by_the_bases_min_effect_not_the_heads(baseline, tmp_path):
    root = head_commit(baseline, tmp_path / "project", {"epochs": 1, "accuracy": 1.0, "macro_f1": 1.0, "loss": 100})
    result = report(root, "--base", "HEAD~1", "--fail-on-regression")
    text = (root / "report" / "report.md").read_text()

    rows = words_follow_their_numbers(root, text)  # ... with the BASE's min_effect: the head's would excuse anything
    assert exit_status_for(verdict(text)) == result.returncode, result.stderr
    # One epoch instead of ten costs about 0.05 accuracy on any CPU, four times the split's resolution: the
    # interval reaches past the base's min_effect, where the head's raised one (1.0) would call it small.
    accuracy = rows["accuracy"]
    assert accuracy.high < 0 and accuracy.low < -accuracy.min_effect, accuracy
    assert accuracy.words != metric_words("accuracy", accuracy.low, accuracy.high, 1.0)
    if result.returncode == 1:
        assert f"may be worse than HEAD~1 by as much as matters: {verdict(text)} (" in result.stderr
    # Numbers from the committed files at each revision, both the CSVs and metrics.json.
    table_rows = table(text, "Metrics (test split)")
    for revision, column in (("HEAD~1", 1), ("HEAD", 2)):
        from_csv = point_metrics(read_predictions(at(root, revision, "metrics/predictions.csv")))
        from_json = json.loads(at(root, revision, "metrics/metrics.json"))["test"]
        for name in ("accuracy", "loss"):
            assert close(table_rows[name][column], from_csv[name]) and close(table_rows[name][column], from_json[name]), name
    base_only, head_only = paired_counts(root)
    assert base_only > head_only
    assert "This pull request changes the policy" in text
    assert f"`compare.min_effect.accuracy` `{accuracy.min_effect:g}` → `1.0`" in text
    assert "What this test split resolves" in text and "accuracy resolves " in text
    assert "`train.epochs`" in table(text, "Params")
    assert table(text, "Pipeline")["train"] == ["yes", "params `train.epochs`"]
    check_images(root / "report", IMAGES + ["confusion_change.png"])
    assert (root / "report" / "plots" / "index.html").stat().st_size > 1000
    assert "![" not in (root / "report" / "comment.md").read_text()
    # One captioned tile per test image the head now gets wrong, ten to a row, at most 50.
    with Image.open(root / "report" / "flips_now_wrong.png") as picture:
        tiles = min(base_only, report_module.MAX_FLIPS_SHOWN)
        assert picture.size == (min(tiles, 10) * 88 + 4, -(-tiles // 10) * 102 + 4)
    assert "Test images now wrong" in text
    for written in (root / "report").iterdir():
        if written.is_file():
            assert written.stat().st_mode & 0o044 == 0o044, f"{written.name} is not readable by group and others"


@pytest.mark.slow
def test_three_epochs_instead_of_ten_every_word_follows_its_numbers(baseline, tmp_path, prefect_harness):
    """The default data, 10 -> 3 epochs: a drop near the test split's resolution (about 0.012 here), so
    which case it lands in depends on the CPU's bytes (an AMD EPYC read "perhaps by enough to matter" where
    a Xeon read "by less than matters"). Whatever the case, every word follows from the run's own numbers,
    counted here from the committed CSVs; and a retrain of the same change says what the report says."""
    root = head_commit(baseline, tmp_path / "project", {"epochs": 3})
    result = report(root, "--base", "HEAD~1", "--fail-on-regression")
    text = (root / "report" / "report.md").read_text()

    rows = words_follow_their_numbers(root, text)
    overall_words = verdict(text)
    assert exit_status_for(overall_words) == result.returncode, result.stderr
    delta = rows["accuracy"].change
    assert re.search(rf"\*\*Verdict: {re.escape(overall_words)}\*\* \((accuracy|macro F1|loss) [+-]\d\.\d{{4}}", text)
    if overall_words != NO_CHANGE:
        assert "within noise" not in text

    # The retrain of the same change (params committed, results not rerun) trains the same bytes on this
    # machine, so it judges the same tables: the same words, and it promotes only what CI would pass.
    champion = Path(shutil.copytree(baseline, tmp_path / "champion", symlinks=True))
    set_param(champion, "epochs", 3)
    commit_all(champion, "train for 3 epochs; results not rerun")
    branch = git(champion, "branch", "--show-current").strip()
    state = retrain(repo=str(champion), base=branch, workspace_root=str(tmp_path / "ws"), return_state=True)
    assert state.is_completed() and state.name in ("Promoted", "Not promoted"), state
    promoted = state.name == "Promoted"
    [event] = events_of(state, PROMOTED_EVENT if promoted else KEPT_EVENT)
    payload = event["payload"]
    assert payload["verdict"] == overall_words
    assert {name: payload["metrics"][name]["verdict"] for name in rows} == {name: row.words for name, row in rows.items()}
    # The headline: the worst news first, each metric's change under its own words, as the report's verdict line.
    headline = payload["headline"]
    assert state.message.split(": ", 1)[1].startswith(headline + ". "), state.message
    assert headline.startswith(f"{overall_words} (") and f"accuracy {delta:+.4f}" in headline, headline
    assert f"**Verdict: {overall_words}** {headline.removeprefix(overall_words + ' ')}" in text, headline
    assert promoted == all(payload["checks"].values()), payload["checks"]
    if promoted:
        assert result.returncode == 0, "the gate promoted what the report fails"


@pytest.mark.slow
def test_a_report_against_its_own_commit_says_so(baseline, tmp_path):
    result = report(baseline, "--base", "HEAD", out=str(tmp_path / "report"))
    text = (tmp_path / "report" / "report.md").read_text()
    assert result.returncode == 0, result.stderr
    assert "is the head's own commit" in text and verdict(text) == NO_CHANGE


@pytest.mark.slow
def test_another_test_fraction_is_not_comparable(baseline, tmp_path):
    root = head_commit(baseline, tmp_path / "project", {"test_fraction": 0.25})
    result = report(root, "--base", "HEAD~1", "--fail-on-regression")
    text = (root / "report" / "report.md").read_text()

    assert result.returncode == 2, result.stderr
    assert "not comparable against HEAD~1" in result.stderr
    assert verdict(text) == NOT_COMPARABLE
    for revision in ("HEAD~1", "HEAD"):
        assert json.loads(at(root, revision, "metrics/evaluation.json"))["test_fingerprint"] in text
    assert "`data.test_fraction`" in text and table(text, "Params")["`data.test_fraction`"] == ["`0.2`", "`0.25`"]
    assert {row[-1] for row in table(text, "Metrics (test split)").values()} == {NOT_COMPARABLE}


@pytest.mark.slow
def test_a_reworded_comment_is_no_detectable_change(baseline, tmp_path):
    root = head_commit(baseline, tmp_path / "project",
                       text=("# Every knob of the pipeline.", "# Every setting of the pipeline."))
    result = report(root, "--base", "HEAD~1", "--fail-on-regression")
    text = (root / "report" / "report.md").read_text()

    assert result.returncode == 0, result.stderr
    assert verdict(text) == NO_CHANGE
    assert paired_counts(root) == (0, 0)
    tested = json.loads(at(root, "HEAD", "metrics/evaluation.json"))["test_samples"]
    assert f"{tested:,} test images scored by both models: 0 right only at base, 0 right only at head" in text
    assert "p = 1;" in text
    for row in table(text, "Metrics (test split)").values():
        # No image changed sides, yet the interval follows the test split's size (issue 30): it holds 0.
        assert float(row[3]) == 0 and float(row[4].split(" to ")[0]) <= 0 <= float(row[4].split(" to ")[1]) and row[-1] == NO_CHANGE
    assert "No params changed." in text
    stages = table(text, "Pipeline")
    assert stages["validate"][0] == "yes" and stages["train"][0] == "no" and stages["evaluate"][0] == "no"
    assert "The model file is byte-for-byte the same at base and head." in text


@pytest.mark.slow
def test_first_pull_request_has_no_base_metrics_or_lock(baseline, tmp_path):
    # A base commit that never ran the pipeline: the baseline's tree without metrics/ and dvc.lock,
    # built with plumbing so the workspace is not touched.
    index = {"GIT_INDEX_FILE": str(tmp_path / "index")}
    env = {**__import__("os").environ, **index}
    for args in (["read-tree", "HEAD"], ["rm", "-q", "-r", "-f", "--cached", "metrics", "dvc.lock"]):
        subprocess.run(["git", *args], cwd=baseline, env=env, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=baseline, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    base = git(baseline, "commit-tree", tree, "-m", "code only, never run").strip()

    result = report(baseline, "--base", base, "--fail-on-regression", out=str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert verdict(text) == NEW
    assert "The base has no `metrics/metrics.json`: this is the pipeline's first pull request" in text
    assert "The base has no `dvc.lock`" in text
    head = json.loads((baseline / "metrics" / "metrics.json").read_text())["test"]
    for name, row in table(text, "Metrics (test split)").items():
        assert row[1] == "—" and row[-1] == NEW and close(row[2], head[name])
    check_images(tmp_path / "out", ["loss.png", "accuracy.png", "confusion_head.png"])
    assert not (tmp_path / "out" / "confusion_base.png").exists()


@pytest.mark.slow
def test_shallow_clone_says_how_to_fetch_the_base_and_the_gate_cannot_pass(baseline, tmp_path):
    shallow = tmp_path / "shallow"
    run(["git", "clone", "-q", "--depth", "1", f"file://{baseline}", str(shallow)], cwd=tmp_path)

    result = report(shallow, "--base", "HEAD~1")
    assert result.returncode == 0, result.stderr
    text = (shallow / "report" / "report.md").read_text()
    assert "it is a shallow clone" in text and "`git fetch --unshallow`" in text
    assert verdict(text) == "could not judge"

    gate = report(shallow, "--base", "HEAD~1", "--fail-on-regression")
    assert gate.returncode == 2 and "not found" in gate.stderr
