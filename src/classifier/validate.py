"""Stage `validate`: check params.yaml before any other stage runs.

    python -m classifier.validate data/params.valid

DVC deletes a stage's outputs just before it runs the stage's command, so a bad value
found by the train stage itself would cost the previous checkpoint. This stage comes
first in the graph: bad params stop `dvc repro` here, before anything is deleted. Its
output is a constant marker, so a params change that passes does not make the
download stage rerun.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import run, stage_parser
from classifier.files import atomic_write_text
from classifier.params import load_params


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("validate", __doc__.splitlines()[0])
    parser.add_argument("marker_path", type=Path, help="marker file written when the params are valid")
    args = parser.parse_args(argv)
    load_params(args.params)
    atomic_write_text(args.marker_path, "params valid\n")


if __name__ == "__main__":
    sys.exit(run(main))
