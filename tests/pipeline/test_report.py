"""The pull-request report: checked against the metrics files of two real runs, and its CI workflow.

The slow tests share one temporary git repo of the project with two commits: a one-epoch
baseline run, then `train.epochs: 2` and a rerun.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from classifier.compare import HIGHER_IS_BETTER, compare_metrics
from classifier.files import file_digest
from classifier.params import validate_params
from pipeline.post_comment import MARKER
from pipeline.report import Figure, ModelHash, Report, class_moves, render_markdown, stage_changes
from tests.conftest import PROJECT_ROOT, commit_all, copy_project, dvc, git, run, subprocess_env, write_params

VENV = Path(sys.executable).parent.parent
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "pr-report.yml"
IMAGES = ["loss.png", "accuracy.png", "confusion_head.png", "confusion_base.png"]


# ---------------------------------------------------------------- reading the report back


def table(text: str, section: str) -> dict[str, list[str]]:
    """The markdown table under `### section`, keyed by its first cell (header row dropped)."""
    body = text.split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]
    return {row[0]: row[1:] for row in cells}


def printed(value: str) -> float:
    return float(value)


def expected_verdict(name: str, base: float, head: float, tolerance: float) -> str:
    gain = head - base if HIGHER_IS_BETTER[name] else base - head
    if abs(gain) <= tolerance + 1e-9:
        return "within tolerance"
    return "improved" if gain > 0 else "**regressed**"


def check_metrics_table(text: str, base: dict, head: dict, tolerances: dict) -> None:
    rows = table(text, "Metrics (test split)")
    assert set(rows) == {"accuracy", "loss", "macro_f1"}
    for name, (better, base_cell, head_cell, delta_cell, tolerance_cell, verdict) in rows.items():
        base_value, head_value = base["test"][name], head["test"][name]
        assert better == ("higher" if HIGHER_IS_BETTER[name] else "lower")
        # Right to the printed precision (4 decimals): within half a unit of the last digit.
        assert abs(printed(base_cell) - base_value) <= 0.5e-4 + 1e-12
        assert abs(printed(head_cell) - head_value) <= 0.5e-4 + 1e-12
        assert abs(printed(delta_cell) - (head_value - base_value)) <= 0.5e-4 + 1e-12
        assert delta_cell.startswith("+" if head_value >= base_value else "-")
        assert tolerance_cell == f"±{tolerances[name]:.4f}"
        assert verdict == expected_verdict(name, base_value, head_value, tolerances[name]), name


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


def crafted_report(base: dict | None, head: dict, compare) -> Report:
    return Report(
        base_name="main", base_sha="a" * 40, head_sha="b" * 40, head_changes=[], dataset="mnist-5k",
        samples=head["samples"], notes=[], metrics=compare_metrics(base, head, compare), params=[],
        params_problem=None, classes=None, stages=None, model_base=None,
        model_head=ModelHash("md5", "c" * 32, "from dvc.lock"),
    )


def metrics_payload(accuracy: float, loss: float, macro_f1: float) -> dict:
    return {"dataset": "mnist-5k", "samples": {"train": 3600, "val": 400, "test": 1000},
            "test": {"accuracy": accuracy, "loss": loss, "macro_f1": macro_f1}}


def test_render_judges_each_metric_against_its_tolerance(default_params):
    compare = validate_params(default_params).compare
    tolerances = compare.tolerances.model_dump()
    base = metrics_payload(accuracy=0.95, loss=0.20, macro_f1=0.95)
    # accuracy drops by twice its tolerance, loss worsens within its, macro F1 gains exactly its tolerance.
    head = metrics_payload(accuracy=0.95 - 2 * tolerances["accuracy"], loss=0.20 + tolerances["loss"] / 2,
                           macro_f1=0.95 + tolerances["macro_f1"])
    text = render_markdown(crafted_report(base, head, compare))

    check_metrics_table(text, base, head, tolerances)
    rows = table(text, "Metrics (test split)")
    assert rows["accuracy"][-1] == "**regressed**"
    assert rows["loss"][-1] == "within tolerance"
    assert rows["macro_f1"][-1] == "within tolerance"  # the tolerance is inclusive
    assert "**Verdict: REGRESSION**" in text


def test_render_without_base_metrics_calls_every_metric_new(default_params):
    compare = validate_params(default_params).compare
    head = metrics_payload(accuracy=0.9, loss=0.3, macro_f1=0.9)
    rendered = crafted_report(None, head, compare)
    rows = table(render_markdown(rendered), "Metrics (test split)")
    assert {row[-1] for row in rows.values()} == {"new"}
    assert {row[1] for row in rows.values()} == {"—"}  # no base value
    assert not rendered.regressed


def test_comment_points_at_the_artifact_instead_of_embedding_images(default_params):
    compare = validate_params(default_params).compare
    head = metrics_payload(accuracy=0.9, loss=0.3, macro_f1=0.9)
    rendered = crafted_report(None, head, compare)
    rendered.figures = [Figure(name, name) for name in IMAGES]
    comment = render_markdown(rendered, inline_images=False, artifacts_url="https://example.invalid/runs/1")
    assert comment.startswith(MARKER)
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
        return {"cmd": "python -m classifier.evaluate", "params": {"params.yaml": {"train": {"epochs": epochs}}},
                "deps": [{"path": "models/checkpoint.pt", "md5": checkpoint_md5, "size": 1}]}

    base = {"stages": {"train": stage(1, "a"), "evaluate": stage(1, "a"), "gone": stage(1, "a")}}
    head = {"stages": {"train": stage(2, "a"), "evaluate": stage(1, "b"), "new": stage(1, "a")}}
    changes = {change.stage: change for change in stage_changes(base, head)}
    assert changes["train"].reran and changes["train"].reasons == ("params `train.epochs`",)
    assert changes["evaluate"].reran and changes["evaluate"].reasons == ("deps `models/checkpoint.pt`",)
    assert changes["new"].reran and not changes["gone"].reran
    assert not any(change.reran for change in stage_changes(base, base))


def test_pipeline_package_never_imports_torch():
    code = ("import sys, pipeline.report, pipeline.report_plots, pipeline.post_comment; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    run([sys.executable, "-c", code], cwd=PROJECT_ROOT)


# ---------------------------------------------------------------- the comment, through a stand-in gh

FAKE_GH = """#!{python}
# Stands in for `gh api`: comments live in a JSON file; every call is logged.
import json, sys
state_path, log_path = {state!r}, {log!r}
args = sys.argv[2:]
comments = json.load(open(state_path))
with open(log_path, "a") as log:
    log.write(json.dumps(args) + "\\n")
