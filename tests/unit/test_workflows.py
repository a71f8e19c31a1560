"""The GitHub Actions workflows and Dependabot's config pass zizmor and actionlint, offline.

zizmor (default persona) may report informational and low findings, nothing above: an action not
pinned to a commit SHA or a `${{ }}` expanded inside `run:` is high. actionlint must report no error.
Both are pinned in the test extra and installed beside this interpreter. actionlint's shellcheck and
pyflakes passes are off: they run only where those tools happen to be installed, so the result would
depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GITHUB_FOLDER = PROJECT_ROOT / ".github"
ALLOWED_SEVERITIES = {"Informational", "Low"}


def tool(name: str) -> str:
    """A console script of the test extra, from this interpreter's environment."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}: install the test extra (make install)"
    return str(path)


def describe(finding: dict) -> str:
    """One line per finding: where, how bad, what, and the code it points at."""
    location = next((place for place in finding["locations"] if place["symbolic"]["kind"] == "Primary"), finding["locations"][0])
    path = location["symbolic"]["key"]["Local"]["verbatim_path"]
    row = location["concrete"]["location"]["start_point"]["row"] + 1
    severity = finding["determinations"]["severity"]
    annotation = location["symbolic"]["annotation"]
    feature = location["concrete"]["feature"].splitlines()[0].strip()
    return f"{path}:{row}: {severity} {finding['ident']}: {finding['desc']} ({annotation}): {feature}"


def test_zizmor_finds_nothing_above_low():
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--format", "json-v1", "--no-progress", str(GITHUB_FOLDER.relative_to(PROJECT_ROOT))],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # 0: no finding; 11-14: findings, by the highest severity; anything else: zizmor itself failed.
    assert result.returncode == 0 or 11 <= result.returncode <= 14, f"zizmor failed ({result.returncode}):\n{result.stderr}"
    findings = json.loads(result.stdout)
    too_severe = [describe(finding) for finding in findings if finding["determinations"]["severity"] not in ALLOWED_SEVERITIES]
    assert not too_severe, "zizmor findings above low:\n" + "\n".join(too_severe)


def test_actionlint_finds_no_error():
    workflows = sorted([*GITHUB_FOLDER.glob("workflows/*.yml"), *GITHUB_FOLDER.glob("workflows/*.yaml")])
    assert workflows, f"no workflow under {GITHUB_FOLDER}"
    result = subprocess.run(
        [tool("actionlint"), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", *(str(path.relative_to(PROJECT_ROOT)) for path in workflows)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"actionlint ({result.returncode}):\n{result.stdout}{result.stderr}"
