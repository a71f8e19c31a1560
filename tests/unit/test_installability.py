"""The project installs from PyPI, wheels only, on every Python it supports, without running them.

For each version, pip resolves `.[test]` as a user's `make install` would (`--dry-run`: nothing is
installed) for that CPython on manylinux x86_64 with `--only-binary=:all:`, so a dependency with no
wheel for that version fails the test by name. It needs PyPI: the three resolutions run at once,
about 1.5 minutes on 2 cores and 3 GB of transient downloads each (the registry here advertises no
PEP 658 metadata, so pip fetches whole wheels to read their dependencies)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")

# manylinux_2_28 is what torch's wheels need; pip does not expand a --platform to the older glibc
# tags a manylinux_2_28 system also runs (matplotlib ships manylinux_2_17), so name them all.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]

# Published only as an sdist, so `--only-binary=:all:` cannot take it, and pip refuses any sdist once
# --python-version is set. It is pure Python: built here into a py3-none-any wheel (checked), which
# installs on every version. hydra-core (a dvc dependency) pins antlr4-python3-runtime==4.9.*.
PURE_PYTHON_SDISTS = ("antlr4-python3-runtime==4.9.3",)

# pip evaluates environment markers (`python_version < "3.13"`) with the interpreter it runs on,
# even with --python-version: resolving for 3.13 from 3.11 would follow 3.11's branches. This runs
# pip with the target's marker environment, which the closure check below verifies.
PIP_FOR_TARGET = """
import json, sys
from pip._vendor.packaging import markers
target_markers = json.loads(sys.argv.pop(1))
host_environment = markers.default_environment
markers.default_environment = lambda: {**host_environment(), **target_markers}
from pip._internal.cli.main import main
sys.exit(main())
"""


def target_markers(python_version: str) -> dict:
    """The marker environment of CPython `python_version`.0 on Linux x86_64, the oldest patch release."""
    full_version = python_version + ".0"
    return dict(
        python_version=python_version, python_full_version=full_version, implementation_name="cpython",
        implementation_version=full_version, platform_python_implementation="CPython", os_name="posix",
        platform_system="Linux", sys_platform="linux", platform_machine="x86_64",
    )  # fmt: skip


# What a user gets from PyPI, not this machine's pip setup: its config files add local wheel
# folders and indexes and cap torch, so no config file and only the network settings from the
# environment.
KEPT_PIP_VARIABLES = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES", "PIP_INDEX_URL", "PIP_TRUSTED_HOST"}


def pip_environment() -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_") or key in KEPT_PIP_VARIABLES}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def pip_command(*args: str, target: str | None = None) -> list[str]:
    command = [sys.executable, "-c", PIP_FOR_TARGET, json.dumps(target_markers(target))] if target else [sys.executable, "-m", "pip"]
    return [*command, *args, "--no-cache-dir"]


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(pip_command(*args), cwd=cwd, env=pip_environment(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The project's metadata (pyproject.toml, README.md) and wheels of the pure-Python sdists."""
    index_url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/pip/"
    try:
        urllib.request.urlopen(index_url, timeout=20).close()
    except OSError as error:
        pytest.skip(f"the package index is unreachable ({index_url}: {error})")
    root = tmp_path_factory.mktemp("installability")
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, project / name)
    wheels = root / "wheels"
    built = pip("wheel", "--no-deps", "--no-binary=:all:", "--wheel-dir", str(wheels), *PURE_PYTHON_SDISTS, cwd=root)
    assert built.returncode == 0, f"building {PURE_PYTHON_SDISTS} failed:\n{built.stdout}\n{built.stderr}"
    for wheel in wheels.glob("*.whl"):
        assert wheel.name.endswith("-py3-none-any.whl"), f"{wheel.name} is not pure Python: it would need a compiler on a user's machine"
    return root


def missing_wheels(pip_output: str) -> list[str]:
    """The packages pip found no installable file for, from its error messages."""
    names = re.findall(r"No matching distribution found for ([A-Za-z0-9._-]+)", pip_output)
    block = re.search(r"no matching distributions available for your environment:\n((?:\s+\S+\n?)+)", pip_output)
    if block:
        names += block.group(1).split()
    return sorted({canonicalize_name(name) for name in names})


def marker_closure(report: dict, python_version: str) -> set[str]:
    """The names a correct resolution for `python_version` must hold: the root's dependency tree, markers evaluated for that version."""
    metadata = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    environment = {**default_environment(), **target_markers(python_version)}
    root = next(item for item in report["install"] if item.get("requested") and item["download_info"]["url"].startswith("file:"))
    pending = [(canonicalize_name(root["metadata"]["name"]), frozenset(root.get("requested_extras", [])))]
    seen: dict[str, set[str]] = {}
    while pending:
        name, extras = pending.pop()
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        for line in metadata.get(name, {}).get("requires_dist", []) or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in [""] + sorted(extras)):
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return set(seen)


@pytest.fixture(scope="module")
def resolutions(sources: Path):
    """One `pip install --dry-run` per supported version, all started at once (each waits on the network)."""
    processes = {}
    for python_version in SUPPORTED_PYTHONS:
        command = pip_command(
            "install", "--dry-run", "--ignore-installed", "--quiet", "--report", f"report-{python_version}.json",
            "--only-binary=:all:", "--python-version", python_version, *[f"--platform={platform}" for platform in PLATFORMS],
            "--find-links", str(sources / "wheels"), "./project[test]",
            target=python_version,
        )  # fmt: skip
        with open(sources / f"pip-{python_version}.log", "w") as log:
            processes[python_version] = subprocess.Popen(command, cwd=sources, env=pip_environment(), stdout=log, stderr=subprocess.STDOUT)
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("python_version", SUPPORTED_PYTHONS)
def test_every_dependency_has_a_wheel_for_each_supported_python(sources: Path, resolutions: dict, python_version: str):
    requires_python = SpecifierSet(tomllib.loads((sources / "project" / "pyproject.toml").read_text())["project"]["requires-python"])
    assert python_version + ".0" in requires_python, f"pyproject.toml's requires-python {requires_python} excludes Python {python_version}"

    returncode = resolutions[python_version].wait(timeout=900)
    output = (sources / f"pip-{python_version}.log").read_text()
    missing = missing_wheels(output)
    assert not missing, f"Python {python_version}: no wheel for {', '.join(missing)}\n{output[-3000:]}"
    assert returncode == 0, f"Python {python_version}: pip could not resolve the dependencies:\n{output[-3000:]}"

    report = json.loads((sources / f"report-{python_version}.json").read_text())
    resolved = {canonicalize_name(item["metadata"]["name"]) for item in report["install"]}
    expected = marker_closure(report, python_version)
    assert resolved == expected, (
        f"Python {python_version}: pip resolved with another interpreter's markers: "
        f"extra {sorted(resolved - expected)}, missing {sorted(expected - resolved)}"
    )
    sdists = [item["metadata"]["name"] for item in report["install"] if not item["download_info"]["url"].endswith(".whl") and not item.get("requested")]
    assert not sdists, f"Python {python_version}: resolved to sources, not wheels: {sdists}"
    torch = next(item for item in report["install"] if item["metadata"]["name"] == "torch")
    assert f"-cp{python_version.replace('.', '')}-" in torch["download_info"]["url"], torch["download_info"]["url"]
