"""Pull-request report: what a change did to the model, a base revision against the workspace.

    python -m pipeline.report --base main [--out report] [--fail-on-regression]

Writes OUT/report.md (images inline), OUT/comment.md (the same text for a pull-request
comment, images pointed at the workflow artifact), the PNG images beside them and
OUT/plots/index.html (`dvc plots diff`). The base is read from git (`git show`: the metrics
and plot CSVs are git-tracked), the head is the workspace.

Exit status: 0 report written; 1 with --fail-on-regression, a metric regressed beyond its
tolerance; 2 a problem to fix first (no metrics in the workspace, bad params, not a git
repo, or --fail-on-regression with a base that is not in the clone, so nothing was judged).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from classifier.cli import UserError, run
from classifier.compare import HIGHER_IS_BETTER, REGRESSED, MetricChange, compare_metrics
from classifier.files import atomic_write_text, file_digest
from classifier.params import load_params
from pipeline import report_plots
from pipeline.stages import PipelineError, lock_md5, read_stage_graph, stage_env
from pipeline.stages import stage_order as graph_order

log = logging.getLogger("report")

# The outputs dvc.yaml declares for evaluate and train, read at both revisions.
METRICS_PATH = "metrics/metrics.json"
HISTORY_PATH = "metrics/history.csv"
PER_CLASS_PATH = "metrics/per_class.csv"
CONFUSION_PATH = "metrics/confusion.csv"
LOCK_PATH = "dvc.lock"
PARAMS_PATH = "params.yaml"
MODEL_PATH = "models/model.pth"

# Finds the pull request's one comment again on the next push.
MARKER = "<!-- classifier-pipeline-report -->"
DECIMALS = 4
TOP_CLASSES = 5


class ReportError(UserError):
    """A report that cannot be made; the message says what to do."""


# ---------------------------------------------------------------- what each revision holds


@dataclass(frozen=True)
class Snapshot:
    """The pipeline's results at one revision; a field is None when that revision lacks the file."""

    metrics: dict | None
    history: list[dict[str, float]] | None
    per_class: list[dict[str, str]] | None
    confusion: list[tuple[str, str]] | None
    lock: dict | None


def _parse(where: str, path: str, text: str | None, parser: Callable[[str], object]):
    if text is None:
        return None
    try:
        return parser(text)
    except (ValueError, KeyError, TypeError) as error:
        raise ReportError(f"{path} {where}: cannot be read ({error})") from None


def _history_rows(text: str) -> list[dict[str, float]]:
    return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _confusion_pairs(text: str) -> list[tuple[str, str]]:
    return [(row["actual"], row["predicted"]) for row in csv.DictReader(io.StringIO(text))]


def _lock(text: str) -> dict:
    import yaml  # only when a lock file is there to read

    try:
        lock = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}") from None
    if not isinstance(lock, dict):
        raise ValueError("not a mapping")
    return lock


def read_snapshot(read: Callable[[str], str | None], where: str) -> Snapshot:
    """`read(path)` gives a file's text at the revision, or None when it has no such file; `where`
    ("in the workspace", "at main (1a2b3c4d5e)") names the revision in errors."""
    return Snapshot(
        metrics=_parse(where, METRICS_PATH, read(METRICS_PATH), json.loads),
        history=_parse(where, HISTORY_PATH, read(HISTORY_PATH), _history_rows),
        per_class=_parse(where, PER_CLASS_PATH, read(PER_CLASS_PATH),
                         lambda text: list(csv.DictReader(io.StringIO(text)))),
        confusion=_parse(where, CONFUSION_PATH, read(CONFUSION_PATH), _confusion_pairs),
        lock=_parse(where, LOCK_PATH, read(LOCK_PATH), _lock),
    )


# ---------------------------------------------------------------- comparisons (pure)


@dataclass(frozen=True)
class ParamChange:
    file: str
    key: str
    base: object
    head: object


def params_changes(dvc_params_diff: Mapping) -> list[ParamChange]:
    """Rows of `dvc params diff --json`: {file: {key: {"old", "new", ...}}}."""
    return [
        ParamChange(file, key, change.get("old"), change.get("new"))
        for file, changes in sorted(dvc_params_diff.items())
        for key, change in sorted(changes.items())
    ]


