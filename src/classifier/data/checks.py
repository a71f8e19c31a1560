"""The data checks before training: what prepare found wrong with the data, judged by params' `checks`.

    leakage        one image in two of train/val/test: by file content (manifest.csv's sha256, the rule
                   classifier.data.leakage shares with the PR report) or by decoded pixels (the same picture
                   saved as .png and .bmp); a model scores well on test images it trained on, whatever
                   it learned, so no score can catch it
    broken         files that are not images, are truncated, or do not decode
    duplicates     one image more than once within a split (under two classes: a labelling error)
    unknown_class  a class folder the champion's data did not have (a typo'd or stray folder)
    small_class    a class with fewer images than checks.min_images_per_class
    balance        class shares against the champion's data: Pearson's chi-square test

Each finding's policy is `block` (prepare stops before writing data/prepared, so nothing trains and a
retrain ends `blocked`), `warn` (reported; a broken file is left out of the split) or `off`.
The champion's data is the data_checks.json committed at HEAD (in a retrain's workspace, the base's):
its per-class counts. prepare writes the result to metrics/data_checks.json (git-tracked, no
timestamps: the same data and params give the same bytes); `markdown` renders it for the run's Prefect
artifact and the PR report. No torch; scipy.stats (a third of a second to import) only when the
class balance is tested.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from classifier.cli import UserError
from classifier.data.leakage import SPLIT_ORDER, leaked_across
from classifier.params import ChecksParams

CHECKS = ("leakage", "broken", "duplicates", "unknown_class", "small_class", "balance")
PASS, WARN, BLOCK, OFF, SKIPPED = "pass", "warn", "block", "off", "skipped"
EXAMPLES = 20   # files named per finding in data_checks.json; the count says how many in all
IN_LINE = 3     # files named per finding in the one-line error


class DataChecksBlocked(UserError):
    """The data checks found what params' `checks` say blocks training; the message is one line."""


@dataclass(frozen=True)
class Rejected:
    """A file prepare could not decode: `path` as the user knows it, `kind` images.NOT_AN_IMAGE etc."""

    path: str
    sha256: str
    kind: str
    message: str


def _finding(policy: str, examples: Sequence[str], words: str, count: int | None = None) -> dict:
    count = len(examples) if count is None else count
    status = OFF if policy == OFF else PASS if count == 0 else policy
    return {"policy": policy, "status": status, "count": count, "words": words,
            "examples": list(examples[:EXAMPLES])}


def _leakage(rows: Sequence[tuple[str, str, str, str, str]], policy: str) -> dict:
    """rows: (path, class, split, file sha256, pixel sha256)."""
    keys_by_split: dict[str, set[str]] = defaultdict(set)
    first: dict[str, tuple[str, str]] = {}
    for split in SPLIT_ORDER:
        for path, _, row_split, file_hash, pixel_hash in rows:
            if row_split == split:
                for key in (file_hash, f"px:{pixel_hash}"):
                    keys_by_split[split].add(key)
                    first.setdefault(key, (path, split))
    found = {key for keys in leaked_across(keys_by_split).values() for key in keys}
    examples = []
    for path, _, split, file_hash, pixel_hash in rows:
        for key, how in ((file_hash, "same file content"), (f"px:{pixel_hash}", "same pixels")):
            if key in found and first[key][1] != split:
                examples.append(f"{path} ({split}) = {first[key][0]} ({first[key][1]}): {how}")
                break
    words = ("no image is in two splits" if not examples else
             f"{len(examples)} image(s) of val or test are also in an earlier split: a model would be scored "
             "on images it trained on")
    return _finding(policy, examples, words)


def _broken(rejected: Sequence[Rejected], policy: str) -> dict:
    examples = [f"{item.path}: {item.kind}" for item in rejected]
    words = ("every file decodes" if not rejected else
             f"{len(rejected)} file(s) that do not decode"
             + (" (left out of the split)" if policy == WARN else ""))
    return _finding(policy, examples, words)


