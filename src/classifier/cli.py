"""The thin shell every stage's `main` runs in: logging set up, user errors printed, exit codes."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem the user can fix (bad params, bad file, failed download); printed without a traceback."""


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m classifier.{prog}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return parser


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's main; a UserError becomes one line on stderr and exit status 2."""
    if main.__module__ == "__main__":
        # The stage's own process (python -m): what its imports made (torch's are a million objects) lives until
        # it exits, so the garbage collector stops walking it, during the stage and again at exit: 0.4-0.6 s of
        # CPU less per process that imports torch. A caller's own process (a test's run(main)) is left alone.
        gc.freeze()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a missing or unreadable input: the message names the file
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
