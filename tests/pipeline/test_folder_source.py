"""The folder source under real `dvc repro`: the snapshot stage notices a grown folder, splits never move, a
bad image stops prepare, and what DVC stores for the images is a few packs, not one object per file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from classifier.data.export_folder import export
from classifier.files import file_digest
from tests.conftest import commit_all, dvc, write_params
from tests.s3_server import BUCKET, READ_CREDENTIALS, s3_server

pytestmark = pytest.mark.slow


def export_mnist_5k(root, start: int, stop: int) -> None:
    """MNIST-5k images start..stop-1 (interleaved: every digit in turn) as root/<digit>/<row>.png."""
    export(root, start, stop)


def manifest(project) -> pd.DataFrame:
    return pd.read_csv(project / "data/prepared/manifest.csv", dtype=str, keep_default_na=False)


def test_a_grown_folder_reruns_the_pipeline_and_no_image_changes_split(project, tmp_path):
    tree = tmp_path / "digits"
    export_mnist_5k(tree, 0, 600)
    write_params(project, **{"data.dataset": "folder", "data.folder": str(tree)})
    commit_all(project, "train on a folder")
    dvc(project, "repro", "-q")
    first = manifest(project)
    assert len(first) == 600 and json.loads((project / "models/model.json").read_text())["data_fingerprint"]

    assert "changed deps" not in dvc(project, "status").stdout
    raw = sorted(path.name for path in (project / "data/raw").iterdir())
    assert len(raw) == 17 and "files.csv" in raw  # 16 packs and the table: 17 DVC objects for 600 images
    # Nothing new: only the snapshot runs, its listing is unchanged, and DVC skips everything after it.
    unchanged = dvc(project, "repro").stdout
    assert "Running stage 'snapshot'" in unchanged and "Stage 'download' didn't change, skipping" in unchanged
    assert "Running stage 'prepare'" not in unchanged

    export_mnist_5k(tree, 600, 1000)
    grown = dvc(project, "repro")  # the snapshot's listing changed: DVC reruns what follows it
    assert "Running stage 'download'" in grown.stdout and "Running stage 'prepare'" in grown.stdout
    assert "1000 files listed, 400 read" in grown.stdout + grown.stderr  # only the new images are read
    second = manifest(project)
    assert len(second) == 1000
    moved = first.merge(second, on="path", suffixes=("_first", "_second"))
    assert len(moved) == 600 and (moved["split_first"] == moved["split_second"]).all()
    card = json.loads((project / "models/model.json").read_text())
    assert card["samples"] == second["split"].value_counts().to_dict()
    assert card["data_fingerprint"] == json.loads((project / "data/prepared/meta.json").read_text())["fingerprint"]

    # A corrupt image stops prepare with its name; train, evaluate and save never run.
    model, metrics = file_digest(project / "models/candidate.pth"), (project / "metrics/metrics.json").read_text()
    (tree / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    failed = dvc(project, "repro", check=False)
    assert failed.returncode != 0
    assert f"{tree}/3/broken.png" in failed.stdout + failed.stderr
    assert "Running stage 'train'" not in failed.stdout
    assert file_digest(project / "models/candidate.pth") == model
    assert (project / "metrics/metrics.json").read_text() == metrics


def test_the_default_stays_mnist_5k_offline_with_a_hash_split(reproduced_project):
    project = reproduced_project  # the one-epoch project after a full `dvc repro`
    table = manifest(project)
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert meta["dataset"] == "mnist-5k" and len(table) == 5000
    assert meta["samples"] == table["split"].value_counts().to_dict()
    assert np.isclose(meta["samples"]["test"] / 5000, 0.2, atol=0.03)


@pytest.fixture
def s3_folder(tmp_path, monkeypatch):
    """tests/s3_server.py's S3-compatible server on loopback, and the environment DVC's s3 file system
    needs to reach it (data.folder carries no endpoint): (the folder's URL, a boto3 client)."""
    with s3_server(tmp_path) as server:
        for name, value in {**READ_CREDENTIALS, "AWS_ENDPOINT_URL": server.endpoint}.items():
            monkeypatch.setenv(name, value)
        yield f"s3://{BUCKET}/digits", server.client()


def test_a_folder_at_an_s3_url_is_listed_not_downloaded_to_tell_what_is_new(project, tmp_path, s3_folder):
    url, client = s3_folder
    tree = tmp_path / "digits"
    export_mnist_5k(tree, 0, 400)

    for path in tree.rglob("*.png"):
        client.upload_file(str(path), BUCKET, f"digits/{path.relative_to(tree)}")
    write_params(project, **{"data.dataset": "folder", "data.folder": url})
    commit_all(project, "train on a bucket")
    first = dvc(project, "repro", "prepare")
    assert "400 files listed, 400 read" in first.stdout + first.stderr
    unchanged = dvc(project, "repro", "prepare").stdout
    assert "Stage 'download' didn't change, skipping" in unchanged

    export_mnist_5k(tree, 400, 500)
    new_rows = {str(path.relative_to(tree)) for path in tree.rglob("*.png")} - set(manifest(project)["path"])
    for relative in new_rows:
        client.upload_file(str(tree / relative), BUCKET, f"digits/{relative}")
    grown = dvc(project, "repro", "prepare")
    assert "500 files listed, 100 read" in grown.stdout + grown.stderr
    assert len(manifest(project)) == 500
