"""A real S3 remote on loopback (moto's server, dvc-s3; tests/s3_server.py) under the commands a team
runs (issue 29): `make run` in a fresh clone pulls what the remote holds, and warns and computes when it
cannot read it; CI's `make pr-report` in a fresh clone of a pull request's branch fetches the model the
head's dvc.lock records from the remote the base names, checks it by md5 and scores it with the base's code
(issue 38; without credentials: tests/pipeline/test_loop_chain.py); a remote holding other bytes under the
model's name is caught."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.run.stages import lock_md5
from tests.conftest import git, subprocess_env
from tests.pipeline.prefect_server import MAKE
from tests.s3_server import configure_remote, s3_server, with_credentials, without_credentials

pytestmark = pytest.mark.slow
MODEL = "models/model.pth"


def with_read(args: list[str], project: Path) -> None:
    """`args` in `project` with the remote's credentials; fails the test when it fails."""
    done = subprocess.run(args, cwd=project, env=with_credentials(subprocess_env()), capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"


@pytest.fixture
def s3(tmp_path):
    with s3_server(tmp_path) as server:
        yield server


def published(project: Path, s3) -> Path:
    """The project with the S3 bucket as its committed default remote, its outputs pushed there."""
    configure_remote(project, s3, lambda args: with_read([sys.executable, "-m", *args], project))
    git(project, "add", ".dvc/config")
    git(project, "commit", "-q", "-m", "DVC remote: S3")
    with_read([sys.executable, "-m", "dvc", "push", "-q"], project)
    return project


def fresh_clone(origin: Path, where: Path, branch: str = "main") -> Path:
    subprocess.run(["git", "clone", "-q", "--branch", branch, str(origin), str(where)], check=True)
    return where


def make(clone: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    for inherited in ("PREFECT_API_URL", "PREFECT_HOME"):  # the clone's own server, as for a new user
        env.pop(inherited, None)
    return subprocess.run([*MAKE, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=900)


def test_make_run_in_a_fresh_clone_pulls_what_the_s3_remote_holds(reproduced_project, s3, tmp_path):
    project = published(reproduced_project, s3)
    committed_md5 = lock_md5(yaml.safe_load((project / "dvc.lock").read_text()), MODEL)
    assert s3.has_md5(committed_md5)

    clone = fresh_clone(project, tmp_path / "clone")
    try:
        done = make(clone, with_credentials(subprocess_env()), "run")
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "Running stage 'train'" not in output and "Pulling data for stage: 'train'" in output, output[-3000:]
        assert lock_md5(yaml.safe_load((clone / "dvc.lock").read_text()), MODEL) == committed_md5
        assert git(clone, "status", "--porcelain", "--", "dvc.lock", "metrics").strip() == ""
    finally:
        make(clone, subprocess_env(), "server-stop")

    # No credentials (offline, or not given): one warning line, and the run computes what it needs.
    offline = fresh_clone(project, tmp_path / "offline")
    computed = subprocess.run([sys.executable, "-m", "pipeline.run.dvc_run"], cwd=offline,
                              env=without_credentials(subprocess_env()), capture_output=True, text=True, timeout=900)
    assert computed.returncode == 0, computed.stdout[-3000:] + computed.stderr[-3000:]
    warnings = [line for line in computed.stdout.splitlines() if line.startswith("warning: the DVC remote")]
    assert len(warnings) == 1 and "does not answer" in warnings[0], computed.stdout[:2000]
    assert "Running stage 'train'" in computed.stdout


def judged_line(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("- **Judged:"))


def head_accuracy(report: str) -> str:
    return re.search(r"^\| accuracy \| higher \| [^|]+ \| ([0-9.]+) \|", report, re.M)[1]


def test_ci_scores_the_fetched_model_itself_and_catches_other_bytes(reproduced_project, s3, tmp_path):
    # The head committed its run (as a retrain's pull request does) and pushed its outputs; its base is the
    # commit before (same results). CI fetches the model the head's dvc.lock records from the remote the
    # BASE names and scores it with the base's code (issue 38). A fork's run: tests/pipeline/test_loop_chain.py.
    project = published(reproduced_project, s3)
    git(project, "commit", "-q", "--allow-empty", "-m", "the head")  # its base, HEAD~1, names the S3 remote
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    committed_accuracy = f"{yaml.safe_load((project / 'metrics/metrics.json').read_text())['test']['accuracy']:.4f}"

    clone = fresh_clone(project, tmp_path / "read")
    done = make(clone, with_credentials(subprocess_env()), "pr-report", "BASE=HEAD~1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = (clone / "report/report.md").read_text()
    assert head_accuracy(report) == committed_accuracy  # CI's own scoring agrees with the committed results
    assert judged_line(report).startswith("- **Judged: CI's own scoring** of the head's model")
    assert f"fetched, md5 {lock_md5(lock, MODEL)}, the one the head's `dvc.lock` records" in report
    assert "The head's committed results are this model's" in report
    assert "Running stage" not in done.stdout + done.stderr

    # The remote holds other bytes under the model's name: caught, nothing is judged.
    s3.put_md5(lock_md5(lock, MODEL), b"not the model dvc.lock names")
    clone = fresh_clone(project, tmp_path / "tampered")
    done = make(clone, with_credentials(subprocess_env()), "pr-report", "BASE=HEAD~1")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "holds other bytes under its name" in done.stderr
    assert (clone / "report/exit-status").read_text() == "2\n"
    assert "**Nothing judged:" in (clone / "report/report.md").read_text()