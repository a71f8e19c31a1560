"""Pull-request report: what a change did to the model, a base revision against the workspace.

    python -m pipeline.report --base main [--out report] [--fail-on-regression] [--seeds K]

Writes OUT/report.md (images inline), OUT/comment.md (the same text for a pull-request
comment, images pointed at the workflow artifact), the PNG images beside them and
OUT/plots/index.html (`dvc plots diff`). The base is read from git (`git show`: metrics,
per-example results and params are git-tracked), the head is the workspace. Gathering and
judging is pipeline.report.build (under the BASE's `compare` policy), the markdown
pipeline.report.render.

With --check-head (CI: `make pr-report`), nothing the head committed is believed: the report runs
again from a git worktree of the base (its code and `compare` policy), fetches the model the head's
dvc.lock records from the DVC cache or the remote the BASE names (checked by md5), or trains it with
the head's code when it cannot, and scores it with the base's evaluate on the base's test images
(pipeline.report.head). `--handed-over DIR` gives the model an untrusted job trained, and then no
code of the head runs here; `--repo` names the head's checkout when it is not the current folder.

With --seeds K, a Recipe (K seeds) section beside the verdict: the base's params and the head's, each
trained with K training seeds and judged seed by seed (pipeline.report.recipe); with --check-head,
trained by the base's code. The exit status stays the model verdict's.

Exit status: 0 report written; with --fail-on-regression, 1 when the head may be worse by as much
as matters (the verdict is *worse by more than matters*, *worse, perhaps by enough to matter*, or
*cannot tell* with a worsening that matters inside the interval; classifier.judging.compare.Verdict.fails),
and 2 when nothing could be judged (*not comparable*: different test sets, or the head trained on
the base's test images; *could not judge*: the base is not in the clone, or its results or policy
cannot be read; with --check-head, results the head committed that are not its model's, or no model
to score). 2 also for a problem to fix first (no results in the workspace, not a git repo). The
status is also written to OUT/exit-status: `make` exits 2 for any failing command, so `make
pr-report` tells 1 from 2 only there (and in the line it prints).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import UserError, run
from classifier.judging.compare import exit_status, headline, seeds_problem
from classifier.files import atomic_write_text
from pipeline.report.build import build_report
from pipeline.report.changes import repo_root, resolve
from pipeline.report.head import BASE_TREE_ENV, base_env, check_head, judged_reader, running_from
from pipeline.report.render import render_markdown
from pipeline.results import ResultsError, git, git_reader, read_snapshot

log = logging.getLogger("report")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare the workspace with (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder to write into (default: %(default)s)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 when the head may be worse by as much as matters, 2 when base and head could not be compared")
    parser.add_argument("--artifacts-url", help="where comment.md says the images are (the CI run's artifacts page)")
    parser.add_argument("--check-head", action="store_true",
                        help="judge CI's own scoring of the head's model with the base's code (pipeline.report.head; make pr-report)")
    parser.add_argument("--handed-over", type=Path, metavar="DIR",
                        help="with --check-head: the head's model.pth, model.json and manifest.csv, trained by an untrusted "
                             "job (make pr-model); the head's code is then never run here")
    parser.add_argument("--repo", type=Path, help="the head's checkout (default: the current folder)")
    parser.add_argument("--seeds", type=int, metavar="K",
                        help="also judge the recipe: K training seeds of the base's params and K of the head's, "
                             "paired by seed (pipeline.report.recipe; K >= 3)")
    args = parser.parse_args(argv)
    if args.seeds is not None and (problem := seeds_problem(args.seeds)):
        raise UserError(f"--seeds {args.seeds}: {problem}")  # before any work: nothing to judge with so few
    return args


def absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path.cwd() / path


def from_base(repo: Path, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run this command again from a git worktree of the base, so its code and policy judge the head."""
    sha = resolve(repo, args.base)
    if sha is None:
        raise UserError(f"the base revision {args.base!r} is not in this clone (`git fetch origin`), so nothing is judged")
    scratch = Path(tempfile.mkdtemp(prefix="pr-report-base-"))
    tree = scratch / "base"
    try:
        added = git(repo, "worktree", "add", "--detach", str(tree), sha)
        if added.returncode != 0:
            raise UserError(f"no worktree of the base {args.base}: {added.stderr.strip()[-300:]}")
        head_module = tree / "pipeline" / "report" / "head.py"
        if not head_module.is_file() or BASE_TREE_ENV not in head_module.read_text(encoding="utf-8"):
            raise UserError(f"the base {args.base} ({sha[:10]}) predates CI's own scoring (issue 38): its code cannot "
                            "judge the head, so nothing is judged")
        again = [*argv, "--repo", str(repo), "--out", str(absolute(args.out))]
        if args.handed_over is not None:
            again += ["--handed-over", str(absolute(args.handed_over))]
        # -P: the base's worktree (PYTHONPATH) is where `pipeline` and `classifier` come from, never the current folder.
        return subprocess.run([sys.executable, "-P", "-m", "pipeline.report", *again], cwd=tree,
                              env=base_env(tree)).returncode
    finally:
        git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)


