"""Create or update the pull request's one report comment, found again by its hidden marker.

    python -m pipeline.post_comment --repo OWNER/NAME --pr 12 report/comment.md

Talks to GitHub through `gh api` (the GitHub CLI, preinstalled on Actions runners; locally
`gh auth login` or GH_TOKEN). Set GH to use another gh executable. Exit status 2 when the file,
the marker, the arguments or a gh call is wrong, with gh's message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import UserError, run
from pipeline.report import MARKER

# GitHub refuses comment bodies over 65,536 characters.
MAX_BODY = 65_536


def marked_comment_id(comments: Sequence[dict]) -> int | None:
    """The first comment holding the marker; later duplicates (a race of two runs) are left alone."""
    for comment in comments:
        if MARKER in (comment.get("body") or ""):
            return comment["id"]
    return None


def _gh(*args: str, payload: dict | None = None) -> str:
    command = [os.environ.get("GH", "gh"), "api", *args]
    try:
        result = subprocess.run(command, input=json.dumps(payload) if payload is not None else None,
                                capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{command[0]} not found: install the GitHub CLI (https://cli.github.com)") from None
    if result.returncode != 0:
        raise UserError(f"gh api {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def list_comments(repo: str, pr: int) -> list[dict]:
    # --paginate with --jq prints one JSON object per line across all pages.
    output = _gh("--paginate", f"repos/{repo}/issues/{pr}/comments", "--jq", ".[] | {id, body}")
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def post(repo: str, pr: int, body: str) -> str:
    """Update the marked comment if there is one, else create it; returns what was done."""
    comment_id = marked_comment_id(list_comments(repo, pr))
    if comment_id is None:
        _gh("--method", "POST", f"repos/{repo}/issues/{pr}/comments", "--input", "-", payload={"body": body})
        return f"created the report comment on {repo}#{pr}"
    _gh("--method", "PATCH", f"repos/{repo}/issues/comments/{comment_id}", "--input", "-", payload={"body": body})
    return f"updated comment {comment_id} on {repo}#{pr}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.post_comment", description=__doc__.splitlines()[0])
    parser.add_argument("body_path", type=Path, help="the comment text (report/comment.md)")
    parser.add_argument("--pr", type=int, required=True, help="pull request number")
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"),
                        help="OWNER/NAME (default: $GITHUB_REPOSITORY)")
    args = parser.parse_args(argv)
    if not args.repo or "/" not in args.repo:
        raise UserError(f"--repo must be OWNER/NAME, got {args.repo!r} (or set GITHUB_REPOSITORY)")
    try:
        body = args.body_path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"{args.body_path}: cannot read the comment ({error.strerror}); run `make report` first") from None
    if MARKER not in body:
        raise UserError(f"{args.body_path}: has no {MARKER} marker, so the next run could not find the comment")
    if len(body) > MAX_BODY:
        raise UserError(f"{args.body_path}: {len(body):,} characters, over GitHub's {MAX_BODY:,} for a comment")
    print(post(args.repo, args.pr, body))


if __name__ == "__main__":
    sys.exit(run(main))
