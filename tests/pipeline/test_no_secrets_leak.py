"""Credentials never leak: with fake secrets in the environment of the server's clients, a worker's
pipeline run and retrain, a run from the command line and a report, no artifact, log, event, flow run,
report file, workspace file or commit holds any of them."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import commit_all, git, write_params
from tests.pipeline.prefect_server import (AUTH_HEADERS, FINAL, api_call, final_state, make_deploy, prefect_server,
                                           run_deployment, start_worker, stop)

pytestmark = pytest.mark.slow
# Random parts: this file is itself in the project's copy and its commits, and must not match.
_RANDOM = secrets.token_hex(8)
SECRETS = {
    "PREFECT_API_AUTH_STRING": f"fake-secret-XYZ-prefect-{_RANDOM}",
    "AWS_ACCESS_KEY_ID": f"AKIAFAKE{_RANDOM.upper()}",
    "AWS_SECRET_ACCESS_KEY": f"fake-secret-XYZ-aws-{_RANDOM}",
    "AZURE_STORAGE_KEY": f"fake-secret-XYZ-azure-{_RANDOM}",
    "GH_TOKEN": f"ghp_fakesecretXYZ{_RANDOM}",
    "GITHUB_TOKEN": f"ghs_fakesecretXYZ{_RANDOM}",
}
# What a secret could turn up as: itself, and the auth string as the Authorization header carries it.
NEEDLES = [*SECRETS.values(), base64.b64encode(SECRETS["PREFECT_API_AUTH_STRING"].encode()).decode()]


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


def everything_the_server_holds(api: str) -> dict[str, str]:
    """Every artifact, log, flow run, deployment and event on the server, as JSON text."""
    held = {}
    for kind in ("artifacts", "logs", "flow_runs", "task_runs", "deployments", "variables", "block_documents"):
        pages, offset = [], 0
        while True:
            page = api_call(api, "POST", f"/{kind}/filter", json={"limit": 200, "offset": offset})
            pages += page
            if len(page) < 200:
                break
            offset += 200
        held[kind] = json.dumps(pages)
    assert json.loads(held["artifacts"]) and json.loads(held["logs"])  # there was something to search
    events = api_call(api, "POST", "/events/filter", json={"limit": 50})
    found = events["events"]
    while events.get("next_page"):
        events = httpx.get(events["next_page"], headers=AUTH_HEADERS[api], timeout=30).raise_for_status().json()
        found += events["events"]
    held["events"] = json.dumps(found)
    return held


def files_under(folder: Path, skip: tuple[str, ...] = (".git",)) -> dict[str, str]:
    return {str(path): path.read_bytes().decode("utf-8", "replace") for path in folder.rglob("*")
            if path.is_file() and not any(part in skip for part in path.relative_to(folder).parts)}


def test_fake_secrets_reach_no_artifact_log_report_or_commit(reproduced_project, tmp_path):
    # main's committed one-epoch model is the champion; main then asks for two epochs, which the runs train
    # and a retrain judges (and, when the gate agrees, commits on a branch), the secrets in their environment.
    project = reproduced_project
    write_params(project, **{"train.epochs": 2})
    commit_all(project, "train two epochs")
    with prefect_server(tmp_path, SECRETS["PREFECT_API_AUTH_STRING"]) as (api, env):
        env = {**env, **SECRETS}
        deployed = make_deploy(project, env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        worker = start_worker(project, env, tmp_path / "worker.log")
        try:
            train = api_call(api, "GET", "/deployments/name/train-pipeline/train-cpu")
            assert final_state(api, run_deployment(api, train["id"])) == "COMPLETED", \
                (tmp_path / "worker.log").read_text()[-3000:]
            retrain = api_call(api, "GET", "/deployments/name/retrain/retrain-cpu")
            retrained = run_deployment(api, retrain["id"], {"workspace_root": str(tmp_path / "workspaces")})
            assert final_state(api, retrained) in FINAL - {"CRASHED", "CANCELLED"}, \
                (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            stop(worker)
        # The command line against the same server, with the string in its environment.
        ran = subprocess.run([sys.executable, "-m", "pipeline", "run"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
        held = everything_the_server_holds(api)
        retrain_logs = [log["message"] for log in json.loads(held["logs"]) if log["flow_run_id"] == retrained]
        assert "retrain-comparison" in held["artifacts"], "\n".join(retrain_logs[-12:])
        assert "pipeline-run" in held["artifacts"]

    reported = subprocess.run([sys.executable, "-m", "pipeline.report", "--base", "main", "--out", str(tmp_path / "report")],
                              cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert reported.returncode in (0, 1, 2) and (tmp_path / "report" / "report.md").is_file(), reported.stderr[-3000:]

    found = {f"server {kind}": leaks(text) for kind, text in held.items()}
    found.update({f"output of {name}": leaks(result.stdout + result.stderr)
                  for name, result in (("make deploy", deployed), ("pipeline run", ran), ("report", reported))})
    found.update({path: leaks(text) for path, text in files_under(tmp_path / "report").items()})
    for log in ("worker.log", "server.log"):
        found[log] = leaks((tmp_path / log).read_text(errors="replace"))
    # The workspace as the runs left it (outputs, dvc.lock, metrics, DVC's own files), and every commit.
    found.update({path: leaks(text) for path, text in files_under(project).items()})
    revisions = git(project, "rev-list", "--all").split()
    assert len(revisions) >= 1
    grep = subprocess.run(["git", "grep", "-I", "-F", *(arg for needle in NEEDLES for arg in ("-e", needle)), *revisions],
                          cwd=project, capture_output=True, text=True)
    assert grep.returncode == 1, grep.stdout[-3000:]  # 1: no match anywhere in any commit
    assert not leaks(git(project, "log", "--all", "--format=%B%n%an%n%ae")), "a commit message"
    assert {where: what for where, what in found.items() if what} == {}
