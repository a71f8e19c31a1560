"""`python -m pipeline.run.dvc_run [TARGET]`: `dvc repro [TARGET]`, then `dvc status --json`.

Both are DVC's own commands, run by DVC's own entry point; they share one interpreter and one
import of DVC, which is about a third of a no-op run's cost. Between the two, a marker line
tells the reader where DVC's repro output ends and the status JSON begins.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

STATUS_MARKER = "--- dvc status --json ---"


def main(argv: Sequence[str] | None = None) -> int:
    from dvc.cli import main as dvc

    target = list(sys.argv[1:] if argv is None else argv)[:1]
    returncode = dvc(["repro", *target])
    if returncode != 0:
        return returncode
    print(STATUS_MARKER, flush=True)
    return dvc(["status", "--json", *(["--with-deps", *target] if target else [])])


if __name__ == "__main__":
    sys.exit(main())
