"""Pull-request report: what a change did to the model, a base revision against the workspace.

    python -m pipeline.report --base main [--out report] [--fail-on-regression]

Writes OUT/report.md (images inline), OUT/comment.md (the same text for a pull-request
comment, images pointed at the workflow artifact), the PNG images beside them and
OUT/plots/index.html (`dvc plots diff`). The base is read from git (`git show`: metrics,
per-example results and params are git-tracked), the head is the workspace. Gathering and
judging is pipeline.report.build (under the BASE's `compare` policy), the markdown
pipeline.report.render.

With --check-head (CI: `make pr-report`), the head's outputs are first pulled from the DVC remote
and its committed results checked against its dvc.lock; only what is missing or stale is computed,
and the report says which results it judges (pipeline.report.head).

Exit status: 0 report written; with --fail-on-regression, 1 when the head may be worse by as much
as matters (the verdict is *worse by more than matters*, *worse, perhaps by enough to matter*, or
*cannot tell* with a worsening that matters inside the interval; classifier.compare.Verdict.fails),
and 2 when nothing could be judged (*not comparable*: different test sets; *could not judge*:
the base is not in the clone, or its results or policy cannot be read). 2 also for a problem to
fix first (no results in the workspace, not a git repo), and, with --check-head, when the pulled model
is not the one dvc.lock records or stale results could not be rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import run
from classifier.compare import exit_status, headline
from classifier.files import atomic_write_text
from pipeline.report.build import build_report
from pipeline.report.changes import repo_root
from pipeline.report.head import check_head
from pipeline.report.render import render_markdown

log = logging.getLogger("report")


def generate(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare the workspace with (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder to write into (default: %(default)s)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when the head may be worse by as much as matters, 2 when base and head could not be compared")
    parser.add_argument("--artifacts-url", help="where comment.md says the images are (the CI run's artifacts page)")
    parser.add_argument("--check-head", action="store_true",
                        help="first pull the head's outputs from the DVC remote, check its committed results against "
                             "its dvc.lock and compute only what is missing or stale (pipeline.report.head; make pr-report)")
    args = parser.parse_args(argv)

    repo = repo_root(Path.cwd())
    out_dir = args.out if args.out.is_absolute() else Path.cwd() / args.out
    check = check_head(repo, lambda line: print(line, file=sys.stderr, flush=True)) if args.check_head else None
    report = build_report(repo, args.base, out_dir, check.lines if check else None)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_text(out_dir / "comment.md", render_markdown(report, inline_images=False, artifacts_url=args.artifacts_url))
    log.info("wrote %s (%d images)", out_dir / "report.md", len(report.figures))
    judgement = report.judgement
    log.info("verdict against %s: %s (%s)", args.base, headline(judgement), judgement.reason)

    if check is not None and check.problem:
        print(f"nothing judged against {args.base}: {check.problem}", file=sys.stderr)
        return 2
    status = exit_status(judgement.verdict)
    if not args.fail_on_regression or status == 0:
        return 0
    if status == 1:
        print(f"may be worse than {args.base} by as much as matters: {headline(judgement)}", file=sys.stderr)
    else:
        print(f"{judgement.verdict} against {args.base}: {judgement.reason}; no regression could be judged",
              file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    status = 0

    def work(arguments: Sequence[str] | None) -> None:
        nonlocal status
        status = generate(arguments)

    # run() turns a UserError into one line and exit status 2; otherwise the report's own status.
    return run(work, argv) or status


if __name__ == "__main__":
    sys.exit(main())