@dataclass(frozen=True)
class ClassMove:
    name: str
    base_f1: float | None
    head_f1: float
    support: str

    @property
    def delta(self) -> float | None:
        return None if self.base_f1 is None else self.head_f1 - self.base_f1


def class_moves(base_rows: Sequence[Mapping] | None, head_rows: Sequence[Mapping], top: int = TOP_CLASSES) -> list[ClassMove]:
    """The `top` classes whose F1 moved most, largest move first (ties by class order)."""
    base_f1 = {row["class"]: float(row["f1"]) for row in base_rows or []}
    moves = [ClassMove(row["class"], base_f1.get(row["class"]), float(row["f1"]), row.get("support", ""))
             for row in head_rows]
    return sorted(moves, key=lambda move: -abs(move.delta or 0.0))[:top]


@dataclass(frozen=True)
class StageChange:
    stage: str
    reran: bool
    reasons: tuple[str, ...]


def _flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, Mapping):
        flat: dict[str, object] = {}
        for key, inner in value.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return flat
    return {prefix: value}


def _entries(stage: Mapping, kind: str) -> dict[str, dict]:
    # A dep's identity is everything but its path: md5 (or etag, checksum), size, nfiles.
    return {entry["path"]: {k: v for k, v in entry.items() if k != "path"} for entry in stage.get(kind) or []}


def _changed(base: Mapping, head: Mapping) -> list[str]:
    return sorted(key for key in base.keys() | head.keys() if base.get(key) != head.get(key))


def stage_changes(base_lock: Mapping | None, head_lock: Mapping, order: Sequence[str] = ()) -> list[StageChange]:
    """Which stages of dvc.lock ran on different inputs at head than at base, and why; in `order`
    (dvc.yaml's, since dvc.lock lists stages in the order they first ran), others after."""
    base_stages = (base_lock or {}).get("stages") or {}
    unordered = head_lock.get("stages") or {}
    position = {name: index for index, name in enumerate(order)}
    head_stages = {name: unordered[name] for name in sorted(unordered, key=lambda name: position.get(name, len(position)))}
    changes = []
    for name, head_stage in head_stages.items():
        base_stage = base_stages.get(name)
        if base_stage is None:
            changes.append(StageChange(name, True, ("not in the base dvc.lock",)))
            continue
        reasons = []
        if base_stage.get("cmd") != head_stage.get("cmd"):
            reasons.append("command changed")
        if params := _changed(_flatten("", base_stage.get("params") or {}), _flatten("", head_stage.get("params") or {})):
            # Keys come as "params.yaml.train.epochs"; the file is nearly always params.yaml.
            reasons.append("params " + ", ".join(f"`{key.removeprefix(PARAMS_PATH + '.')}`" for key in params))
        if deps := _changed(_entries(base_stage, "deps"), _entries(head_stage, "deps")):
            reasons.append("deps " + ", ".join(f"`{path}`" for path in deps))
        changes.append(StageChange(name, bool(reasons), tuple(reasons)))
    changes.extend(StageChange(name, False, ("removed at head",)) for name in base_stages if name not in head_stages)
    return changes


@dataclass(frozen=True)
class ModelHash:
    algorithm: str | None  # "sha256" or "md5"; None when the revision has no model
    value: str | None
    source: str


def model_hash(lock: Mapping | None, cache_dir: Path | None, workspace_file: Path | None) -> ModelHash:
    """The model's sha256 when its bytes are at hand (DVC cache or workspace), else dvc.lock's md5."""
    md5 = lock_md5(lock, MODEL_PATH)
    if md5 is None:
        return ModelHash(None, None, "no `models/model.pth` in dvc.lock")
    if cache_dir is not None:
        cached = cache_dir / "files" / "md5" / md5[:2] / md5[2:]
        if cached.is_file():
            return ModelHash("sha256", file_digest(cached), "from the DVC cache")
    if workspace_file is not None and workspace_file.is_file() and file_digest(workspace_file, "md5") == md5:
        return ModelHash("sha256", file_digest(workspace_file), "from the workspace")
    return ModelHash("md5", md5, "from dvc.lock; the file itself is not in this checkout")