if "--paginate" in args:
    for comment in comments:
        print(json.dumps(comment))
else:
    body = json.load(sys.stdin)["body"]
    if args[1] == "POST":
        comments.append({{"id": 100 + len(comments), "body": body}})
    else:
        target = int(args[2].rsplit("/", 1)[1])
        next(c for c in comments if c["id"] == target)["body"] = body
    json.dump(comments, open(state_path, "w"))
    print("{{}}")
"""


def test_post_comment_creates_one_comment_then_updates_it(tmp_path):
    state, log = tmp_path / "comments.json", tmp_path / "calls.log"
    state.write_text(json.dumps([{"id": 7, "body": "an unrelated review comment"}]))
    gh = tmp_path / "gh"
    gh.write_text(FAKE_GH.format(python=sys.executable, state=str(state), log=str(log)))
    gh.chmod(0o755)
    body = tmp_path / "comment.md"
    env = subprocess_env(GH=str(gh))

    def post(text: str) -> subprocess.CompletedProcess:
        body.write_text(text)
        return subprocess.run([sys.executable, "-m", "pipeline.post_comment", "--repo", "owner/name", "--pr", "12",
                               str(body)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)

    first = post(f"{MARKER}\nfirst push")
    assert first.returncode == 0, first.stderr
    second = post(f"{MARKER}\nsecond push")
    assert second.returncode == 0, second.stderr
    comments = json.loads(state.read_text())
    assert [c["body"] for c in comments] == ["an unrelated review comment", f"{MARKER}\nsecond push"]
    methods = [json.loads(line)[1] for line in log.read_text().splitlines() if "--method" in line]
    assert methods == ["POST", "PATCH"]
    assert "repos/owner/name/issues/comments/101" in log.read_text()

    unmarked = post("no marker here")
    assert unmarked.returncode == 2 and "marker" in unmarked.stderr


# ---------------------------------------------------------------- the workflow


def test_workflow_parses_and_its_make_targets_exist():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # PyYAML reads the bare key `on` as True.
    assert "pull_request" in workflow[True]
    steps = workflow["jobs"]["report"]["steps"]
    checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert any(step.get("uses", "").startswith("actions/upload-artifact") and step["with"]["path"] == "report/"
               for step in steps)

    commands = " ".join(step.get("run", "") for step in steps)
    targets = re.findall(r"\bmake\s+([a-z][\w-]*)", commands)
    assert {"install", "pr-report", "pr-comment"} <= set(targets)
    for target in targets:
        # -n prints the recipe without running it; an unknown target fails here.
        dry_run = subprocess.run(["make", "-n", target, "BASE=origin/main", "PR=1"], cwd=PROJECT_ROOT,
                                 capture_output=True, text=True)
        assert dry_run.returncode == 0, f"make {target}: {dry_run.stderr}"


# ---------------------------------------------------------------- two real runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, str]:
    """A project repo: a committed one-epoch run, then a committed two-epoch run; and the base model's sha256."""
    root = copy_project(tmp_path_factory.mktemp("report") / "project")
    write_params(root, **{"train.epochs": 1, "save.min_accuracy": 0.5})
    commit_all(root, "one-epoch copy")
    dvc(root, "repro")
    commit_all(root, "baseline run")
    base_model_sha256 = json.loads((root / "models" / "model.json").read_text())["sha256"]
    write_params(root, **{"train.epochs": 2})
    dvc(root, "repro")
    commit_all(root, "two epochs")
    return root, base_model_sha256


