"""The folder source under real `dvc repro`: the snapshot stage notices a grown folder, splits never move, a
bad image stops prepare, and what DVC stores for the images is a few packs, not one object per file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from classifier.export_folder import export
from classifier.files import file_digest
from tests.conftest import commit_all, dvc, write_params

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
