"""A promoted retrain's pull request, without a flow run: its title from the two dvc.lock files, its body,
why none can be opened, and a forge's refusal as a warning that names the status and the forge's words
(tests/forge_server.py on 127.0.0.1), the token in no line."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from types import SimpleNamespace

from pipeline.forge.client import Forge
from pipeline.forge.address import Project
from pipeline.retrain.pull_request import LABEL, body, changed_inputs, submit, title, why_not
from tests.forge_server import FakeForge, ForgeScript, fake_forge

TOKEN = f"ghp_test{secrets.token_hex(12)}"
BRANCH = "retrain/20261204T030000Z"
AT = f" at https://forge.test/octo/models/compare/main...{BRANCH}?expand=1"


def lock(epochs: int = 1, images: str = "aaa.dir", train_py: str = "t1", params_file: str = "p1") -> dict:
    """A dvc.lock shaped like the pipeline's: a source folder, a source file, params, and an output in between."""
    return {"schema": "2.0", "stages": {
        "validate": {"deps": [{"path": "params.yaml", "md5": params_file}], "outs": [{"path": "data/params.valid"}]},
        "download": {"deps": [{"path": "images", "md5": images, "nfiles": 1},
                              {"path": "data/params.valid", "md5": "v"}],
                     "params": {"params.yaml": {"data": {"folder": "images"}}},
                     "outs": [{"path": "data/raw", "md5": f"raw-{images}"}]},
        "train": {"deps": [{"path": "data/raw", "md5": f"raw-{images}"},
                           {"path": "src/classifier/training/train.py", "md5": train_py}],
                  "params": {"params.yaml": {"train": {"epochs": epochs, "device": "auto"}}},
                  "outs": [{"path": "models/candidate.pth", "md5": f"m-{epochs}-{images}-{train_py}"}]}}}


def test_what_changed_is_read_from_the_inputs_not_the_outputs():
    nothing = {"data": [], "params": [], "code": []}
    assert changed_inputs(lock(), lock()) == nothing
    assert changed_inputs(lock(), lock(epochs=3, params_file="p2")) == nothing | {"params": ["train.epochs"]}
    assert changed_inputs(lock(), lock(images="bbb.dir")) == nothing | {"data": ["images"]}  # not data/raw
    assert changed_inputs(lock(), lock(train_py="t2")) == nothing | {"code": ["train.py"]}
    # An edit no stage's params hold (compare.*, say) shows only in params.yaml's hash.
    assert changed_inputs(lock(), lock(params_file="p2"))["params"] == ["params.yaml"]
    assert changed_inputs(None, lock())["code"] == ["train.py"]  # a champion without dvc.lock: all is new


def test_the_title_says_what_changed_and_the_headline_metric():
    decision = SimpleNamespace(champion={"accuracy": 0.90123}, challenger={"accuracy": 0.91344})
    changes = {"data": ["images"], "params": ["train.epochs", "train.device", "seed", "model.hidden"], "code": []}
    assert title(changes, decision) == ("Retrain: data (images), params (train.epochs, train.device, seed +1 more); "
                                        "accuracy 0.9012 -> 0.9134")
    assert title({"data": [], "params": [], "code": []}, decision).startswith("Retrain: a rerun; accuracy")


def test_the_body_is_the_judgement_the_run_and_the_branch():
    text = body("# Retrain against the champion at `main`\n", BRANCH, "http://prefect.test/runs/flow-run/1")
    assert text.startswith("# Retrain against the champion at `main`\n")
    assert "[this `retrain` flow run](http://prefect.test/runs/flow-run/1)" in text and f"`{BRANCH}`" in text
    assert "flow run](" not in body("report\n", BRANCH, None)


def test_why_no_pull_request_can_be_opened():
    project = Project("https://github.com", "octo", "models")
    assert why_not(project, Path("/home/me/project"), TOKEN) == "the branch is in /home/me/project only (push it first)"
    assert "CLASSIFIER_FORGE_REPO and CLASSIFIER_FORGE_API" in why_not(None, None, TOKEN)
    assert "CLASSIFIER_FORGE_TOKEN, or the Prefect Secret block classifier-forge-token" in why_not(project, None, None)
    assert why_not(project, None, TOKEN) is None


def forge_for(running: FakeForge) -> Forge:
    return Forge(running.api, Project("https://forge.test", "octo", "models"), TOKEN, timeout=5)


def test_a_refusal_is_a_warning_with_the_status_and_how_to_open_it(caplog):
    script = ForgeScript(token=TOKEN)
    script.failures["POST /repos/octo/models/pulls"] = (403, {"message": "Resource not accessible by integration"})
    with fake_forge(script) as running, caplog.at_level(logging.INFO):
        note = submit(forge_for(running), "main", BRANCH, "title", "body", AT, logging.getLogger("retrain"))
    assert note.url is None
    assert note.line == ("no pull request (POST /repos/octo/models/pulls: 403 Forbidden: Resource not accessible by "
                         f"integration); open one{AT}")
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage() == note.line and TOKEN not in caplog.text


def test_an_opened_pull_request_is_labelled_and_a_missing_label_only_warns(caplog):
    script = ForgeScript(token=TOKEN)
    with fake_forge(script) as running, caplog.at_level(logging.INFO):
        opened = submit(forge_for(running), "main", BRANCH, "title", "body", AT, logging.getLogger("retrain"))
        script.failures["POST /repos/octo/models/issues/1/labels"] = (403, {"message": "Must have admin rights"})
        updated = submit(forge_for(running), "main", BRANCH, "title 2", "body 2", AT, logging.getLogger("retrain"))
    assert opened.url == updated.url == "https://forge.test/octo/models/pull/1" and len(script.pulls) == 1
    assert opened.line.endswith("(opened)") and updated.line.endswith("(updated)")
    assert script.pulls[0]["labels"] == [{"name": LABEL}] and script.pulls[0]["title"] == "title 2"
    assert "is not labelled 'retrain': POST /repos/octo/models/issues/1/labels: 403" in caplog.text
