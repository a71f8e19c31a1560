"""The champion's name: the model registry is dvc.yaml's `artifacts:` and GTO's git tags, nothing of ours.

- `classifier@v0.2.0` (an annotated tag, GTO's registration) names a version of the `classifier` artifact:
  the commit whose dvc.lock records that models/model.pth. Its message says what the model is and why it
  was promoted: the model's md5, the data it was trained and tested on, the params changed since the
  version before, and the verdict of the retrain that promoted it (tag_message).
- `classifier#prod#N` (GTO's stage assignment) puts a version in `prod`: the champion is the version GTO
  shows in `prod` (`gto show classifier#prod`, the latest assignment by the tags' time), which the retrain
  gate judges against. A rollback is one more assignment: `gto assign classifier --version v0.1.0 --stage
  prod --force` (`--force`: that version held prod before).

`register` is what `make register` and .github/workflows/register.yml run after a merge: when the model at
`rev` (dvc.lock's md5) differs from the latest registered version's, it registers the next version (v0.1.0,
then minor bumps) and assigns it `prod`; otherwise nothing (idempotent). Everything goes through GTO's
Python API (what its CLI calls); git only to read commits and push the tags GTO made.

Needs git, gto and PyYAML only (no DVC, Prefect or torch): the workflow installs just those.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.project import EVALUATION_PATH, LOCK_PATH, METRICS_PATH, MODEL_CARD_PATH, MODEL_PATH, PARAMS_PATH, flatten
from pipeline.run.stages import lock_md5, stage_env

ARTIFACT = "classifier"  # dvc.yaml's `artifacts:` name
STAGE = "prod"
FIRST_VERSION = "v0.1.0"
# A retrain's commit carries this line (pipeline.retrain.flow.promote): the verdict that promoted its model.
VERDICT_PREFIX = "Verdict: "


class RegistryError(Exception):
    """GTO or git failed, or the revision has no model in its dvc.lock."""


@dataclass(frozen=True)
class Version:
    version: str  # "v0.2.0"
    tag: str  # the registration tag, "classifier@v0.2.0"
    commit: str  # the commit it names

    def describe(self) -> str:
        return f"{ARTIFACT} {self.version} ({self.tag}, commit {self.commit[:7]})"


def _run(args: Sequence[str], repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=repo, env=stage_env(), capture_output=True, text=True)


def git(repo: Path, *args: str) -> str:
    result = _run(["git", *args], repo)
    if result.returncode != 0:
        raise RegistryError(f"git {' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _gto():
    """GTO's Python API (`gto` CLI's own calls), imported on first use: a second or so."""
    import gto.api
    import gto.exceptions

    return gto.api, gto.exceptions.GTOException


def _version(repo: Path, selector: str) -> Version | None:
    """The version `gto show SELECTOR` shows (`classifier#prod`: the latest assignment by the tags' time;
    `classifier@latest`: the highest version); None when there is none."""
    api, failed = _gto()
    try:
        shown = api.show(str(repo), selector)
    except failed as error:
        if type(error).__name__ == "ArtifactNotFound":  # nothing registered yet
            return None
        raise RegistryError(f"gto show {selector}: {error}") from None
    if not shown:
        return None
    return Version(shown[0]["version"], shown[0]["ref"], shown[0]["commit_hexsha"])


def champion(repo: Path) -> Version | None:
    """The version in `prod` (`gto show classifier#prod`): what a retrain must beat; None before the first."""
    return _version(repo, f"{ARTIFACT}#{STAGE}")


def latest(repo: Path) -> Version | None:
    """The highest registered version (`gto show classifier@latest`); None before the first."""
    return _version(repo, f"{ARTIFACT}@latest")


def champion_note(repo: Path) -> list[str]:
    """For the pull-request report: one line naming the version in prod, when one is registered; never raises."""
    try:
        found = champion(repo)
    except Exception:  # a note: whatever GTO or git make of this checkout, the report goes on without it
        return []
    return [f"The registry's champion ({ARTIFACT}#{STAGE}, what a retrain is judged against): {found.describe()}."
            ] if found else []


# ---------------------------------------------------------------- what a version's tag says (pure)


def lock_params(lock: Mapping | None) -> dict[str, object]:
    """Every stage's params as dvc.lock resolved them, by dotted key (a file other than params.yaml prefixed)."""
    flat: dict[str, object] = {}
    for stage in ((lock or {}).get("stages") or {}).values():
        for file, values in (stage.get("params") or {}).items():
            flat.update(flatten("" if file == PARAMS_PATH else f"{file}:", values or {}))
    return flat


def params_change(before: Mapping | None, after: Mapping | None) -> list[str]:
    """`train.epochs 1 -> 3` for each param whose resolved value differs between two dvc.lock files."""
    old, new = lock_params(before), lock_params(after)
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)]


