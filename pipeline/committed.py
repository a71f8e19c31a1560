"""`make run`'s closing verdict: the workspace's results against the ones committed at HEAD.

Floating-point training is reproducible on one machine (same CPU, threads, torch build), not
across machines: another CPU's SIMD kernels sum in another order, so a fresh clone retrains a
slightly different model. Whether that matters is a question for the same paired statistics
the pull-request report uses (classifier.judging.compare, under HEAD's `compare` policy), not for a
hash: the answer is one of *same bytes*, *reproduces the committed results within noise* (nothing
detected, and nothing as large as matters could hide), *differs from the committed results* (a change
detected, with its verdict), *may differ ..., this test set cannot tell*, or *not comparable*, with its numbers.
"""

from __future__ import annotations

from pathlib import Path

from classifier.judging.compare import NO_CHANGE, SEVERITY, headline, judge
from pipeline.project import MODEL_PATH
from pipeline.results import (ResultsError, compare_policy, git_reader, read_snapshot, same_published_model,
                              workspace_reader)


def against_committed(project: Path, revision: str = "HEAD") -> str:
    """One line: how the workspace's results compare with those committed at `revision`."""
    try:
        committed = read_snapshot(git_reader(project, revision), f"at {revision}")
        current = read_snapshot(workspace_reader(project), "in the workspace")
    except ResultsError as error:
        return f"not comparable with the committed results: {error}"
    if same_published_model(committed.lock, current.lock):
        return f"same bytes as the committed model ({MODEL_PATH} at {revision})"
    if committed.results is None:
        return f"not comparable with the committed results: {revision} has no per-example results"
    if current.results is None:
        return "not comparable with the committed results: the workspace has no per-example results"
    policy, problem = compare_policy(committed.params, f"at {revision}")
    if policy is None:
        return f"not comparable with the committed results: {problem}"
    judgement = judge(committed.results, current.results, policy)
    if judgement.verdict not in SEVERITY:  # new, not comparable, could not judge
        return f"not comparable with the committed results: {judgement.reason}"
    paired = judgement.paired
    numbers = (f"{paired.n:,} paired test images, {paired.base_only} right only in the committed model and "
               f"{paired.head_only} only in this one (McNemar p = {paired.p_value:.2g})")
    if judgement.verdict == NO_CHANGE:
        return f"reproduces the committed results within noise: {headline(judgement)}; {numbers}"
    if judgement.verdict.detected:
        return f"differs from the committed results: {headline(judgement)}; {numbers}"
    return f"may differ from the committed results, this test set cannot tell: {headline(judgement)}; {numbers}"
