import hashlib
import subprocess
import sys

import pytest
import yaml

from classifier.datasets import BUNDLED_MNIST_5K, DATASETS, RemoteFile
from classifier.data.download import MIRRORS_ENV, DownloadError, copy_bundled, download_file, mirrors_for
from classifier.files import file_digest
from classifier.data.prepare import read_idx
from tests.conftest import PROJECT_ROOT, idx_bytes, subprocess_env, tiny_images
from tests.mirror import Mirror, MirrorScript

NAME = "train-images-idx3-ubyte.gz"


@pytest.fixture
def idx_file() -> tuple[bytes, RemoteFile]:
    body = idx_bytes(tiny_images(20)[0])
    return body, RemoteFile(NAME, hashlib.md5(body).hexdigest())


def test_bundled_mnist_5k_is_copied_and_verified(tmp_path):
    target = copy_bundled(tmp_path)
    assert target.name == BUNDLED_MNIST_5K
    assert file_digest(target) == "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_a_mirror_that_fails_then_succeeds(tmp_path, idx_file):
    body, remote = idx_file
    script = MirrorScript(files={NAME: body}, failures_before_success={NAME: 2})
    with Mirror(script) as mirror:
        path = download_file(remote, [mirror.url], tmp_path, attempts_per_mirror=3, backoff_seconds=0.01)
    assert script.requests[NAME] == 3
    assert path.read_bytes() == body
    assert read_idx(path, 3).shape == (20, 28, 28)  # the real IDX format survives the trip
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no temp files left


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_the_next_mirror_is_tried_when_one_is_down(tmp_path, idx_file):
    body, remote = idx_file
    with Mirror(MirrorScript()) as empty, Mirror(MirrorScript(files={NAME: body})) as good:
        path = download_file(remote, [empty.url, good.url], tmp_path, attempts_per_mirror=1, backoff_seconds=0)
    assert path.read_bytes() == body


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_wrong_checksum_names_url_expected_and_actual(tmp_path, idx_file):
    body, remote = idx_file
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    script = MirrorScript(files={NAME: tampered})
    with Mirror(script) as mirror, pytest.raises(DownloadError) as caught:
        download_file(remote, [mirror.url], tmp_path, backoff_seconds=0)
    message = str(caught.value)
    assert f"{mirror.url}{NAME}" in message
    assert f"md5 {hashlib.md5(tampered).hexdigest()}, expected {remote.md5}" in message
    assert script.requests[NAME] == 1  # the same mirror would send the same bytes: not retried
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_truncated_file_is_retried_and_never_left_behind(tmp_path, idx_file):
    body, remote = idx_file
    script = MirrorScript(files={NAME: body}, truncate_to={NAME: len(body) // 2})
    with Mirror(script) as mirror, pytest.raises(DownloadError) as caught:
        download_file(remote, [mirror.url], tmp_path, attempts_per_mirror=2, backoff_seconds=0)
    assert script.requests[NAME] == 2
    assert "attempt 2/2" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts a subprocess or a loopback server
def test_download_stage_end_to_end_against_a_loopback_mirror(tmp_path):
    """The real stage command with its mirror from CLASSIFIER_MIRRORS: files served, but not the real
    MNIST, so the pinned checksums reject them; the error names the URL and the raw folder stays empty."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    images, labels = tiny_images(10)
    files = {"train-images-idx3-ubyte.gz": idx_bytes(images), "train-labels-idx1-ubyte.gz": idx_bytes(labels)}
    with Mirror(MirrorScript(files=files)) as mirror:
        params["data"]["dataset"] = "mnist"
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        result = subprocess.run([sys.executable, "-m", "classifier.data.download", "data/raw"], cwd=tmp_path,
                                env={**subprocess_env(), MIRRORS_ENV: mirror.url.rstrip("/")},
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{mirror.url}train-images-idx3-ubyte.gz: md5" in result.stderr
    assert "expected f68b3c2dcbeaaa9fbdd348bbdeb94873" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "data" / "raw").iterdir()) == []


def test_each_remote_set_has_its_own_https_mirror_and_the_override_replaces_them():
    for spec in DATASETS.values():
        if spec.remote_files:
            assert spec.mirrors and all(url.startswith("https://") and url.endswith("/") for url in spec.mirrors)
            assert mirrors_for(spec, None) == list(spec.mirrors) == mirrors_for(spec, "  ")
    mnist = DATASETS["mnist"]
    assert mirrors_for(mnist, "http://127.0.0.1:8000/m https://example.com/mnist/") == [
        "http://127.0.0.1:8000/m/", "https://example.com/mnist/"]


@pytest.mark.parametrize("url", ["http://example.com/mnist/", "ftp://127.0.0.1/", "file:///tmp/x/"])
def test_an_override_mirror_must_be_https_except_on_loopback(url):
    with pytest.raises(DownloadError, match=rf"CLASSIFIER_MIRRORS = .*{url!r} must be an https:// URL"):
        mirrors_for(DATASETS["mnist"], f"https://example.com/ {url}")