def _duplicates(rows: Sequence[tuple[str, str, str, str, str]], policy: str) -> dict:
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for path, name, split, _, pixel_hash in rows:
        groups[(split, pixel_hash)].append((path, name))
    examples, extra, conflicting = [], 0, 0
    for (split, _), members in groups.items():
        if len(members) > 1:
            extra += len(members) - 1
            classes = sorted({name for _, name in members})
            conflicting += len(classes) > 1
            under = f", under classes {', '.join(map(repr, classes))}" if len(classes) > 1 else ""
            examples.append(f"{' = '.join(path for path, _ in members[:4])} ({split}{under})")
    words = ("no image twice within a split" if not extra else
             f"{extra} extra cop{'y' if extra == 1 else 'ies'} of images within a split"
             + (f"; {conflicting} under two classes (a labelling error)" if conflicting else ""))
    return _finding(policy, examples, words, extra)


def _unknown(counts: Mapping[str, int], reference: Mapping[str, int] | None, policy: str) -> dict:
    if reference is None:
        return {**_finding(policy, [], "no champion's data to compare with"), "status": OFF if policy == OFF else SKIPPED}
    new = [name for name in counts if name not in reference]
    gone = [name for name in reference if name not in counts]
    words = (f"class folder(s) the champion's data did not have: {', '.join(map(repr, new))}" if new
             else "every class folder is one the champion's data had")
    if gone:
        words += f"; the champion's class(es) {', '.join(map(repr, gone))} have no images now"
    return _finding(policy, [f"{name} ({counts[name]} images)" for name in new], words)


def _small(counts: Mapping[str, int], minimum: int, policy: str) -> dict:
    small = [f"{name} ({count} images)" for name, count in counts.items() if count < minimum]
    words = (f"every class has at least {minimum} images" if not small else
             f"{len(small)} class(es) with fewer than {minimum} images (checks.min_images_per_class)")
    return _finding(policy, small, words)


def _balance(counts: Mapping[str, int], reference: Mapping[str, int] | None, policy: str, alpha: float) -> dict:
    common = sorted(name for name in counts if reference and reference.get(name, 0) > 0)
    if reference is None or len(common) < 2 or policy == OFF:
        why = "no champion's data to compare with" if reference is None else "fewer than two classes in common"
        return {**_finding(policy, [], why if policy != OFF else "not checked"),
                "status": OFF if policy == OFF else SKIPPED}
    observed = [counts[name] for name in common]
    expected_shares = [reference[name] / sum(reference[n] for n in common) for name in common]
    total = sum(observed)
    statistic = sum((o - total * s) ** 2 / (total * s) for o, s in zip(observed, expected_shares))
    dof = len(common) - 1
    from scipy.stats import chi2  # only here: prepare pays for scipy.stats only when there is a balance to test

    p_value = float(chi2.sf(statistic, dof))
    changes = sorted(((o / total - s, name, s, o / total) for o, s, name in zip(observed, expected_shares, common)),
                     key=lambda item: (-abs(item[0]), item[1]))
    _, name, before, now = changes[0]
    figure = f"chi-square {statistic:.2f}, {dof} degrees of freedom, p {_p(p_value)}"
    differs = p_value < alpha
    words = (f"class shares differ from the champion's data ({figure}); largest change: {name!r} "
             f"{before:.1%} -> {now:.1%}" if differs else f"class shares as in the champion's data ({figure})")
    finding = _finding(policy, [f"{name} {before:.1%} -> {now:.1%}"] if differs else [], words, int(differs))
    return finding | {"chi_square": round(statistic, 4), "dof": dof, "p_value": float(f"{p_value:.4g}"),
                      "alpha": alpha}


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"= {value:.3f}"


