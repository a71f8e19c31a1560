"""What a retrain or sweep on a device worker writes into params.yaml trains on every machine (issue 29.3)."""

from __future__ import annotations

import pytest

from pipeline.device import DEVICE_CLASSES, set_device, trained_as


@pytest.mark.parametrize("device", DEVICE_CLASSES)
def test_what_a_worker_commits_trains_on_a_cpu(device):
    # cuda and mps exist only on some machines: written as auto, which picks them where they are.
    assert trained_as(device) in ("auto", "cpu")
    assert trained_as(device) == ("cpu" if device == "cpu" else "auto")


def test_a_gpu_worker_leaves_an_auto_params_file_as_it_is(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  device: auto   # the knob\n")
    assert not set_device(tmp_path, trained_as("cuda"))
    assert set_device(tmp_path, trained_as("cpu"))
    assert (tmp_path / "params.yaml").read_text().split() == ["train:", "device:", "cpu", "#", "the", "knob"]