@pytest.mark.slow
def test_make_report_matches_both_metrics_files(two_runs):
    root, base_model_sha256 = two_runs
    # -o: the shared venv counts as installed as it is; make must never reinstall it from a temp copy.
    result = subprocess.run(
        ["make", "-o", f"{VENV}/.installed", "report", "BASE=HEAD~1", f"VENV={VENV}", "REPORT_FLAGS=--fail-on-regression"],
        cwd=root, env=subprocess_env(), capture_output=True, text=True)
    text = (root / "report" / "report.md").read_text()
    base, head = json.loads(at(root, "HEAD~1", "metrics/metrics.json")), json.loads(at(root, "HEAD", "metrics/metrics.json"))
    tolerances = yaml.safe_load((root / "params.yaml").read_text())["compare"]["tolerances"]

    assert f"`HEAD~1` at `{git(root, 'rev-parse', 'HEAD~1')[:10]}`" in text
    assert f"workspace at `{git(root, 'rev-parse', 'HEAD')[:10]}`" in text
    assert table(text, "Params") == {"`train.epochs`": ["`1`", "`2`"]}
    check_metrics_table(text, base, head, tolerances)
    regressed = any(row[-1] == "**regressed**" for row in table(text, "Metrics (test split)").values())
    assert result.returncode == (1 if regressed else 0), result.stderr

    # The class whose F1 moved most, from the two per_class.csv files.
    f1 = {rev: {row["class"]: float(row["f1"]) for row in csv.DictReader(io.StringIO(at(root, rev, "metrics/per_class.csv")))}
          for rev in ("HEAD~1", "HEAD")}
    biggest = max(f1["HEAD"], key=lambda name: abs(f1["HEAD"][name] - f1["HEAD~1"][name]))
    _, first_row = next(iter(table(text, "Classes whose F1 moved most").items()))
    assert abs(abs(printed(first_row[2])) - abs(f1["HEAD"][biggest] - f1["HEAD~1"][biggest])) <= 0.5e-4 + 1e-12

    # A stage reran exactly when its cmd, deps or params differ between the two dvc.lock files.
    locks = {rev: yaml.safe_load(at(root, rev, "dvc.lock"))["stages"] for rev in ("HEAD~1", "HEAD")}
    stages = table(text, "Pipeline")
    for name, stage in locks["HEAD"].items():
        differs = any(stage.get(key) != locks["HEAD~1"][name].get(key) for key in ("cmd", "deps", "params"))
        assert stages[name][0] == ("yes" if differs else "no"), name
    assert stages["train"] == ["yes", "params `train.epochs`"]
    head_model_sha256 = file_digest(root / "models" / "model.pth")
    assert f"sha256 `{base_model_sha256}`" in text and f"sha256 `{head_model_sha256}`" in text
    assert base_model_sha256 != head_model_sha256

    check_images(root / "report", IMAGES)
    for image in IMAGES:
        assert f"]({image})" in text
    assert (root / "report" / "plots" / "index.html").stat().st_size > 1000
    assert (root / "report" / "comment.md").read_text().startswith(MARKER)


