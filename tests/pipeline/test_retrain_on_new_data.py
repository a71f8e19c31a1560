"""The issue's walkthrough on loopback: train on 3,000 exported MNIST-5k images, add the other 2,000,
announce them, and the triggered retrain trains on all 5,000, re-scores the champion on the new test
split and judges both on the same examples. Plus the gate's refusals: other classes, another seed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from classifier.data.export_folder import export
from pipeline.retrain.flow import RetrainError, retrain
from tests.conftest import commit_all, dvc, git, run, write_params
from tests.pipeline.prefect_server import MAKE, api_call, final_state, make_deploy, start_worker, stop, wait_for

pytestmark = pytest.mark.slow


def cached(project, md5: str) -> bytes:
    return (project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_bytes()


def lock_out(lock_text: str, path: str) -> str:
    import yaml

    for stage in yaml.safe_load(lock_text)["stages"].values():
        for out in stage.get("outs") or []:
            if out["path"] == path:
                return out["md5"]
    raise AssertionError(f"{path} not in dvc.lock")


def manifest_at(project, lock_text: str) -> pd.DataFrame:
    """data/prepared/manifest.csv of the revision whose dvc.lock is `lock_text`, from the DVC cache."""
    listing = json.loads(cached(project, lock_out(lock_text, "data/prepared")))
    entry = next(item for item in listing if item["relpath"] == "manifest.csv")
    return pd.read_csv(pd.io.common.BytesIO(cached(project, entry["md5"])), dtype=str, keep_default_na=False)


def champion_on_a_folder(project, tree, stop: int):
    export(tree, 0, stop)
    write_params(project, **{"data.dataset": "folder", "data.folder": str(tree)})
    dvc(project, "repro", "-q")
    commit_all(project, f"champion: {stop} exported MNIST-5k images")


def test_new_data_announced_retrains_rescoring_the_champion_on_the_new_test_split(project, server, tmp_path):
    api, env = server
    tree = tmp_path / "digits"
    champion_on_a_folder(project, tree, 3000)
    champion_lock = (project / "dvc.lock").read_text()
    champion_evaluation = json.loads((project / "metrics/evaluation.json").read_text())
    deployed = make_deploy(project, env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployment = api_call(api, "GET", "/deployments/name/retrain/retrain-cpu")
    triggers = api_call(api, "POST", "/automations/filter", json={})
    assert any(a["trigger"].get("expect") == ["classifier.data.updated"] for a in triggers), triggers

    def flow_logs() -> str:  # the newest first: a run's DVC output alone can pass the page size
        return "\n".join(row["message"] for row in api_call(api, "POST", "/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [flow_run]}}, "sort": "TIMESTAMP_DESC", "limit": 200}))

    def complete_logs() -> str | None:
        text = flow_logs()
        return text if "champion re-scored on the" in text else None

    worker = start_worker(project, env, tmp_path / "worker.log")
    try:
        export(tree, 3000)  # the remaining 2,000
        announced = subprocess.run([*MAKE, "data-updated"], cwd=project, env=env, capture_output=True, text=True,
                                   timeout=120)
        assert announced.returncode == 0, announced.stdout + announced.stderr

        def triggered_run():
            runs = api_call(api, "POST", "/flow_runs/filter",
                            json={"deployments": {"id": {"any_": [deployment["id"]]}}})
            return runs[0]["id"] if runs else None
        flow_run = wait_for(triggered_run, "the triggered retrain", 120)
        # It says what it started and where to watch it (issue 40.3).
        assert "make data-updated: it triggered retrain/retrain-cpu: flow run '" in announced.stdout, announced.stdout
        assert f"/runs/flow-run/{flow_run}" in announced.stdout and f"prefect flow-run logs {flow_run}" in announced.stdout
        state = final_state(api, flow_run, 600)
        assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        # Logs reach the server in batches, after the state that ends the run: wait for them before the
        # worker stops, since stopping it can end the run's process before its last batch is sent.
        logs = wait_for(complete_logs, "the retrain's last log lines", 120)
    finally:
        stop(worker)
    assert "re-scoring the champion at main on the new test split" in logs, logs[:4000]

    branch = git(project, "branch", "--list", "retrain/*", "--format=%(refname:short)").split()
    assert len(branch) == 1, "promoted: one retrain branch"
    new_lock = git(project, "show", f"{branch[0]}:dvc.lock")
    metrics = json.loads(git(project, "show", f"{branch[0]}:metrics/metrics.json"))
    evaluation = json.loads(git(project, "show", f"{branch[0]}:metrics/evaluation.json"))
    assert sum(metrics["samples"].values()) == 5000
    assert evaluation["test_fingerprint"] != champion_evaluation["test_fingerprint"]
    assert f"champion re-scored on the {evaluation['test_samples']} new test examples" in logs

    # No image changed split between the two runs.
    before, after = manifest_at(project, champion_lock), manifest_at(project, new_lock)
    both = before.merge(after, on="sha256", suffixes=("_before", "_after"))
    assert len(before) == 3000 and len(after) == 5000 and len(both) == 3000
    assert (both["split_before"] == both["split_after"]).all()

    # predict on exported PNGs gives the classes the evaluate stage gave them.
    predictions = pd.read_csv(pd.io.common.StringIO(git(project, "show", f"{branch[0]}:metrics/predictions.csv")),
                              dtype=str, keep_default_na=False)
    pngs = {}
    for path in tree.rglob("*.png"):
        pixels = np.array(Image.open(path).convert("L"), dtype=np.uint8)
        pngs[hashlib.sha256(pixels.tobytes()).hexdigest()[:16]] = path
    chosen = pd.concat([predictions[predictions["actual"] != predictions["predicted"]].head(10),
                        predictions.head(20)])
    model_dir = tmp_path / "published"
    model_dir.mkdir()
    for name in ("model.pth", "model.json"):
        (model_dir / name).write_bytes(cached(project, lock_out(new_lock, f"models/{name}")))
    paths = [str(pngs[row_id]) for row_id in chosen["id"]]
    printed = run([sys.executable, "-m", "classifier.training.predict", str(model_dir / "model.pth"), *paths], cwd=project)
    answers = [line.split("\t")[1] for line in printed.stdout.splitlines()]
    assert answers == list(chosen["predicted"])


def test_a_change_in_the_classes_is_not_comparable(project, tmp_path, prefect_harness):
    tree = tmp_path / "digits"
    champion_on_a_folder(project, tree, 600)
    for digit in ("8", "9"):  # two classes withdrawn: the question itself changed
        for path in (tree / digit).iterdir():
            path.unlink()
        (tree / digit).rmdir()
    with pytest.raises(RetrainError, match=r"nothing promoted: not comparable: .*the set of classes changed "
                                           r"\(removed \['8', '9'\]\)"):
        retrain(repo=str(project), base="main", workspace_root=str(tmp_path / "ws"))


def test_a_new_seed_on_new_data_is_not_comparable(project, tmp_path, prefect_harness):
    tree = tmp_path / "digits"
    champion_on_a_folder(project, tree, 600)
    export(tree, 600, 800)
    write_params(project, seed=7)
    commit_all(project, "another seed")
    with pytest.raises(RetrainError, match=r"nothing promoted: not comparable: .*seed \(42 -> 7\) changed, which "
                                           r"redraws the split"):
        retrain(repo=str(project), base="main", workspace_root=str(tmp_path / "ws"))
