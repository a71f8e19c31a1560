"""A retrain pushes only where its user chose (issue 29.8): `make deploy` records this checkout unless
told `REPO=origin` (or a URL), and a retrain of an origin that will not take its branch stops before
it trains, in one line. The origin here is a real read-only one: `git daemon` on loopback, which
serves clones and refuses pushes."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import git

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def repository_script() -> str:
    build = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["build"]
    step = next(step for step in build if next(iter(step.values())).get("id") == "repository")
    return next(iter(step.values()))["script"]


@pytest.mark.parametrize("chosen, expected", [(None, "checkout"), ("checkout", "checkout"), ("origin", "origin"),
                                              ("https://git.example.com/me/fork.git", "https://git.example.com/me/fork.git")])
def test_make_deploy_records_this_checkout_unless_told_otherwise(tmp_path, chosen, expected):
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    git(checkout, "remote", "add", "origin", "https://git.example.com/upstream/classifier.git")
    env = {"PATH": "/usr/bin:/bin"} | ({"CLASSIFIER_DEPLOY_REPO": chosen} if chosen else {})
    recorded = subprocess.run(["sh", "-c", repository_script()], cwd=checkout, env=env, capture_output=True, text=True)
    answers = {"checkout": str(checkout.resolve()), "origin": "https://git.example.com/upstream/classifier.git"}
    assert recorded.stdout.strip() == answers.get(expected, expected)


def test_make_deploy_to_origin_without_one_says_so(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    recorded = subprocess.run(["sh", "-c", repository_script()], cwd=tmp_path, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "CLASSIFIER_DEPLOY_REPO": "origin"})
    assert recorded.returncode != 0 and "has no origin" in recorded.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_retrain_of_an_origin_it_cannot_push_to_stops_before_training(project, tmp_path, prefect_harness):
    from pipeline.retrain.flow import RetrainError, retrain

    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(project), str(served / "origin.git")], check=True)
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--export-all", f"--base-path={served}", "--listen=127.0.0.1",
                               f"--port={port}", "--reuseaddr", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"git://127.0.0.1:{port}/origin.git"
        deadline = time.monotonic() + 30
        while subprocess.run(["git", "ls-remote", url], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(RetrainError) as refused:
            retrain(repo=url, base="main", workspace_root=str(tmp_path / "workspaces"))
        message = str(refused.value)
        assert message.startswith(f"cannot push to {url} (") and "nothing trained" in message
        assert "\n" not in message
        assert time.monotonic() - started < 60  # no data, no training
        assert not list((tmp_path / "workspaces").glob("retrain-*/data/prepared"))
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
