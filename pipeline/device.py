"""The one device knob: params.yaml's `train.device`.

The train stage depends on the `train` params, so the class is part of DVC's cache key: a
model trained on `cpu` never satisfies a run that asks for `cuda`. `auto` (cuda when there
is one, else cpu) is decided when the stage runs, so a model cached under `auto` on one
machine also satisfies `auto` on another; the model card's `trained_on` says which it was.

Only an explicit request changes the file (`make run DEVICE=cuda`, a work pool's deployment
in its own retrain workspace); a plain run never writes a tracked file. What a retrain or a sweep
commits must train on every machine (a merged GPU promotion must not stop `make run` or CI on a
CPU): a class only some machines have is required of the worker and written as `auto`
(`trained_as`). The edit goes through
ruamel.yaml's round trip, as `dvc exp run -S` does, so comments and layout stay.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from pipeline.project import PARAMS_PATH

DEVICE_CLASSES = ("auto", "cpu", "cuda", "mps")


class DeviceError(ValueError):
    """An unknown device class, or a params.yaml without a `train` section."""


def check_device(device: str) -> str:
    if device not in DEVICE_CLASSES:
        raise DeviceError(f"device {device!r} is not one of {', '.join(DEVICE_CLASSES)}")
    return device


# Asked in a subprocess: pipeline/ never imports torch.
_PROBE = {"cuda": "torch.cuda.is_available()", "mps": "torch.backends.mps.is_available()"}


def require_device(device: str | None) -> None:
    """Stop before any work when this machine cannot train on `device` (cuda or mps; a gpu pool's
    worker without CUDA, say): what the train stage would find out only after the data is in."""
    if device not in _PROBE:
        return
    # The forge token is for the retrain's pull request alone (pipeline.run.stages.stage_env keeps it from
    # every DVC and git subprocess; this room is below that one).
    env = {name: value for name, value in os.environ.items() if name != "CLASSIFIER_FORGE_TOKEN"}
    probe = subprocess.run([sys.executable, "-c", f"import torch; print({_PROBE[device]}, 'in torch', torch.__version__)"],
                           env=env, capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.startswith("True"):
        found = probe.stdout.strip() or probe.stderr.strip()[-300:]
        raise DeviceError(f"this machine ({socket.gethostname()}) has no {device} device that torch can use "
                          f"({_PROBE[device]} is {found}); a run asking for {device} needs one. "
                          "Nothing was run, committed or pushed.")


def trained_as(device: str) -> str:
    """The train.device a run on a `device` worker writes: cuda and mps, which only some machines have,
    are required of the worker (require_device) and written as `auto`, which picks them there (cuda,
    then mps, then cpu); so the params, dvc.lock and cache key it commits train anywhere, and the
    model card's `trained_on` says which device it was."""
    return "auto" if device in _PROBE else device


def set_device(project: Path, device: str) -> bool:
    """Make params.yaml's train.device say `device`; returns whether the file changed."""
    check_device(device)
    path = Path(project) / PARAMS_PATH
    yaml = YAML()
    yaml.default_flow_style = False  # DVC's settings for `dvc exp run -S`
    params = yaml.load(path.read_text(encoding="utf-8"))
    train = params.get("train") if params else None
    if train is None:
        raise DeviceError(f"{path}: no `train` section to set train.device in")
    if train.get("device") == device:
        return False  # untouched: an unchanged file keeps `git status` clean
    train["device"] = device
    text = io.StringIO()
    yaml.dump(params, text)
    path.write_text(text.getvalue(), encoding="utf-8")
    return True
