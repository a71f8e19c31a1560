"""Beyond one machine, on loopback: workers that know only the repository's URL.

A bare git origin, an S3 DVC remote (moto's server on loopback, tests/s3_server.py) set with `make remote`
and its `endpointurl`, the workers holding its credentials, a real `prefect server`, and
"machines" that are empty folders: each gets a clone of the origin (for `make worker`) and its own
TMPDIR, where the deployments' pull steps clone the branch again for every run. A 4-point sweep
spreads over two such workers and its experiments reach a third clone through `dvc exp pull`; a
failed point does not stop the others; a gpu run on a worker without CUDA fails before any work;
a retrain on a worker pushes its branch and outputs back. Training is one epoch throughout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.run.stages import lock_md5
from pipeline.sweep import SweepError, expand_grid, ranked
from tests.conftest import commit_all, copy_project, dvc, git, write_params
from tests.pipeline.prefect_server import (MAKE, api_call, final_state, prefect_server, run_deployment,
                                           stop, wait_for)
from tests.s3_server import s3_server, with_credentials

GRID = ["train.learning_rate=0.0003,0.003", "model.hidden_sizes=[64],[128]"]
MODEL = "models/model.pth"


def make(project: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*MAKE, *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def in_remote(remote, md5: str | None) -> bool:
    return remote.has_md5(md5)


def remote_objects(remote) -> set[str]:
    return remote.keys()


def dvc_with(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """DVC with the remote's credentials (`env`), as on a machine that has them."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def origin_refs(origin: Path) -> str:
    return git(origin, "for-each-ref", "--format=%(objectname) %(refname)")


# --- the grid, as DVC reads it -------------------------------------------------------------------

def test_the_grid_expands_as_dvc_exp_run_queue_expands_it():
    points = expand_grid(["train.learning_rate=0.0003,0.001,0.003", "model.hidden_sizes=[256,256],[512,512]"])
    assert len(points) == 6
    assert points[0] == ["train.learning_rate=0.0003", "model.hidden_sizes=[256,256]"]
    assert points[-1] == ["train.learning_rate=0.003", "model.hidden_sizes=[512,512]"]
    assert expand_grid(["train.epochs=3"]) == [["train.epochs=3"]]
    assert expand_grid(["train.epochs=range(1,4)"]) == [["train.epochs=1"], ["train.epochs=2"], ["train.epochs=3"]]
    for bad in ([], ["train.learning_rate=[1,"], ["train.learning_rate=glob(*)"]):
        with pytest.raises(SweepError):
            expand_grid(bad)


def test_the_table_ranks_completed_points_best_first_and_failed_ones_last():
    rows = ranked([{"experiment": "a", "status": "FAILED", "message": "boom"},
                   {"experiment": "b", "status": "COMPLETED", "test.accuracy": 0.8, "test.loss": 0.4},
                   {"experiment": "c", "status": "COMPLETED", "test.accuracy": 0.9, "test.loss": 0.5},
                   {"experiment": "d", "status": "COMPLETED", "test.accuracy": 0.9, "test.loss": 0.3}])
    assert [row["experiment"] for row in rows] == ["d", "c", "b", "a"]
    assert rows[-1]["test.accuracy"] is None  # not NaN: the table artifact is JSON


# --- make remote ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_make_remote_sets_the_default_remote_and_refuses_a_password(project, tmp_path):
    env = dict(os.environ)
    refused = make(project, env, "remote", "URL=https://user:secret@dvc.example.com/store")
    assert refused.returncode != 0 and "password" in refused.stderr
    assert "secret" not in (project / ".dvc/config").read_text()
    assert make(project, env, "remote").returncode != 0  # no URL

    for url in ("s3://bucket/classifier", str(tmp_path / "store")):  # --force: a second call replaces the first
        done = make(project, env, "remote", f"URL={url}")
        assert done.returncode == 0, done.stderr
    assert dvc(project, "remote", "default").stdout.strip() == "storage"
    assert dvc(project, "remote", "list").stdout.split()[:2] == ["storage", str(tmp_path / "store")]
    assert not (project / ".dvc/config.local").exists()


# --- the cluster: origin, DVC remote, server, workers that know only the URL ------------------

