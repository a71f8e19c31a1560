"""Shared fixtures: tiny data built in tmp_path, and temporary git copies of the project."""

from __future__ import annotations

import fcntl
import gc
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.run.stages import stage_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_server_address(monkeypatch):
    """Each test's `python -m pipeline` looks for `make server` at, and starts its background server on, a port of
    its own (pipeline/server/local.py), never a developer's 127.0.0.1:4200 or another test's."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CLASSIFIER_SERVER_URL", f"http://127.0.0.1:{port}")


@pytest.fixture
def default_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def tiny_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights up row block k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4 : 2 * label + 7, 4:24] = 250
    return images, labels.astype(np.int64)


def idx_bytes(array: np.ndarray) -> bytes:
    """The MNIST family's IDX format, gzip'd with a fixed mtime so the bytes are stable."""
    header = np.array([0x0800 | array.ndim, *array.shape], dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def subprocess_env(**extra: str) -> dict:
    """The environment the flows give DVC and git (pipeline.run.stages.stage_env), plus `extra`."""
    return stage_env(extra)


def run(args, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=project, check=check)


def git(project: Path, *args: str) -> str:
    return run(["git", *args], cwd=project).stdout


# dvc.yaml's `always_changed` stage: it lists the image folder on every command, so `dvc repro` always
# runs it and `dvc status` always names it ("always changed"); what follows it reruns only on a new listing.
ALWAYS_RUNS = ["snapshot"]


def assert_up_to_date(project: Path) -> None:
    """`dvc status` has nothing stale to report: only the always-run stage, as "always changed"."""
    status = json.loads(dvc(project, "status", "--json").stdout)
    assert status == {stage: ["always changed"] for stage in ALWAYS_RUNS}, status


def write_params(project: Path, **changes) -> None:
    """Set dotted keys, e.g. write_params(p, **{"train.epochs": 1})."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        section = params
        for key in parents:
            section = section[key]
        section[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_plots_template(destination: Path) -> None:
    """The offline `dvc plots` page .dvc/config points at: generated and git-ignored, so not in ls-files."""
    from classifier.plots_template import DEFAULT_PATH, write_template

    template = PROJECT_ROOT / DEFAULT_PATH
    if not template.is_file():
        write_template(template)
    (destination / DEFAULT_PATH).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, destination / DEFAULT_PATH)