@pytest.mark.slow
def test_first_pull_request_has_no_base_metrics_or_lock(two_runs, tmp_path):
    root, _ = two_runs
    # A base commit that never ran the pipeline: the baseline's tree without metrics/ and dvc.lock,
    # built with plumbing so the shared workspace is not touched.
    index = {"GIT_INDEX_FILE": str(tmp_path / "index")}
    for args in (["read-tree", "HEAD~1"], ["rm", "-q", "-r", "-f", "--cached", "metrics", "dvc.lock"]):
        subprocess.run(["git", *args], cwd=root, env=subprocess_env(**index), check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=root, env=subprocess_env(**index), check=True,
                          capture_output=True, text=True).stdout.strip()
    base = git(root, "commit-tree", tree, "-m", "code only, never run").strip()

    result = report(root, "--base", base, "--fail-on-regression", out=str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "The base has no `metrics/metrics.json`: this is the pipeline's first pull request" in text
    assert "The base has no `dvc.lock`" in text
    rows = table(text, "Metrics (test split)")
    head = json.loads((root / "metrics" / "metrics.json").read_text())
    for name, row in rows.items():
        assert row[1] == "—" and row[-1] == "new"
        assert abs(printed(row[2]) - head["test"][name]) <= 0.5e-4 + 1e-12
    assert {row[0] for row in table(text, "Pipeline").values() if row} >= {"yes"}
    check_images(tmp_path / "out", ["loss.png", "accuracy.png", "confusion_head.png"])
    assert not (tmp_path / "out" / "confusion_base.png").exists()


@pytest.mark.slow
def test_shallow_clone_says_how_to_fetch_the_base(two_runs, tmp_path):
    root, _ = two_runs
    shallow = tmp_path / "shallow"
    run(["git", "clone", "-q", "--depth", "1", f"file://{root}", str(shallow)], cwd=tmp_path)

    result = report(shallow, "--base", "HEAD~1")
    assert result.returncode == 0, result.stderr
    text = (shallow / "report" / "report.md").read_text()
    assert "it is a shallow clone" in text and "`git fetch --unshallow`" in text
    assert {row[-1] for row in table(text, "Metrics (test split)").values()} == {"new"}

    # As a gate it cannot judge anything, and says so rather than passing.
    gate = report(shallow, "--base", "HEAD~1", "--fail-on-regression")
    assert gate.returncode == 2 and "not found" in gate.stderr


@pytest.mark.slow
def test_fail_on_regression_exits_1_for_a_worse_workspace(two_runs, tmp_path):
    root, _ = two_runs
    # The workspace takes the one-epoch run's real results back, uncommitted: worse than the
    # committed two-epoch HEAD. Written from git rather than retrained: the numbers are the same.
    tracked = ["params.yaml", "dvc.lock", *git(root, "ls-files", "metrics").split()]
    for path in tracked:
        (root / path).write_text(at(root, "HEAD~1", path))
    try:
        result = report(root, "--base", "HEAD", "--fail-on-regression", out=str(tmp_path / "out"))
        text = (tmp_path / "out" / "report.md").read_text()
        base = json.loads(at(root, "HEAD", "metrics/metrics.json"))
        head = json.loads((root / "metrics" / "metrics.json").read_text())
        tolerances = yaml.safe_load((root / "params.yaml").read_text())["compare"]["tolerances"]
        check_metrics_table(text, base, head, tolerances)
        assert table(text, "Metrics (test split)")["accuracy"][-1] == "**regressed**", "one epoch should be worse"
        assert result.returncode == 1
        assert "regression beyond tolerance" in result.stderr and "accuracy" in result.stderr
        assert "with uncommitted changes to" in text and "`params.yaml`" in text
        assert table(text, "Params") == {"`train.epochs`": ["`2`", "`1`"]}
    finally:
        for path in tracked:
            (root / path).write_text(at(root, "HEAD", path))