def start_worker(machine: Path, url: str, env: dict, pool: str) -> tuple[subprocess.Popen, Path]:
    """`make worker POOL=pool LIMIT=1` on a "machine": an empty folder that gets a clone of the origin
    (the Makefile and the venv's place) and its own TMPDIR and PREFECT_HOME."""
    checkout = machine / "classifier-pipeline"
    if not checkout.exists():
        machine.mkdir(parents=True)
        subprocess.run(["git", "clone", "-q", url, str(checkout)], check=True, capture_output=True)
    (machine / "tmp").mkdir(exist_ok=True)
    log = machine / f"worker-{pool}.log"
    worker_env = {**env, "PREFECT_HOME": str(machine / ".prefect"), "TMPDIR": str(machine / "tmp")}
    process = subprocess.Popen([*MAKE, "worker", f"POOL={pool}", "LIMIT=1"], cwd=checkout, env=worker_env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return process, log


def worker_name(log: Path) -> str:
    found = re.search(r"Worker '([^']+)' started!", log.read_text())
    return found[1] if found else ""


def artifact_rows(api: str, key: str, flow_run_id: str) -> list[dict]:
    found = api_call(api, "POST", "/artifacts/filter", json={
        "artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}})
    assert len(found) == 1, found
    data = found[0]["data"]
    return json.loads(data) if isinstance(data, str) else data


def sweep_run_id(output: str) -> str:
    return re.search(r"runs/flow-run/([0-9a-f-]{36})", output)[1]


@contextmanager
def loopback_cluster(root: Path, workers=(("machine-a", "cpu"), ("machine-b", "cpu"), ("machine-a", "gpu")),
                     epochs: int = 1, server: dict | None = None, worker_env: dict | None = None):
    """The walkthrough in docs/scaling-out.md on loopback: a bare origin, an S3 DVC remote, a Prefect server, the
    laptop (`make remote`, `make run`, commit, `dvc push`, `git push`, `make deploy`) and a worker per
    (machine, pool), each machine an empty folder that gets only a clone of the origin's URL.
    server: prefect_server's options (`make_project=True` or a `database_url`: the laptop's `make server`);
    worker_env: more of the workers' environment."""
    origin = root / "origin.git"
    url = origin.as_uri()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    laptop = copy_project(root / "laptop")
    write_params(laptop, **{"train.epochs": epochs, "save.min_accuracy": 0.5})
    commit_all(laptop, "the project")
    git(laptop, "remote", "add", "origin", url)
    server = dict(server or {})
    if server.get("database_url") or server.get("make_project") is True:
        server["make_project"] = laptop  # `make server` in the laptop, as a team starts it
    with prefect_server(root, **server) as (api, server_env), s3_server(root) as remote:
        env = with_credentials(server_env)  # every machine here holds the remote's credentials
        done = make(laptop, env, "remote", f"URL={remote.url}")
        assert done.returncode == 0, done.stdout + done.stderr
        dvc(laptop, "remote", "modify", "storage", "endpointurl", remote.endpoint)  # as for MinIO
        done = make(laptop, env, "run", timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        git(laptop, "add", ".dvc/config", "params.yaml", "dvc.lock", "metrics")
        git(laptop, "commit", "-q", "-m", "DVC remote and champion")
        dvc_with(laptop, env, "push", "-q")
        git(laptop, "push", "-q", "origin", "main")
        deployed = make(laptop, env, "deploy", "REPO=origin")  # workers elsewhere: retrains push to the origin
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        started = []
        try:
            logs, processes = {}, {}
            for machine, pool in workers:
                process, log = start_worker(root / machine, url, {**env, **(worker_env or {})}, pool)
                started.append(process)
                logs[(machine, pool)], processes[(machine, pool)] = log, process
            for log in logs.values():
                wait_for(lambda log=log: worker_name(log), f"the worker of {log}", 180)
            yield SimpleNamespace(root=root, origin=origin, url=url, remote=remote, laptop=laptop, api=api, env=env,
                                  logs=logs, workers=processes)
        finally:
            for process in started:
                stop(process)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with loopback_cluster(tmp_path_factory.mktemp("scale-out")) as running:
        yield running


def logs_tail(cluster) -> str:
    return "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in cluster.logs.values())


@pytest.mark.slow
def test_deployments_clone_the_origin_at_the_deployed_branch(cluster):
    point = api_call(cluster.api, "GET", "/deployments/name/sweep-point/sweep-point-cpu")
    steps = [next(iter(step)) for step in point["pull_steps"]]
    assert steps == ["prefect.deployments.steps.git_clone", "prefect.deployments.steps.run_shell_script",
                     "prefect.deployments.steps.set_working_directory"]
    clone = point["pull_steps"][0]["prefect.deployments.steps.git_clone"]
    assert clone["repository"] == cluster.url and clone["branch"] == "main"
    assert "dvc pull --allow-missing" in point["pull_steps"][1]["prefect.deployments.steps.run_shell_script"]["script"]
    retrain = api_call(cluster.api, "GET", "/deployments/name/retrain/retrain-cpu")
    assert retrain["parameters"]["repo"] == cluster.url  # a URL: the retrain pushes its branch back


@pytest.mark.slow
def test_a_sweep_spreads_over_two_url_only_workers_and_every_experiment_reaches_a_third_clone(cluster):
    grid = [flag for value in GRID for flag in ("-S", value)]
    started = time.monotonic()
    swept = make(cluster.laptop, cluster.env, "sweep", "GRID=" + " ".join(f"'{v}'" if v != "-S" else v for v in grid),
                 "SWEEP_FLAGS=--name grid --timeout 900", timeout=1200)
    elapsed = time.monotonic() - started
    assert swept.returncode == 0, swept.stdout + swept.stderr + logs_tail(cluster)

    rows = artifact_rows(cluster.api, "sweep", sweep_run_id(swept.stdout + swept.stderr))
    assert sorted(row["experiment"] for row in rows) == ["grid-1", "grid-2", "grid-3", "grid-4"]
    assert {row["status"] for row in rows} == {"COMPLETED"}
    accuracies = [row["test.accuracy"] for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    assert {(row["train.learning_rate"], row["model.hidden_sizes"]) for row in rows} == {
        (0.0003, "[64]"), (0.0003, "[128]"), (0.003, "[64]"), (0.003, "[128]")}
    # Spread: both cpu workers ran points, so one of them ran at least two (a second run in its folder).
    cpu_workers = {worker_name(cluster.logs[("machine-a", "cpu")]), worker_name(cluster.logs[("machine-b", "cpu")])}
    assert {row["worker"] for row in rows} == cpu_workers, rows
    def clones_left() -> list[Path]:
        return [path for machine in ("machine-a", "machine-b")
                for path in (cluster.root / machine / "tmp").iterdir() if "prefect" in path.name]
    # Each run's clone went with its run: a run's state is final before its process has removed the clone.
    deadline = time.monotonic() + 60
    while clones_left() and time.monotonic() < deadline:
        time.sleep(1)
    assert not clones_left()

    # A third clone sees all four through git and DVC alone.
    third = cluster.root / "third"
    subprocess.run(["git", "clone", "-q", cluster.url, str(third)], check=True, capture_output=True)
    dvc_with(third, cluster.env, "exp", "pull", "origin")
    shown = json.loads(dvc(third, "exp", "show", "--json").stdout)
    experiments = {exp["name"]: exp["revs"][0] for row in shown for exp in (row.get("experiments") or [])}
    assert sorted(experiments) == ["grid-1", "grid-2", "grid-3", "grid-4"]
    for row in rows:
        revision = experiments[row["experiment"]]
        metrics = revision["data"]["metrics"]["metrics/metrics.json"]["data"]
        assert metrics["test"]["accuracy"] == row["test.accuracy"]
        # ... and its outputs are on the DVC remote (dvc exp push sent them).
        lock = yaml.safe_load(git(third, "show", f"{revision['rev']}:dvc.lock"))
        assert in_remote(cluster.remote, lock_md5(lock, MODEL)), row["experiment"]
    dvc(third, "exp", "branch", rows[0]["experiment"], "best-of-grid")  # the winner, ready for a pull request
    assert "learning_rate:" in git(third, "diff", "main", "best-of-grid", "--", "params.yaml")
    print(f"4-point sweep on two workers: {elapsed:.0f} s")


@pytest.mark.slow
def test_a_failed_point_is_reported_and_does_not_stop_the_others(cluster):
    # train.epochs=0 fails the validate stage; the other point is the champion's own params (nothing to train).
    swept = make(cluster.laptop, cluster.env, "sweep", "GRID=-S train.device=auto -S 'train.epochs=0,1'",
                 "SWEEP_FLAGS=--name mixed --timeout 600", timeout=900)
    assert swept.returncode != 0 and "sweep] Error 1" in swept.stderr, swept.stdout + swept.stderr + logs_tail(cluster)
    assert "1 of 2 points failed" in swept.stderr and "mixed-1" in swept.stderr
    rows = artifact_rows(cluster.api, "sweep", sweep_run_id(swept.stdout + swept.stderr))
    assert [(row["experiment"], row["status"]) for row in rows] == [("mixed-2", "COMPLETED"), ("mixed-1", "FAILED")]
    assert "train.epochs" in rows[1]["message"]
    assert "refs/exps/" in origin_refs(cluster.origin) and "mixed-2" in origin_refs(cluster.origin)
    assert "mixed-1" not in origin_refs(cluster.origin)


@pytest.mark.slow
def test_a_gpu_run_on_a_worker_without_cuda_fails_fast_and_changes_nothing(cluster):
    refs, objects = origin_refs(cluster.origin), remote_objects(cluster.remote)
    for deployment, parameters in (("retrain/retrain-gpu", None),
                                   ("sweep-point/sweep-point-gpu", {"overrides": ["train.epochs=1"], "name": "on-gpu"})):
        flow_run = run_deployment(cluster.api, api_call(cluster.api, "GET", f"/deployments/name/{deployment}")["id"],
                                  parameters)
        assert final_state(cluster.api, flow_run, 180) == "FAILED", logs_tail(cluster)
        run = api_call(cluster.api, "GET", f"/flow_runs/{flow_run}")
        assert "has no cuda device that torch can use" in run["state"]["message"], run["state"]
        assert run["total_run_time"] < 60, run["total_run_time"]  # the check is first: no data, no training
    assert origin_refs(cluster.origin) == refs and remote_objects(cluster.remote) == objects


@pytest.mark.slow
def test_the_recipe_verdicts_seeds_train_on_the_workers_with_each_sides_params(cluster):
    # A pull request's params change, judged over 3 seeds per side: with the cpu pool online, each side's
    # seeds go to the workers as one sweep; the workers train the deployed branch (main) with every recipe
    # key set, so the head's seeds really have the head's learning rate.
    laptop = cluster.laptop
    git(laptop, "checkout", "-q", "-b", "recipe-pr")
    write_params(laptop, **{"train.learning_rate": 0.003})
    commit_all(laptop, "head: a larger learning rate")
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.report", "--base", "main", "--seeds", "3", "--out",
                               "recipe-report"], cwd=laptop, env=cluster.env, capture_output=True, text=True,
                              timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:] + logs_tail(cluster)
        assert "recipe: base: 3 seed(s) to the cpu pool's workers as one sweep" in done.stderr
        assert "recipe: head: 3 seed(s) to the cpu pool's workers as one sweep" in done.stderr
        assert "dvc exp run --temp" not in done.stderr  # nothing trained on the laptop
        text = (laptop / "recipe-report" / "report.md").read_text()
        assert text.count("0 of 3 seed(s) found from an earlier run, 3 trained on the pool's workers") == 2, text
        assert "**Recipe verdict: " in text
        # The experiments the workers pushed: three per side, with that side's learning rate and its seed.
        refs = git(laptop, "for-each-ref", "--format=%(objectname)", "refs/exps/").split()
        trained = [yaml.safe_load(git(laptop, "show", f"{sha}:params.yaml"))["train"] for sha in refs]
        assert sorted((t["learning_rate"], t["seed"]) for t in trained if "seed" in t) == [
            (0.001, 1), (0.001, 2), (0.001, 3), (0.003, 1), (0.003, 2), (0.003, 3)]
    finally:
        git(laptop, "checkout", "-q", "main")


@pytest.mark.slow
def test_a_retrain_on_a_worker_pushes_its_branch_and_outputs(cluster):
    # main asks for two epochs; its committed model is the one-epoch champion: the retrain can beat it.
    write_params(cluster.laptop, **{"train.epochs": 2})
    commit_all(cluster.laptop, "train two epochs")
    git(cluster.laptop, "push", "-q", "origin", "main")
    retrain = api_call(cluster.api, "GET", "/deployments/name/retrain/retrain-cpu")
    flow_run = run_deployment(cluster.api, retrain["id"])
    assert final_state(cluster.api, flow_run, 600) == "COMPLETED", logs_tail(cluster)

    branches = git(cluster.origin, "branch", "--list", "retrain/*", "--format=%(refname:short)").split()
    assert len(branches) == 1, branches
    lock = yaml.safe_load(git(cluster.origin, "show", f"{branches[0]}:dvc.lock"))
    assert "epochs: 2" in git(cluster.origin, "show", f"{branches[0]}:params.yaml")
    assert lock_md5(lock, MODEL) != lock_md5(yaml.safe_load(git(cluster.laptop, "show", "HEAD:dvc.lock")), MODEL)
    assert in_remote(cluster.remote, lock_md5(lock, MODEL))
