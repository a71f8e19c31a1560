"""The pull-request report as GitHub markdown: pure, from a `Report` the gatherer and judge filled in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from classifier.judging.compare import HIGHER_IS_BETTER, MEANING, NOT_COMPARABLE, Judgement, changes_by_verdict
from classifier.params import CompareParams
from pipeline.project import MODEL_PATH, PARAMS_PATH
from pipeline.report.changes import ModelHash, ParamChange, StageChange
from pipeline.report.escape import code, text

DECIMALS = 4


@dataclass(frozen=True)
class Figure:
    file: str
    caption: str


@dataclass(frozen=True)
class ClassMove:
    name: str
    base_f1: float | None
    head_f1: float
    support: str

    @property
    def delta(self) -> float | None:
        return None if self.base_f1 is None else self.head_f1 - self.base_f1


@dataclass
class Report:
    base_name: str
    base_sha: str | None
    head_sha: str | None
    head_changes: list[str]
    evaluation: Mapping  # the head's metrics/evaluation.json
    samples: Mapping
    notes: list[str]
    judgement: Judgement
    policy: CompareParams | None  # the base's, which judged
    policy_changes: list[ParamChange]  # compare.* keys the head changes
    params: list[ParamChange] | None
    params_problem: str | None
    classes: list[ClassMove] | None
    stages: list[StageChange] | None
    model_base: ModelHash | None
    model_head: ModelHash
    figures: list[Figure] = field(default_factory=list)
    plots_html: str | None = None
    plots_problem: str | None = None
    head_check: list[str] | None = None  # CI's (--check-head): what is judged, what was pulled, checked, reproduced
    recipe: object | None = None  # --seeds K: pipeline.report.recipe.RecipeSection, shown beside the verdict


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.{DECIMALS}f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.{DECIMALS}f}"


def _value(value: object) -> str:
    # `dvc params diff --json` hands a list or mapping over as its Python text ("[512, 512]"): shown as
    # the list it is, not as a quoted string.
    if isinstance(value, str) and value[:1] + value[-1:] in ("[]", "{}"):
        return code(value)
    return "—" if value is None else code(json.dumps(value))


def _short(sha: str | None) -> str:
    return sha[:10] if sha else "?"


def _hash_line(label: str, model: ModelHash | None) -> str:
    if model is None or model.value is None:
        return f"| {label} | — | {model.source if model else 'base not available'} |"
    return f"| {label} | {model.algorithm} {code(model.value)} | {model.source} |"


def p_value_text(p_value: float) -> str:
    return f"{p_value:.2g}" if p_value >= 1e-4 else f"{p_value:.1e}"


def verdict_lines(report: Report) -> list[str]:
    judgement = report.judgement
    # The words first, each metric's change beside them: the line a reviewer reads is the judgement.
    groups = changes_by_verdict(judgement)
    line = f"**Verdict: {judgement.verdict}**"
    if groups:
        line += f" ({groups[0][1]})" + "".join(f"; {verdict} ({changes})" for verdict, changes in groups[1:])
    lines = [line + ".", "", MEANING[judgement.verdict], ""]
    if judgement.paired is not None:
        paired = judgement.paired
        lines += [f"{paired.n:,} test images scored by both models: {paired.base_only} right only at base, "
                  f"{paired.head_only} right only at head, the rest the same (McNemar's test of accuracy: "
                  f"p = {p_value_text(paired.p_value)}; below {report.policy.alpha:g} means the accuracy change is "
                  "more than chance).", ""]
    if judgement.verdict == NOT_COMPARABLE:
        lines += [f"Why: {text(judgement.reason)}."]
        if report.params:
            lines.append("The params that changed (any of them may redraw the test split): "
                         + ", ".join(code(change.key) for change in report.params) + ".")
        lines.append("")
    return lines


def metrics_lines(report: Report) -> list[str]:
    judgement = report.judgement
    level = f"{judgement.confidence:.0%} interval" if judgement.confidence else "interval"
    lines = ["### Metrics (test split)", "",
             f"| metric | better | base | head | change | {level} | smallest change that matters | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for metric in judgement.metrics:
        better = "higher" if HIGHER_IS_BETTER[metric.name] else "lower"
        interval = "—" if metric.low is None else f"{_signed(metric.low)} to {_signed(metric.high)}"
        min_effect = "—" if metric.min_effect is None else f"{metric.min_effect:g}"
        verdict = f"**{metric.verdict}**" if metric.verdict.worse or metric.verdict.fails else str(metric.verdict)
        lines.append(f"| {metric.name} | {better} | {_number(metric.base)} | {_number(metric.head)} | "
                     f"{_signed(metric.delta)} | {interval} | {min_effect} | {verdict} |")
    lines.append("")
    if report.policy is not None and judgement.paired is not None:
        lines += [f"Judged by the base's `compare` policy: alpha {report.policy.alpha:g}, "
                  "intervals: Tango's score interval for accuracy, carried to macro F1 by the jackknife; Student's t for loss.", ""]
    if judgement.resolution:
        lines += ["What this test split resolves: the change an equally good model stays within 95% of the time.", ""]
        lines += [f"- {'' if item.resolved else '**Warning:** '}{text(item.describe())}" for item in judgement.resolution]
        lines.append("")
    if report.policy_changes:
        changed = ", ".join(f"{code(change.key)} {_value(change.base)} → {_value(change.head)}"
                            for change in report.policy_changes)
        lines += [f"This pull request changes the policy ({changed}): it judges the next pull request once merged, "
                  "not this one.", ""]
    return lines


def render_markdown(report: Report, inline_images: bool = True, artifacts_url: str | None = None) -> str:
    """The report as GitHub markdown; with inline_images False, images are pointed at instead (comments cannot hold files)."""
    lines = [f"## Model report: workspace against {code(report.base_name)}", ""]
    head = f"workspace at `{_short(report.head_sha)}`"
    if report.head_changes:
        head += " with uncommitted changes to " + ", ".join(code(path) for path in report.head_changes)
    samples = ", ".join(f"{report.samples[split]:,} {split}" for split in ("train", "val", "test") if split in report.samples)
    base = f"{code(report.base_name)} at `{_short(report.base_sha)}`" if report.base_sha else f"{code(report.base_name)} (not found)"
    fingerprint = str(report.evaluation.get("test_fingerprint", "?"))
    lines += ["| | |", "|---|---|", f"| base | {base} |", f"| head | {head} |",
              f"| dataset | {text(report.evaluation.get('dataset', '?'))} ({samples}) |",
              f"| test set | {code(fingerprint[:19])}… |", ""]
    if report.head_check:
        lines += ["### What is judged", ""] + [f"- {line}" for line in report.head_check] + [""]
    lines += [f"> **Note:** {note}\n" for note in report.notes]
    lines += verdict_lines(report)
    if report.recipe is not None:  # --seeds K (pipeline.report.recipe)
        from pipeline.report.recipe import recipe_lines
        lines += recipe_lines(report.recipe, inline_images, artifacts_url)

    lines += ["### Params", ""]
    if report.params_problem:
        lines += [report.params_problem, ""]
    elif not report.params:
        lines += ["No params changed.", ""]
    else:
        lines += ["| param | base | head |", "|---|---|---|"]
        for change in report.params:
            key = change.key if change.file == PARAMS_PATH else f"{change.file}: {change.key}"
            lines.append(f"| {code(key)} | {_value(change.base)} | {_value(change.head)} |")
        lines.append("")

    lines += metrics_lines(report)

    lines += ["### Classes whose F1 moved most", ""]
    if report.classes is None:
        lines += ["No per-class scores in the workspace.", ""]
    else:
        lines += ["| class | base F1 | head F1 | change | support |", "|---|---|---|---|---|"]
        lines += [f"| {text(move.name)} | {_number(move.base_f1)} | {_number(move.head_f1)} | {_signed(move.delta)} | {text(move.support)} |"
                  for move in report.classes]
        lines.append("")

    lines += ["### Curves and confusion matrices", ""]
    if inline_images:
        lines += [f"![{figure.caption}]({figure.file})\n" for figure in report.figures]
        if report.plots_html:
            lines += [f"Interactive plots of both revisions (`dvc plots diff`): [{report.plots_html}]({report.plots_html})", ""]
    else:
        where = f"[the workflow run's artifacts]({artifacts_url})" if artifacts_url else "the report's artifact"
        files = ", ".join(f"`{figure.file}`" for figure in report.figures)
        lines += [f"In {where}: {files}" + (f" and the `dvc plots diff` page `{report.plots_html}`." if report.plots_html else "."), ""]
    if report.plots_problem:
        lines += [report.plots_problem, ""]

    lines += ["### Pipeline", ""]
    if report.stages is None:
        lines += ["No dvc.lock in the workspace: run the pipeline (`dvc repro`) to see which stages rerun.", ""]
    else:
        lines += ["Stages whose inputs differ between the base and head `dvc.lock`:", "",
                  "| stage | reran | why |", "|---|---|---|"]
        lines += [f"| {text(change.stage)} | {'yes' if change.reran else 'no'} | {'; '.join(change.reasons) or 'same inputs'} |"
                  for change in report.stages]
        lines.append("")
    lines += [f"`{MODEL_PATH}`:", "", "| | hash | |", "|---|---|---|",
              _hash_line("base", report.model_base), _hash_line("head", report.model_head), ""]
    if report.model_base and report.model_base.value and report.model_base.value == report.model_head.value:
        lines += ["The model file is byte-for-byte the same at base and head.", ""]
    lines += [f"<sub>{code(f'python -m pipeline.report --base {report.base_name}')}</sub>", ""]
    return "\n".join(lines)
