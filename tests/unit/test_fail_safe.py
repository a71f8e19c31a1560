"""Untrusted model files, failed writes and interrupted downloads: each fails safe, nothing lost."""

import ast
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classifier.data.download import download
from classifier.params import validate_params
from tests.conftest import PROJECT_ROOT, idx_bytes, subprocess_env, tiny_images
from tests.mirror import Mirror, MirrorScript
from tests.unit.test_save_and_predict import digit_png, run_save, stage_files, write_candidate  # noqa: F401

SOURCE = PROJECT_ROOT / "src" / "classifier"


class CreatesAFile:
    """Unpickling this calls open(path, "w"): proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_predict_refuses_a_malicious_pickle_even_when_its_card_matches(stage_files, tmp_path):
    run_save(stage_files)
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"linear_relu_stack.0.weight": CreatesAFile(marker)}, buffer)
    (stage_files / "model.pth").write_bytes(buffer.getvalue())
    card = json.loads((stage_files / "model.json").read_text())
    card["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()  # an attacker controls both files
    (stage_files / "model.json").write_text(json.dumps(card))
    digit_png(stage_files / "one.png")
    result = subprocess.run([sys.executable, "-m", "classifier.training.predict", str(stage_files / "model.pth"),
                             str(stage_files / "one.png")], env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 2
    assert "refused to load (weights-only)" in result.stderr
    assert not marker.exists()


def torch_load_calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


def test_every_loader_goes_through_one_weights_only_call():
    calls = {path.name: torch_load_calls(path) for path in [*SOURCE.rglob("*.py"), *(PROJECT_ROOT / "pipeline").glob("*.py")]}
    assert {name for name, found in calls.items() if found} == {"serialization.py"}
    for call in calls["serialization.py"]:
        keywords = {keyword.arg: keyword.value for keyword in call.keywords}
        assert isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_evaluate_refuses_a_malicious_candidate(stage_files, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"linear_relu_stack.0.weight": CreatesAFile(marker)}, stage_files / "candidate.pth")
    result = subprocess.run(
        [sys.executable, "-m", "classifier.training.evaluate", str(stage_files), str(stage_files / "candidate.pth"),
         str(stage_files / "candidate.json"), *(str(tmp_path / name) for name in ("m.json", "e.json", "c.csv", "p.csv"))],
        env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "refused to load" in result.stderr
    assert not marker.exists()


def run_save_in_child(folder: Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "classifier.training.save", "--params", str(folder / "params.yaml"),
         str(folder / "candidate.pth"), str(folder / "candidate.json"), str(folder / "metrics.json"), str(folder / "out/model.pth"),
         str(folder / "out/model.json")],
        env=subprocess_env(), capture_output=True, text=True, preexec_fn=preexec)


def publish_then_change_weights(folder: Path) -> tuple[bytes, str]:
    assert run_save_in_child(folder).returncode == 0
    write_candidate(folder, weights_seed=7)  # the next model differs
    return (folder / "out/model.pth").read_bytes(), (folder / "out/model.json").read_text()


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_a_write_that_fails_half_way_keeps_the_old_model(stage_files):
    """The file-size limit makes the kernel refuse the write part-way through, as a full disk would."""
    old_model, old_card = publish_then_change_weights(stage_files)
    limit = len(old_model) // 2

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_save_in_child(stage_files, limit_file_size)
    assert result.returncode == 2
    assert "model.pth: write failed" in result.stderr and "Traceback" not in result.stderr
    assert (stage_files / "out/model.pth").read_bytes() == old_model
    assert (stage_files / "out/model.json").read_text() == old_card
    assert sorted(path.name for path in (stage_files / "out").iterdir()) == ["model.json", "model.pth"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.slow  # starts a subprocess or a loopback server
def test_a_full_file_system_keeps_the_old_model(stage_files):
    out = stage_files / "out"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(out)]).returncode != 0:
        pytest.skip("this sandbox cannot mount a tmpfs")
    try:
        old_model, old_card = publish_then_change_weights(stage_files)
        free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
        (out / "filler").write_bytes(b"\0" * max(free - len(old_model) // 2, 0))
        result = run_save_in_child(stage_files)
        assert result.returncode == 2
        assert "write failed (No space left on device)" in result.stderr
        assert (out / "model.pth").read_bytes() == old_model
        assert (out / "model.json").read_text() == old_card
        assert sorted(path.name for path in out.iterdir()) == ["filler", "model.json", "model.pth"]
    finally:
        subprocess.run(["umount", str(out)], check=True)


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_a_download_killed_mid_file_leaves_no_file_and_the_next_run_cleans_up(tmp_path, default_params):
    """A mirror that sends half a file and stalls; the download process is killed meanwhile."""
    body = idx_bytes(tiny_images(2000)[0])
    name = "train-images-idx3-ubyte.gz"
    raw = tmp_path / "raw"
    raw.mkdir()
    script = MirrorScript(files={name: body}, truncate_to={name: len(body) // 2}, stall_seconds=30)
    with Mirror(script) as mirror:
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from pathlib import Path; from classifier.data.download import download_file, RemoteFile;"
             f"download_file(RemoteFile({name!r}, 'x' * 32), [{mirror.url!r}], Path({str(raw)!r}))"],
            env=subprocess_env())
        deadline = time.monotonic() + 60
        while not any(path.stat().st_size for path in raw.glob(".*.part")):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.02)
        child.kill()
        child.wait()
    assert not (raw / name).exists()
    assert list(raw.glob(".*.part"))  # the killed process could not clean up after itself...

    default_params["data"]["dataset"] = "mnist-5k"
    download(validate_params(default_params).data, raw)
    assert not list(raw.glob(".*.part"))  # ...so the next download does
