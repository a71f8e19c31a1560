"""The project installs from PyPI, wheels only, on every Python it supports, without running them.

For each version, uv resolves `.[test]` from PyPI for that CPython (its oldest patch release, x.y.0)
on manylinux_2_28 x86_64 with `--only-binary :all:` (the same tags pip uses there, the older
manylinux ones included), so a dependency with no wheel for that version fails the test by name.
uv reads each wheel's dependencies from its metadata (PEP 658 where the index advertises it, else an
HTTP range request for the wheel's METADATA) instead of downloading it: the three resolutions take
seconds and a few tens of MB where pip's `--dry-run` fetched about 3 GB of whole wheels per version.
uv evaluates environment markers for the target, not for the interpreter it runs on; the lock file it
writes (pylock.toml) is checked independently here: every entry's marker holds for the target, every
entry is a wheel whose tags that CPython on manylinux x86_64 installs, and every requirement of
pyproject.toml (the test extra included) is there at a version it allows. It needs PyPI, and uv, which
the test extra pins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging import tags
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from uv import find_uv_bin

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
PYTHON_PLATFORM = "x86_64-manylinux_2_28"  # what torch's wheels need; uv adds the older manylinux tags

# The platform tags a manylinux_2_28 x86_64 system installs, for checking the wheels uv chose.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]

# Published only as an sdist, so `--only-binary :all:` cannot take it. It is pure Python: built here
# with pip into a py3-none-any wheel (checked), which installs on every version and which the
# resolutions find beside PyPI. hydra-core (a dvc dependency) pins antlr4-python3-runtime==4.9.*.
PURE_PYTHON_SDISTS = ("antlr4-python3-runtime==4.9.3",)


def target_markers(python_version: str) -> dict:
    """The marker environment of CPython `python_version`.0 on Linux x86_64, the oldest patch release."""
    full_version = python_version + ".0"
    return dict(
        python_version=python_version, python_full_version=full_version, implementation_name="cpython",
        implementation_version=full_version, platform_python_implementation="CPython", os_name="posix",
        platform_system="Linux", sys_platform="linux", platform_machine="x86_64",
    )  # fmt: skip


def target_tags(python_version: str) -> set[tags.Tag]:
    """The wheel tags CPython `python_version` installs on manylinux_2_28 x86_64."""
    version = tuple(int(part) for part in python_version.split("."))
    interpreter = "cp" + python_version.replace(".", "")
    return {
        *tags.cpython_tags(python_version=version, platforms=PLATFORMS),
        *tags.compatible_tags(python_version=version, interpreter=interpreter, platforms=PLATFORMS),
    }


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")


# What a user gets from PyPI, not this machine's setup: pip's config files here add local wheel folders
# and indexes and cap torch, and UV_* variables could add indexes, constraints or find-links; so no
# config file, and only the network settings from the environment.
KEPT_PIP_VARIABLES = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES", "PIP_INDEX_URL", "PIP_TRUSTED_HOST"}
KEPT_UV_VARIABLES = {"UV_HTTP_TIMEOUT", "UV_HTTP_RETRIES", "UV_NATIVE_TLS", "UV_CONCURRENT_DOWNLOADS"}


def clean_environment() -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("PIP_") or key.startswith("UV_")) or key in KEPT_PIP_VARIABLES | KEPT_UV_VARIABLES
    }
    if "PIP_CERT" in env and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = env["PIP_CERT"]  # the bundle pip trusts here, for uv too
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", UV_NO_PROGRESS="1")
    return env


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The project's metadata (pyproject.toml, README.md), wheels of the pure-Python sdists, and uv's cache for the session."""
    try:
        urllib.request.urlopen(index_url().rstrip("/") + "/pip/", timeout=20).close()
    except OSError as error:
        pytest.skip(f"the package index is unreachable ({index_url()}: {error})")
    root = tmp_path_factory.mktemp("installability")
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, project / name)
    wheels = root / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary=:all:", "--no-cache-dir", "--wheel-dir", str(wheels), *PURE_PYTHON_SDISTS],
        cwd=root, env=clean_environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, f"building {PURE_PYTHON_SDISTS} failed:\n{built.stdout}\n{built.stderr}"
    assert len(list(wheels.glob("*.whl"))) == len(PURE_PYTHON_SDISTS), sorted(wheels.iterdir())
    for wheel in wheels.glob("*.whl"):
        assert wheel.name.endswith("-py3-none-any.whl"), f"{wheel.name} is not pure Python: it would need a compiler on a user's machine"
    return root