def run_checks(rows: Sequence[tuple[str, str, str, str, str]], rejected: Sequence[Rejected], policy: ChecksParams,
               reference: Mapping | None) -> dict:
    """The checks on prepare's result: `rows` (path as the user knows it, class, split, file sha256, pixel
    sha256), one per image that decoded; `rejected`, the files that did not; `reference`, the champion's
    data_checks.json (None when there is none). Returns what metrics/data_checks.json holds."""
    counts: dict[str, int] = defaultdict(int)
    splits: dict[str, int] = {name: 0 for name in SPLIT_ORDER}
    for _, name, split, _, _ in rows:
        counts[name] += 1
        splits[split] += 1
    counts = dict(sorted(counts.items()))
    champion = _reference_counts(reference)
    checks = {
        "leakage": _leakage(rows, policy.leakage) if policy.leakage != OFF else _finding(OFF, [], "not checked"),
        "broken": _broken(rejected, policy.broken),
        "duplicates": _duplicates(rows, policy.duplicates) if policy.duplicates != OFF
        else _finding(OFF, [], "not checked"),
        "unknown_class": _unknown(counts, champion, policy.unknown_class),
        "small_class": _small(counts, policy.min_images_per_class, policy.small_class),
        "balance": _balance(counts, champion, policy.balance, policy.balance_alpha),
    }
    blocking = [name for name in CHECKS if checks[name]["status"] == BLOCK]
    warning = [name for name in CHECKS if checks[name]["status"] == WARN]
    summary = ("blocked: " + "; ".join(f"{name}: {checks[name]['words']}" for name in blocking) if blocking else
               "passed" + (" with warnings: " + "; ".join(f"{name}: {checks[name]['words']}" for name in warning)
                           if warning else ""))
    return {"blocked": bool(blocking), "summary": summary, "images": len(rows), "rejected": len(rejected),
            "splits": splits, "classes": counts,
            "reference": None if champion is None else "the champion's data (data_checks.json at HEAD)",
            "checks": checks}


def _reference_counts(reference: Mapping | None) -> dict[str, int] | None:
    classes = (reference or {}).get("classes")
    if not isinstance(classes, Mapping) or not classes:
        return None
    try:
        return {str(name): int(count) for name, count in classes.items()}
    except (TypeError, ValueError):
        return None


def blocking_line(report: Mapping) -> str | None:
    """One line for a blocked run: which files and why, and the key that decides; None when not blocked."""
    if not report["blocked"]:
        return None
    parts = []
    for name in CHECKS:
        finding = report["checks"][name]
        if finding["status"] == BLOCK:
            named = finding["examples"][:IN_LINE]
            more = f" and {finding['count'] - len(named)} more" if finding["count"] > len(named) else ""
            parts.append(f"{name} (checks.{name}: block): {finding['words']}: {'; '.join(named)}{more}")
    return ("data checks block training: " + " | ".join(parts)
            + " (every finding: metrics/data_checks.json; set the key to warn to train anyway)")


def committed_reference(path: Path) -> dict | None:
    """`path` (metrics/data_checks.json) as committed at HEAD, or None: no git, no commit, no such file.
    Read from git, not the working tree: DVC removes a stage's outputs before running it."""
    path = Path(path)
    where = path.parent if path.parent.is_dir() else Path.cwd()
    try:
        result = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=where, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    try:
        document = json.loads(result.stdout)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def markdown(report: Mapping | None, heading: str = "## Data checks") -> str:
    """metrics/data_checks.json as a markdown section: the Prefect run artifact's and the PR report's."""
    if not report:
        return f"{heading}\n\nNo data checks ran (metrics/data_checks.json is missing).\n"
    lines = [heading, "", f"**{report.get('summary', '')}** ({report.get('images', 0)} images, "
             f"{report.get('rejected', 0)} rejected)", "", "| check | policy | result | finding |", "|---|---|---|---|"]
    for name, finding in (report.get("checks") or {}).items():
        named = "; ".join(finding.get("examples", [])[:5]).replace("|", "\\|")
        words = str(finding.get("words", "")).replace("|", "\\|")
        lines.append(f"| {name} | {finding.get('policy')} | **{finding.get('status')}** | {words}"
                     + (f": {named}" if named else "") + " |")
    return "\n".join(lines) + "\n"


def report_note(report: Mapping | None) -> str | None:
    """One sentence for the PR report (pipeline.report) when the head's data checks found anything:
    warnings, or a block (data_checks.json then describes data no model here was trained on)."""
    if not report or report.get("summary", "passed") == "passed":
        return None
    return f"Data checks before training (`metrics/data_checks.json`): {report['summary']}."


def read_report(path: Path) -> dict | None:
    """metrics/data_checks.json, or None when it is missing or unreadable (for reports, never a crash)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
