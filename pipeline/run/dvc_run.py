"""`python -m pipeline.run.dvc_run [TARGET]`: `dvc repro [TARGET]`, then `dvc status --json`.

Both are DVC's own commands, run by DVC's own entry point; they share one interpreter and one
import of DVC, which is about a third of a no-op run's cost. Between the two, a marker line
tells the reader where DVC's repro output ends and the status JSON begins.

With a default DVC remote that answers, the repro is `dvc repro --pull`: a stage whose outputs are
missing here but otherwise up to date is pulled from the remote, not recomputed (what a fresh clone
of a project with a remote wants), and what the remote lacks is computed. A remote that does not
answer (offline, no credentials) gets one warning line and the plain `dvc repro`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

STATUS_MARKER = "--- dvc status --json ---"


def remote_problem() -> str | None:
    """Why `dvc repro --pull` cannot be used here: '' when there is no default remote, a sentence when
    it does not answer; None when it answers."""
    from dvc.repo import Repo

    with Repo() as repo:
        name = repo.config["core"].get("remote")
        if not name:
            return ""
        try:
            odb = repo.cloud.get_remote_odb(name, "pull")
            odb.fs.exists(odb.path)  # the cheapest question that needs the remote and its credentials
        except Exception as error:  # noqa: BLE001  (any failure means: compute here, as without a remote)
            detail = str(error).strip().splitlines()[-1:] or [type(error).__name__]
            return f"the DVC remote {name!r} does not answer ({detail[0]})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from dvc.cli import main as dvc

    target = list(sys.argv[1:] if argv is None else argv)[:1]
    problem = remote_problem()
    if problem:
        print(f"warning: {problem}: computing here whatever is missing", flush=True)
    returncode = dvc(["repro", *(["--pull"] if problem is None else []), *target])
    if returncode != 0:
        return returncode
    print(STATUS_MARKER, flush=True)
    return dvc(["status", "--json", *(["--with-deps", *target] if target else [])])


if __name__ == "__main__":
    sys.exit(main())