@dataclass(frozen=True)
class Figure:
    file: str
    caption: str


@dataclass
class Report:
    base_name: str
    base_sha: str | None
    head_sha: str | None
    head_changes: list[str]
    dataset: str
    samples: Mapping
    notes: list[str]
    metrics: list[MetricChange]
    params: list[ParamChange] | None
    params_problem: str | None
    classes: list[ClassMove] | None
    stages: list[StageChange] | None
    model_base: ModelHash | None
    model_head: ModelHash
    figures: list[Figure] = field(default_factory=list)
    plots_html: str | None = None
    plots_problem: str | None = None

    @property
    def regressed(self) -> list[MetricChange]:
        return [change for change in self.metrics if change.verdict == REGRESSED]


# ---------------------------------------------------------------- markdown (pure)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.{DECIMALS}f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.{DECIMALS}f}"


def _value(value: object) -> str:
    return "—" if value is None else f"`{json.dumps(value)}`"


def _short(sha: str | None) -> str:
    return sha[:10] if sha else "?"


def _hash_line(label: str, model: ModelHash | None) -> str:
    if model is None or model.value is None:
        return f"| {label} | — | {model.source if model else 'base not available'} |"
    return f"| {label} | {model.algorithm} `{model.value}` | {model.source} |"


def render_markdown(report: Report, inline_images: bool = True, artifacts_url: str | None = None) -> str:
    """The report as GitHub markdown; with inline_images False, images are pointed at instead (comments cannot hold files)."""
    lines = [MARKER, f"## Model report: workspace against `{report.base_name}`", ""]
    head = f"workspace at `{_short(report.head_sha)}`"
    if report.head_changes:
        head += " with uncommitted changes to " + ", ".join(f"`{path}`" for path in report.head_changes)
    samples = ", ".join(f"{report.samples[split]:,} {split}" for split in ("train", "val", "test") if split in report.samples)
    base = f"`{report.base_name}` at `{_short(report.base_sha)}`" if report.base_sha else f"`{report.base_name}` (not found)"
    lines += ["| | |", "|---|---|", f"| base | {base} |", f"| head | {head} |",
              f"| dataset | {report.dataset} ({samples}) |", ""]
    lines += [f"> **Note:** {note}\n" for note in report.notes]

    counts = {verdict: sum(change.verdict == verdict for change in report.metrics)
              for verdict in ("improved", "regressed", "within tolerance", "new")}
    summary = ", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count)
    lines += [f"**Verdict: {'REGRESSION' if report.regressed else 'no regression'}** ({summary}).", ""]

    lines += ["### Params", ""]
    if report.params_problem:
        lines += [report.params_problem, ""]
    elif not report.params:
        lines += ["No params changed.", ""]
    else:
        lines += ["| param | base | head |", "|---|---|---|"]
        for change in report.params:
            key = change.key if change.file == PARAMS_PATH else f"{change.file}: {change.key}"
            lines.append(f"| `{key}` | {_value(change.base)} | {_value(change.head)} |")
        lines.append("")

    lines += ["### Metrics (test split)", "",
              "| metric | better | base | head | delta | tolerance | verdict |", "|---|---|---|---|---|---|---|"]
    for change in report.metrics:
        better = "higher" if HIGHER_IS_BETTER[change.name] else "lower"
        verdict = f"**{change.verdict}**" if change.verdict == REGRESSED else change.verdict
        lines.append(f"| {change.name} | {better} | {_number(change.base)} | {_number(change.head)} | "
                     f"{_signed(change.delta)} | ±{_number(change.tolerance)} | {verdict} |")
    lines.append("")

    lines += ["### Classes whose F1 moved most", ""]
    if report.classes is None:
        lines += ["No per-class scores in the workspace.", ""]
    else:
        lines += ["| class | base F1 | head F1 | delta | support |", "|---|---|---|---|---|"]
        lines += [f"| {move.name} | {_number(move.base_f1)} | {_number(move.head_f1)} | {_signed(move.delta)} | {move.support} |"
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
        lines += [f"| {change.stage} | {'yes' if change.reran else 'no'} | {'; '.join(change.reasons) or 'same inputs'} |"
                  for change in report.stages]
        lines.append("")
    lines += [f"`{MODEL_PATH}`:", "", "| | hash | |", "|---|---|---|",
              _hash_line("base", report.model_base), _hash_line("head", report.model_head), ""]
    if report.model_base and report.model_base.value and report.model_base.value == report.model_head.value:
        lines += ["The model file is byte-for-byte the same at base and head.", ""]
    lines += [f"<sub>`python -m pipeline.report --base {report.base_name}`</sub>", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- git and dvc (I/O)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=stage_env())


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # The dvc of this interpreter: the one installed beside the project, whatever PATH says.
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env=stage_env())


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def repo_root(directory: Path) -> Path:
    result = _git(directory, "rev-parse", "--show-toplevel")
    if result.returncode != 0:
        raise ReportError(f"{directory.resolve()} is not inside a git repository; run the report from the project's clone")
    return Path(result.stdout.strip())


