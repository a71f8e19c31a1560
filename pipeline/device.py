"""The device class a run pins the train stage to, kept in device.yaml.

dvc.yaml reads device.yaml through `vars` and puts the class on the train stage's command
line (`--device ${device}`), so the class is part of the stage as dvc.lock records it: a
model trained on one class never satisfies the cache of another. `auto` pins nothing and
defers to params.yaml's `train.device`, which is what a plain `dvc repro` does.
"""

from __future__ import annotations

from pathlib import Path

import yaml

DEVICE_FILE = "device.yaml"
DEVICE_CLASSES = ("auto", "cpu", "cuda")

_TEMPLATE = """\
# The device class the train stage is pinned to: auto | cpu | cuda. Written by the Prefect flows
# (`make run DEVICE=cuda`, the gpu work pool's deployment); dvc.yaml passes it to the train stage,
# so changing it retrains. auto defers to params.yaml's train.device.
device: {device}
"""


class DeviceError(ValueError):
    """An unknown device class, or a device.yaml that cannot be read."""


def check_device(device: str) -> str:
    if device not in DEVICE_CLASSES:
        raise DeviceError(f"device {device!r} is not one of {', '.join(DEVICE_CLASSES)}")
    return device


def pinned_device(project: Path) -> str | None:
    """The class device.yaml pins now, or None when the project has no device.yaml."""
    path = Path(project) / DEVICE_FILE
    if not path.exists():
        return None
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DeviceError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or "device" not in document:
        raise DeviceError(f"{path}: expected a `device:` key")
    return str(document["device"])


def pin_device(project: Path, device: str) -> bool:
    """Make device.yaml say `device`; returns whether the file changed (and so the train stage)."""
    check_device(device)
    if pinned_device(project) == device:
        return False  # untouched: an unchanged file keeps `git status` clean
    if not (Path(project) / DEVICE_FILE).exists():
        if device == "auto":
            return False  # nothing to pin, nothing to undo
        raise DeviceError(f"{Path(project) / DEVICE_FILE} is missing, so the train stage cannot be pinned to {device}")
    (Path(project) / DEVICE_FILE).write_text(_TEMPLATE.format(device=device), encoding="utf-8")
    return True
