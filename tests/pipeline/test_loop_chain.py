"""The retrain loop chained on loopback, as a team runs it (issue 29.9): a worker retrains with
`train.device` set the way `retrain-gpu` sets it (a CUDA worker simulated on this CPU), pushes its
branch to the origin and its outputs to the S3 remote (moto, tests/s3_server.py), and opens its pull
request on the loopback forge (tests/forge_server.py); CI's exact command runs in fresh clones of the
branch, without credentials (a fork) and with read credentials; main fast-forwards to the branch;
`make run` in a fresh clone of main on this CPU pulls the merged champion; a second retrain (retrain-cpu)
is judged against it. Every step names the same model."""

from __future__ import annotations

import json
import re
import secrets
import sys

import pytest
import yaml

from pipeline.retrain.flow import NOT_PROMOTED, NO_CHANGE, PROMOTED, SAME_MODEL, retrain
from pipeline.retrain.pull_request import API_ENV, REPO_ENV, TOKEN_ENV
from pipeline.run.stages import lock_md5
from tests.conftest import commit_all, git, subprocess_env, write_params
from tests.forge_server import ForgeScript, fake_forge
from tests.pipeline.test_remote_s3 import fresh_clone, make, with_read
from tests.s3_server import READ_CREDENTIALS, configure_remote, s3_server, with_credentials, without_credentials

pytestmark = pytest.mark.slow
MODEL = "models/model.pth"
TOKEN = f"ghp_fakesecretXYZ{secrets.token_hex(8)}"
# What .github/workflows/pr-report.yml runs, with its two values as the workflow gives them.
CI_COMMAND = ["pr-report", "BASE=origin/main", "REPORT_FLAGS=--artifacts-url https://ci.example/runs/1"]


def verdict_of(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("**Verdict: "))


def head_sha256(report: str) -> str | None:
    found = re.search(r"^\| head \| sha256 `([0-9a-f]{64})` \|", report, re.M)
    return found[1] if found else None


def test_a_gpu_promotion_goes_round_the_loop_and_every_step_names_its_model(reproduced_project, tmp_path,
                                                                            prefect_harness, monkeypatch):
    team = reproduced_project
    with s3_server(tmp_path) as s3, fake_forge(ForgeScript(token=TOKEN)) as forge:
        configure_remote(team, s3, lambda args: with_read([sys.executable, "-m", *args], team))
        write_params(team, **{"train.epochs": 3})  # main asks for more than its champion had: a retrain can beat it
        commit_all(team, "S3 remote; train longer")
        with_read([sys.executable, "-m", "dvc", "push", "-q"], team)
        origin = tmp_path / "origin.git"
        git(tmp_path, "clone", "--quiet", "--bare", str(team), str(origin))

        # The worker: the remote's credentials and the forge token in its environment, and CUDA (simulated: this
        # CPU stands in for the GPU; the flow still writes what retrain-gpu writes).
        for key, value in READ_CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        for key, value in {API_ENV: forge.api, REPO_ENV: "octo/models", TOKEN_ENV: TOKEN}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr("pipeline.retrain.flow.require_device", lambda device: None)
        first = retrain(repo=origin.as_uri(), base="main", device="cuda", workspace_root=str(tmp_path / "ws"))
        assert first["result"] == PROMOTED, first
        branch = first["branch"]
        promoted_lock = yaml.safe_load(git(origin, "show", f"{branch}:dvc.lock"))
        promoted_md5 = lock_md5(promoted_lock, MODEL)
        assert yaml.safe_load(git(origin, "show", f"{branch}:params.yaml"))["train"]["device"] == "auto"
        assert s3.has_md5(promoted_md5)
        [pull] = forge.script.pulls
        assert pull["head"]["ref"] == branch and pull["base"]["ref"] == "main"

        # CI, in fresh clones of the pull request's branch: a fork's run (no credentials: the head's code trains the
        # model here), then this repository's (the model fetched from the base's remote). Either way CI scores it
        # with the base's code, and a promoted retrain is not worse: exit 0, nothing else (issue 38).
        reports = {}
        for name, env in (("fork", without_credentials(subprocess_env())), ("read", with_credentials(subprocess_env()))):
            clone = fresh_clone(origin, tmp_path / f"ci-{name}", branch)
            done = make(clone, env, *CI_COMMAND)
            reports[name] = (clone / "report/report.md").read_text() if (clone / "report/report.md").is_file() else ""
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
            assert "- **Judged: CI's own scoring** of the head's model" in reports[name]
            assert promoted_md5 in reports[name]
        assert "**reproduced here with the head's code**" in reports["fork"]
        assert f"fetched, md5 {promoted_md5}, the one the head's `dvc.lock` records, trained on `cpu`" in reports["read"]
        assert verdict_of(reports["fork"]) == verdict_of(reports["read"])  # the same bytes, scored alike
        champion_sha256 = head_sha256(reports["read"])
        assert champion_sha256 is not None

        # A person merges: main fast-forwards to the branch.
        git(origin, "merge-base", "--is-ancestor", "main", branch)
        git(origin, "update-ref", "refs/heads/main", f"refs/heads/{branch}")

        # A new user on a CPU: make run in a fresh clone of main pulls the champion, trains nothing.
        clone = fresh_clone(origin, tmp_path / "after-merge")
        try:
            done = make(clone, with_credentials(subprocess_env()), "run")
            output = done.stdout + done.stderr
            assert done.returncode == 0, output[-3000:]
            assert f"model {MODEL} sha256 {champion_sha256}" in done.stdout
            assert "Running stage 'train'" not in output
            assert json.loads((clone / "models/model.json").read_text())["trained_on"] == "cpu"  # what trained it
        finally:
            make(clone, subprocess_env(), "server-stop")

        # The next retrain (retrain-cpu) is judged against the merged champion.
        second = retrain(repo=origin.as_uri(), base="main", device="cpu", workspace_root=str(tmp_path / "ws"))
        assert second["result"] in (PROMOTED, NOT_PROMOTED, NO_CHANGE), second
        assert lock_md5(yaml.safe_load(git(origin, "show", "main:dvc.lock")), MODEL) == promoted_md5
        if second["reason"] == SAME_MODEL:  # this CPU retrained the champion's bytes again: nothing to judge
            assert second["branch"] is None
        if second["branch"]:  # promoted again: on top of the merged champion
            git(origin, "merge-base", "--is-ancestor", "main", second["branch"])