def _out_md5(lock: Mapping | None, path: str) -> str:
    return lock_md5(lock, path) or "not recorded"


def tag_message(version: str, commit: str, lock: Mapping, evaluation: Mapping | None, metrics: Mapping | None,
                previous: Version | None, previous_lock: Mapping | None, verdict: str | None) -> str:
    """The registration tag's message: what the model is, what it learnt from, what changed and who judged it."""
    test = (metrics or {}).get("test") or {}
    scores = ", ".join(f"{name} {value}" for name, value in test.items()) or "none committed"
    evaluation = evaluation or {}
    lines = [f"{ARTIFACT} {version}: {MODEL_PATH} md5 {lock_md5(lock, MODEL_PATH)}",
             f"commit: {commit}",
             f"card: {MODEL_CARD_PATH} md5 {_out_md5(lock, MODEL_CARD_PATH)}",
             f"data: dataset {evaluation.get('dataset', 'unknown')}; data/snapshot.csv md5 "
             f"{_out_md5(lock, 'data/snapshot.csv')}; data/raw md5 {_out_md5(lock, 'data/raw')}; "
             f"data/prepared md5 {_out_md5(lock, 'data/prepared')}",
             f"test split: {evaluation.get('test_fingerprint', 'unknown')} ({evaluation.get('test_samples', '?')} images)",
             f"test metrics ({METRICS_PATH}): {scores}"]
    if previous is None:
        lines.append("params: the first registered version")
    else:
        changed = params_change(previous_lock, lock)
        lines.append(f"params changed since {previous.version}: {'; '.join(changed) if changed else 'none'}")
    lines.append(f"verdict: {verdict}" if verdict else
                 "verdict: no retrain's verdict in the commits since the last version (a model changed in a pull "
                 "request of its own: its pr-report comment holds the verdict)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- reading a revision


def _read(repo: Path, rev: str, path: str) -> str | None:
    result = _run(["git", "show", f"{rev}:{path}"], repo)
    return result.stdout if result.returncode == 0 else None


def _json(text: str | None) -> dict | None:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def lock_at(repo: Path, rev: str) -> dict | None:
    text = _read(repo, rev, LOCK_PATH)
    return yaml.safe_load(text) if text else None


def verdict_since(repo: Path, previous: Version | None, commit: str) -> str | None:
    """The newest retrain verdict in the commits after the previous version up to `commit`: a merged retrain's
    branch (fast-forward, merge or squash, whose message keeps the commits') carries its `Verdict:` line."""
    span = f"{previous.commit}..{commit}" if previous else commit
    for line in git(repo, "log", "--format=%B", span).splitlines():
        if line.startswith(VERDICT_PREFIX):
            return line.removeprefix(VERDICT_PREFIX).strip()
    return None


# ---------------------------------------------------------------- registering


def next_version(previous: Version | None) -> str:
    if previous is None:
        return FIRST_VERSION
    major, minor, _ = previous.version.removeprefix("v").split(".")[:3]
    return f"v{major}.{int(minor) + 1}.0"


def ever_assigned(repo: Path, version: Version) -> bool:
    """Whether any stage was ever assigned to `version` (`gto history classifier`)."""
    api, failed = _gto()
    try:
        events = api.history(str(repo), ARTIFACT)
    except failed as error:
        raise RegistryError(f"gto history {ARTIFACT}: {error}") from None
    return any(event["event"] == "assignment" and event["version"] == version.version for event in events)


def _gto_write(action: str, repo: Path, **arguments) -> None:
    api, failed = _gto()
    try:
        getattr(api, action)(str(repo), ARTIFACT, **arguments)
    except failed as error:
        raise RegistryError(f"gto {action} {ARTIFACT}: {error}") from None


def register(repo: Path, rev: str = "HEAD") -> tuple[list[str], str]:
    """Register `rev`'s model as the next version and assign it prod, when its md5 differs from the latest
    version's. Returns the tags created (to push) and one line saying what was done."""
    commit = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    lock = lock_at(repo, commit)
    md5 = lock_md5(lock, MODEL_PATH)
    if md5 is None:
        raise RegistryError(f"{LOCK_PATH} at {rev} ({commit[:7]}) records no {MODEL_PATH}: nothing to register")
    previous = latest(repo)
    previous_lock = lock_at(repo, previous.commit) if previous else None
    if previous is not None and lock_md5(previous_lock, MODEL_PATH) == md5:
        if ever_assigned(repo, previous):
            return [], f"no new version: {MODEL_PATH} at {commit[:7]} (md5 {md5}) is {previous.describe()}'s"
        # A run that registered and then died before assigning: finish its work.
        stage_tag = _assign(repo, previous.version, f"{ARTIFACT} {previous.version} to {STAGE}: md5 {md5}")
        return [stage_tag], f"assigned {STAGE} to {previous.describe()}, registered earlier without it"
    version = next_version(previous)
    message = tag_message(version, commit, lock, _json(_read(repo, commit, EVALUATION_PATH)),
                          _json(_read(repo, commit, METRICS_PATH)), previous, previous_lock,
                          verdict_since(repo, previous, commit))
    _gto_write("register", repo, ref=commit, version=version, message=message)
    stage_tag = _assign(repo, version, f"{ARTIFACT} {version} to {STAGE}: {MODEL_PATH} md5 {md5}")
    return [f"{ARTIFACT}@{version}", stage_tag], f"registered {ARTIFACT} {version} (md5 {md5}) at {commit[:7]} and assigned {STAGE}"


def _assign(repo: Path, version: str, message: str) -> str:
    _wait_past_the_last_assignment(repo)
    before = set(git(repo, "tag", "--list", f"{ARTIFACT}#{STAGE}#*").split())
    _gto_write("assign", repo, stage=STAGE, version=version, message=message, simple=False)
    made = set(git(repo, "tag", "--list", f"{ARTIFACT}#{STAGE}#*").split()) - before
    if len(made) != 1:
        raise RegistryError(f"gto assign made {sorted(made)}, not one {ARTIFACT}#{STAGE}#N tag")
    return made.pop()


def _wait_past_the_last_assignment(repo: Path) -> None:
    """GTO orders a stage's assignments by their tags' time, in whole seconds, and a tie may leave the older
    one in front: an assignment made in the same second as the one before it (two registers in a row, as CI's
    machine managed) would not become the champion. So the new tag waits for the next second."""
    times = git(repo, "tag", "--list", "--format=%(taggerdate:unix)", f"{ARTIFACT}#{STAGE}#*").split()
    last = max((int(t) for t in times if t.isdigit()), default=None)
    while last is not None and int(time.time()) <= last:
        time.sleep(0.05)


# ---------------------------------------------------------------- fetching the champion


def fetch(repo: Path, out: Path, version: str | None = None) -> Version:
    """The champion (or `version`) into `out`: model.pth through `dvc artifacts get`, and its card beside it
    (`dvc get` at the same tag), so `python -m classifier.training.predict OUT/model.pth image.png` runs with it."""
    chosen = _version(repo, f"{ARTIFACT}@{version}") if version else champion(repo)
    if chosen is None:
        wanted = f"{ARTIFACT}@{version}" if version else f"{ARTIFACT}#{STAGE}"
        raise RegistryError(f"no {wanted} in the registry (gto show): nothing to fetch; make register registers "
                            "main's model")
    out.mkdir(parents=True, exist_ok=True)
    dvc = [sys.executable, "-m", "dvc"]
    for args in ([*dvc, "artifacts", "get", ".", ARTIFACT, "--rev", chosen.version, "-o", str(out / "model.pth"), "-f"],
                 [*dvc, "get", ".", MODEL_CARD_PATH, "--rev", chosen.tag, "-o", str(out / "model.json"), "-f"]):
        done = _run(args, repo)
        if done.returncode != 0:
            raise RegistryError(f"{' '.join(args[2:5])} for {chosen.describe()} failed (exit {done.returncode}): "
                                f"{done.stderr.strip()[-1000:]}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.registry", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git work tree (default: .)")
    commands = parser.add_subparsers(dest="command", required=True)
    registering = commands.add_parser("register", help="register REV's model and assign prod, if it changed")
    registering.add_argument("--rev", default="HEAD", help="the merged commit (default: HEAD)")
    registering.add_argument("--push", action="store_true", help="push the new tags to origin (git push --atomic)")
    commands.add_parser("champion", help="print the version in prod, or the revision the gate falls back to")
    fetching = commands.add_parser("fetch", help="the champion's model.pth and model.json into --out")
    fetching.add_argument("--out", type=Path, default=Path("champion"), help="folder (default: champion)")
    fetching.add_argument("--version", help="a registered version (v0.1.0) instead of the one in prod")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.command == "register":
            tags, line = register(repo, args.rev)
            print(line)
            if tags and args.push:
                git(repo, "push", "--atomic", "origin", *(f"refs/tags/{tag}" for tag in tags))
                print(f"pushed {', '.join(tags)} to origin")
            elif tags:
                print(f"to publish them: git push origin {' '.join(repr(tag) for tag in tags)}")
        elif args.command == "champion":
            found = champion(repo)
            print(found.describe() if found else f"no {ARTIFACT} in {STAGE} yet: the gate judges against the base's "
                  "committed model")
        else:
            chosen = fetch(repo, args.out, args.version)
            print(f"{chosen.describe()} in {args.out}/: python -m classifier.training.predict {args.out}/model.pth IMAGE.png")
    except RegistryError as error:
        print(f"registry: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sys.exit(main())
