"""On PYTHONPATH for a test's `dvc repro` only: the train stage stops itself (SIGSTOP) right
after writing its first resume checkpoint, and says so in a marker file.

Tests then act at a known point of training, whatever the machine's speed: kill it there, or
start a second run against a workspace that is certainly busy. Any other process is untouched.
"""

import os
import signal
import sys
from pathlib import Path

MARKER = os.environ.get("PAUSE_AFTER_CHECKPOINT_MARKER")

if MARKER and sys.orig_argv[1:3] == ["-m", "classifier.training.train"]:
    import classifier.training.serialization as serialization

    real_save = serialization.save_atomically

    def save_then_pause(obj, path):
        data = real_save(obj, path)
        if Path(path).parent.name == "train-resume" and not Path(MARKER).exists():
            Path(MARKER).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return data

    serialization.save_atomically = save_then_pause