def generate(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    repo = repo_root(absolute(args.repo) if args.repo else Path.cwd())
    out_dir = absolute(args.out)
    if args.check_head and not os.environ.get(BASE_TREE_ENV):
        return from_base(repo, args, argv)

    problem, check, read_head, prepared, tree = None, None, None, None, None
    scratch = Path(tempfile.mkdtemp(prefix="pr-report-"))
    try:
        if args.check_head:
            tree = Path(os.environ[BASE_TREE_ENV])
            if not running_from(tree):
                raise UserError(f"the judging code is not the base's: pipeline and classifier are not imported from {tree}")
            try:
                base = read_snapshot(git_reader(repo, resolve(repo, args.base) or args.base), f"at {args.base}")
            except ResultsError as error:
                raise UserError(f"the base's results cannot be read, so nothing is judged: {error}") from None
            fingerprint = (base.evaluation or {}).get("test_fingerprint")
            check = check_head(repo, tree, fingerprint, scratch, lambda line: print(line, file=sys.stderr, flush=True),
                               absolute(args.handed_over) if args.handed_over else None)
            problem, prepared = check.problem, check.prepared
            read_head = judged_reader(repo, check.scored) if check.scored is not None and problem is None else None
        report = build_report(repo, args.base, out_dir, check.lines if check else None, read_head, prepared, problem)
        if args.seeds is not None and problem is None:
            from pipeline.report.recipe import recipe_section
            report.recipe = recipe_section(repo, report.base_sha, report.policy, args.seeds, out_dir,
                                           str(report.judgement.verdict), lambda line: print(line, file=sys.stderr, flush=True),
                                           base_tree=tree if args.check_head else None, prepared=prepared)
        atomic_write_text(out_dir / "report.md", render_markdown(report))
        atomic_write_text(out_dir / "comment.md", render_markdown(report, inline_images=False, artifacts_url=args.artifacts_url))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("wrote %s (%d images)", out_dir / "report.md", len(report.figures))
    judgement = report.judgement
    log.info("verdict against %s: %s (%s)", args.base, headline(judgement), judgement.reason)

    if problem is not None:
        print(f"nothing judged against {args.base}: {problem}", file=sys.stderr)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    status = 0

    def work(arguments: Sequence[str]) -> None:
        nonlocal status
        status = generate(arguments)

    # run() turns a UserError into one line and exit status 2; otherwise the report's own status.
    status = run(work, argv) or status
    # The outermost run writes it, once: `make` exits 2 for any failing command, so there 1 and 2 look alike.
    out = parse_out(argv)
    if out is not None and not os.environ.get(BASE_TREE_ENV):
        atomic_write_text(out / "exit-status", f"{status}\n")
    return status


def parse_out(argv: Sequence[str]) -> Path | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", type=Path, default=Path("report"))
    known, _ = parser.parse_known_args(argv)
    return absolute(known.out) if "-h" not in argv and "--help" not in argv else None


if __name__ == "__main__":
    sys.exit(main())