def resolve(repo: Path, revision: str) -> str | None:
    result = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    return result.stdout.strip() if result.returncode == 0 else None


def missing_base_note(repo: Path, base_name: str) -> str:
    branch = base_name.removeprefix("origin/")
    if _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        return (f"The base revision `{base_name}` is not in this clone: it is a shallow clone. Fetch the history with "
                f"`git fetch --unshallow` (or only the base with `git fetch origin {branch}`) and rerun; in GitHub "
                "Actions, check out with `fetch-depth: 0`. Only the head's numbers are shown.")
    return (f"The base revision `{base_name}` is not in this repository. Check the name, or fetch it with "
            f"`git fetch origin {branch}`, and rerun. Only the head's numbers are shown.")


def git_reader(repo: Path, sha: str) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        result = _git(repo, "show", f"{sha}:{path}")
        return result.stdout if result.returncode == 0 else None
    return read


def workspace_reader(repo: Path) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        try:
            return (repo / path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    return read


def uncommitted(repo: Path, paths: Sequence[str]) -> list[str]:
    result = _git(repo, "status", "--porcelain", "--", *paths)
    return sorted(line[3:] for line in result.stdout.splitlines() if line.strip())


def dvc_params_diff(repo: Path, base_sha: str) -> tuple[list[ParamChange] | None, str | None]:
    result = _dvc(repo, "params", "diff", base_sha, "--json")
    try:
        payload = json.loads(result.stdout or "{}") if result.returncode == 0 else None
    except json.JSONDecodeError:
        payload = None
    if payload is None:
        return None, f"`dvc params diff` failed: {_last_line(result)}"
    return params_changes(payload), None


def dvc_cache_dir(repo: Path) -> Path | None:
    result = _dvc(repo, "cache", "dir")
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def dvc_plots(repo: Path, base_sha: str | None, out_dir: Path) -> tuple[str | None, str | None]:
    """`dvc plots diff` of base and workspace (`dvc plots show` without a base) into out_dir/plots."""
    target = out_dir.resolve() / "plots"
    args = ["plots", "diff", base_sha] if base_sha else ["plots", "show"]
    result = _dvc(repo, *args, "-o", str(target))
    if result.returncode != 0 or not (target / "index.html").is_file():
        return None, f"`dvc {' '.join(args[:2])}` wrote no page: {_last_line(result)}"
    return "plots/index.html", None


# ---------------------------------------------------------------- assembling the report


def stage_order(repo: Path) -> list[str]:
    try:
        return graph_order(read_stage_graph(repo))
    except PipelineError:
        return []  # the table falls back to dvc.lock's order


def _class_order(snapshot: Snapshot) -> list[str]:
    named = [row["class"] for row in snapshot.per_class or []]
    seen = {name for pair in snapshot.confusion or [] for name in pair}
    return named + sorted(seen - set(named))


def draw_figures(base: Snapshot | None, head: Snapshot, out_dir: Path) -> list[Figure]:
    figures = []
    base_history = base.history if base else None
    if head.history:
        for file, title, y_label, columns in report_plots.CURVES:
            report_plots.curves_figure(out_dir / file, title, y_label, columns, head.history, base_history)
            figures.append(Figure(file, title + (", base dashed, head solid" if base_history else ", head")))
    for label, snapshot in (("head", head), ("base", base)):
        if snapshot and snapshot.confusion:
            file = f"confusion_{label}.png"
            report_plots.confusion_figure(out_dir / file, f"Confusion matrix, {label}", snapshot.confusion,
                                          _class_order(snapshot))
            figures.append(Figure(file, f"Confusion matrix, {label}"))
    return figures


def build_report(repo: Path, base_name: str, out_dir: Path) -> Report:
    head = read_snapshot(workspace_reader(repo), "in the workspace")
    if head.metrics is None:
        raise ReportError(f"{METRICS_PATH} is not in the workspace: run the pipeline first (`dvc repro` or `make run`)")
    compare_params = load_params(repo / PARAMS_PATH).compare
    notes: list[str] = []

    base_sha = resolve(repo, base_name)
    base = None
    if base_sha is None:
        notes.append(missing_base_note(repo, base_name))
    else:
        base = read_snapshot(git_reader(repo, base_sha), f"at {base_name} ({_short(base_sha)})")
        if base.metrics is None:
            notes.append(f"The base has no `{METRICS_PATH}`: this is the pipeline's first pull request, so every "
                         "metric is new and nothing can regress.")
        elif base.metrics.get("dataset") != head.metrics.get("dataset"):
            notes.append(f"The base was evaluated on `{base.metrics.get('dataset')}` and the head on "
                         f"`{head.metrics.get('dataset')}`: the deltas compare different test sets.")
        if base.lock is None:
            notes.append(f"The base has no `{LOCK_PATH}` (the pipeline was never run and committed there): every "
                         "stage counts as new and there is no base model hash.")

    params, params_problem = (None, "No base to compare params with.") if base_sha is None else dvc_params_diff(repo, base_sha)
    cache_dir = dvc_cache_dir(repo)
    base_metrics = base.metrics if base else None
    report = Report(
        base_name=base_name,
        base_sha=base_sha,
        head_sha=resolve(repo, "HEAD"),
        head_changes=uncommitted(repo, [PARAMS_PATH, LOCK_PATH, "metrics"]),
        dataset=str(head.metrics.get("dataset", "?")),
        samples=head.metrics.get("samples", {}),
        notes=notes,
        metrics=compare_metrics(base_metrics, head.metrics, compare_params),
        params=params,
        params_problem=params_problem,
        classes=class_moves(base.per_class if base else None, head.per_class) if head.per_class else None,
        stages=stage_changes(base.lock if base else None, head.lock, stage_order(repo)) if head.lock else None,
        model_base=model_hash(base.lock, cache_dir, None) if base and base.lock else None,
        model_head=model_hash(head.lock, cache_dir, repo / MODEL_PATH),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.figures = draw_figures(base, head, out_dir)
    report.plots_html, report.plots_problem = dvc_plots(repo, base_sha, out_dir)
    return report


def generate(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare the workspace with (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder to write into (default: %(default)s)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when any metric regressed beyond its tolerance in params.yaml compare.tolerances")
    parser.add_argument("--artifacts-url", help="where comment.md says the images are (the CI run's artifacts page)")
    args = parser.parse_args(argv)

    repo = repo_root(Path.cwd())
    out_dir = args.out if args.out.is_absolute() else Path.cwd() / args.out
    report = build_report(repo, args.base, out_dir)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "comment.md", render_markdown(report, inline_images=False, artifacts_url=args.artifacts_url))
    log.info("wrote %s (%d images)", out_dir / "report.md", len(report.figures))
    for change in report.metrics:
        log.info("%-9s %s -> %s  %s", change.name, _number(change.base), _number(change.head), change.verdict)

    if not args.fail_on_regression:
        return 0
    if report.base_sha is None:
        print(f"error: base revision {args.base!r} not found, so no regression could be judged "
              "(the report shows the head only)", file=sys.stderr)
        return 2
    if report.regressed:
        names = ", ".join(f"{change.name} {_signed(change.delta)}" for change in report.regressed)
        print(f"regression beyond tolerance against {args.base}: {names}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    status = 0

    def work(arguments: Sequence[str] | None) -> None:
        nonlocal status
        status = generate(arguments)

    # run() turns a UserError into one line and exit status 2; otherwise the report's own status.
    return run(work, argv) or status


if __name__ == "__main__":
    sys.exit(main())