def copy_project(destination: Path) -> Path:
    """A fresh git repo holding the project's files as git sees them (tracked and not ignored) (no venv, data, models or DVC cache)."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for relative in filter(None, tracked.decode().split("\0")):
        source = PROJECT_ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    copy_plots_template(destination)
    git(destination, "init", "-q", "-b", "main")
    git(destination, "config", "user.email", "tests@example.invalid")
    git(destination, "config", "user.name", "tests")
    return destination


def commit_all(project: Path, message: str) -> None:
    """Commit the whole tree; also when a run changed nothing (a copy's results are already committed)."""
    git(project, "add", "-A")
    git(project, "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git copy of the project set to train one epoch, committed, nothing run yet."""
    root = copy_project(tmp_path / "project")
    write_params(root, **{"train.epochs": 1, "save.min_accuracy": 0.5})
    commit_all(root, "one-epoch copy")
    return root


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per test run, in a folder that no test may change (tests copy it).

    Under pytest-xdist every worker is its own session: the first worker to ask builds it in the
    run's common temporary folder while holding a lock, and the others wait on the lock and reuse it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    common = tmp_path_factory.getbasetemp().parent  # pytest-of-<user>/pytest-<n>/, shared by this run's workers
    folder, done = common / name, common / f"{name}.done"
    with open(common / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a half-built one, from a worker that died building it
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _reproduce_one_epoch_copy(folder: Path) -> None:
    root = copy_project(folder / "project")
    write_params(root, **{"train.epochs": 1, "save.min_accuracy": 0.5})
    dvc(root, "repro")
    commit_all(root, "one-epoch baseline run")


@pytest.fixture(scope="session")
def reproduced_template(tmp_path_factory) -> Path:
    """One one-epoch copy of the project after a full `dvc repro`, committed; built once per test run
    (shared by pytest-xdist's workers). Read-only: copy it (`reproduced_project`) to change anything."""
    return built_once(tmp_path_factory, "template", _reproduce_one_epoch_copy) / "project"


@pytest.fixture
def reproduced_project(reproduced_template: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced template (workspace, git history and DVC cache)."""
    return Path(shutil.copytree(reproduced_template, tmp_path / "project", symlinks=True))


# Chromium's flags for pages that must not reach the network: no proxy that answers and no name that
# resolves, so a request that slipped past a page's route (a service worker, a prefetch) still reaches
# nothing; loopback addresses bypass the proxy, so a local server stays reachable.
OFFLINE_ARGS = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run"]


def find_chromium() -> str | None:
    return next(filter(None, (shutil.which(name) for name in ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium (the browser tests drive it with Playwright), installed with apt-get when missing."""
    found = find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        message = "chromium is not installed and apt-get cannot install it here (needs Debian and root): apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    found = find_chromium()
    if not found:
        pytest.fail("apt-get installed chromium but no chromium executable is on PATH")
    return found


# Parallel workers already fill the cores: torch's own threads would only fight over them, and OpenMP
# threads spin while they wait. One thread setting for the whole run (same-bytes claims hold per setting).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Files whose tests share a module-scoped fixture (a trained baseline, a loopback cluster, a browser):
# under pytest-xdist each goes to one worker as a whole, so that the fixture is built once.
SHARED_FIXTURE_FILES = {"tests/pipeline/test_report.py", "tests/pipeline/test_scale_out.py",
                        "tests/pipeline/test_plots_browser.py", "tests/unit/test_installability.py",
                        "tests/unit/test_save_and_predict.py", "tests/unit/test_verdict_coverage.py", "tests/gpu/test_cuda.py",
                        "tests/pipeline/test_team_server.py", "tests/pipeline/test_report_trusted.py"}
# The test files whose tests take minutes (servers, workers, heartbeats), longest first: handed out first.
LONGEST_FILES = ["test_report_trusted", "test_loop_chain", "test_crash_recovery", "test_team_server", "test_recipe_verdict", "test_scale_out", "test_report", "test_registry_chain", "test_retrain_on_new_data", "test_no_secrets_leak",
                 "test_prefect_server", "test_remote_s3", "test_experiments", "test_auth", "test_guarantees", "test_retrain",
                 "test_flows", "test_fresh_clone", "test_retrain_pull_request", "test_ui_links", "test_push_choice"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test`'s pytest-xdist schedule: each test to whichever worker is free, except that a file in
    SHARED_FIXTURE_FILES goes to one worker whole (xdist's loadgroup marks do not reach its scheduler
    under pytest 9.2, whose node ids ignore them), and the units in collection order, the largest first."""
    from xdist.scheduler import LoadScopeScheduling

    class Schedule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in SHARED_FIXTURE_FILES else nodeid

        def _reschedule(self, node) -> None:
            # xdist's own keeps up to three tests queued on a worker; one beside the running test (which
            # a worker needs, to run it) means none waits behind a test that takes minutes while others idle.
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

    return Schedule(config, log)


def pytest_collection_finish(session):
    """What collection imported (torch, Prefect, DVC, pandas: millions of objects) lives as long as the
    process: the garbage collector stops walking it on every collection of the session's tests."""
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist the tests are handed out in this order (the shared-fixture files first, by size):
    the files that take minutes go first, so that no worker starts one of them near the end. A test that
    shares a module-scoped fixture belongs in SHARED_FIXTURE_FILES, or each worker builds its own: warned."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        path = item.nodeid.split("::", 1)[0]
        if definitions and path not in SHARED_FIXTURE_FILES and any(
                defs and defs[-1].scope == "module" for defs in definitions.name2fixturedefs.values()):
            item.warn(pytest.PytestWarning(f"{path} has a module-scoped fixture that each worker builds again: "
                                           "add the file to SHARED_FIXTURE_FILES in tests/conftest.py"))
    rank = {name: place for place, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each file's tests keep their order