def resolve(sources: Path, python_version: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`uv pip compile` of `.[test]` for `python_version`, written as pylock.toml; the versions share one cache."""
    lock = sources / f"pylock.py{python_version.replace('.', '')}.toml"
    command = [
        find_uv_bin(), "pip", "compile", "project/pyproject.toml", "--extra", "test",
        "--python-version", python_version, "--python-platform", PYTHON_PLATFORM, "--only-binary", ":all:",
        "--index-url", index_url(), "--find-links", str(sources / "wheels"),
        "--python", sys.executable, "--no-python-downloads",  # an interpreter to run is not needed: nothing is built
        "--no-config", "--cache-dir", str(sources / "uv-cache"), "--format", "pylock.toml", "--output-file", str(lock),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=sources, env=clean_environment(), capture_output=True, text=True, timeout=600)
    return result, lock


@pytest.mark.slow
@pytest.mark.parametrize("python_version", SUPPORTED_PYTHONS)
def test_every_dependency_has_a_wheel_for_each_supported_python(sources: Path, python_version: str):
    pyproject = tomllib.loads((sources / "project" / "pyproject.toml").read_text())["project"]
    requires_python = SpecifierSet(pyproject["requires-python"])
    assert python_version + ".0" in requires_python, f"pyproject.toml's requires-python {requires_python} excludes Python {python_version}"

    result, lock_path = resolve(sources, python_version)
    assert result.returncode == 0, f"Python {python_version}: no wheels-only resolution of .[test]:\n{result.stderr[-3000:]}"
    lock = tomllib.loads(lock_path.read_text())
    packages = {canonicalize_name(package["name"]): package for package in lock["packages"]}
    environment = {**default_environment(), **target_markers(python_version)}

    # Every requirement of pyproject.toml, the test extra's included, at a version it allows.
    requirements = [Requirement(line) for line in pyproject["dependencies"] + pyproject["optional-dependencies"]["test"]]
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": "test"}):
            continue
        package = packages.get(canonicalize_name(requirement.name))
        assert package is not None, f"Python {python_version}: {requirement} is missing from the resolution"
        assert requirement.specifier.contains(package["version"], prereleases=True), f"Python {python_version}: {requirement} resolved to {package['version']}"

    # The resolution is for the target, not the interpreter uv runs on.
    wrong_markers = sorted(name for name, package in packages.items() if "marker" in package and not Marker(package["marker"]).evaluate(environment))
    assert not wrong_markers, f"Python {python_version}: resolved packages whose markers exclude it: {wrong_markers}"

    # Wheels only, each one that this CPython installs on manylinux x86_64.
    sdists = sorted(name for name, package in packages.items() if "sdist" in package or "directory" in package or "vcs" in package or "archive" in package)
    assert not sdists, f"Python {python_version}: resolved to sources, not wheels: {sdists}"
    supported = target_tags(python_version)
    for name, package in packages.items():
        filenames = [wheel["url"].rsplit("/", 1)[-1] for wheel in package.get("wheels", [])]
        installable = bool(filenames) and all(parse_wheel_filename(filename)[3] & supported for filename in filenames)
        assert installable, f"Python {python_version}: {name} resolved to wheels this Python does not install: {filenames}"
    torch_wheels = [wheel["url"] for wheel in packages["torch"]["wheels"]]
    assert all(f"-cp{python_version.replace('.', '')}-" in url for url in torch_wheels), torch_wheels
