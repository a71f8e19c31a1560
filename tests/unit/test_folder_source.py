"""The folder source (ImageFolder layout), the one image function, and hash-based splits that never move."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from classifier.cli import UserError
from classifier.download import DownloadError, copy_folder
from classifier.images import read_image, to_model_input
from classifier.params import ParamsError, validate_params
from classifier.predict import read_image as predict_read_image
from classifier.prepare import prepare
from tests.conftest import tiny_images


def folder_params(default_params, **data):
    return validate_params({**default_params, "data": {**default_params["data"], "dataset": "folder", **data}})


def export_tree(root, images, labels, start=0):
    """images[i] as root/<label>/<start + i>.png"""
    for index, (image, label) in enumerate(zip(images, labels), start=start):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(root / str(label) / f"{index:05d}.png")


def read_manifest(prepared) -> pd.DataFrame:
    return pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)


def test_images_of_any_size_and_mode_become_grayscale_uint8_of_image_size(tmp_path, default_params):
    root = tmp_path / "tree"
    for name in ("cat", "dog"):
        (root / name / "deeper").mkdir(parents=True)
    Image.new("RGB", (64, 40), (200, 10, 10)).save(root / "cat" / "a.jpg")
    Image.new("RGBA", (10, 10), (0, 0, 255, 128)).save(root / "cat" / "deeper" / "b.PNG")
    Image.new("L", (28, 28), 7).save(root / "dog" / "c.bmp")
    Image.new("I;16", (32, 32), 300).save(root / "dog" / "d.tif")
    (root / "dog" / "notes.txt").write_text("not an image: ignored")
    (root / "README.md").write_text("files beside the class folders: ignored")
    params = folder_params(default_params, image_size=16, test_fraction=0.25, val_fraction=0.25)

    meta = prepare(root, params.data, 0, tmp_path / "prepared")

    assert meta["classes"] == ["cat", "dog"] and meta["image_shape"] == [16, 16]
    table = read_manifest(tmp_path / "prepared")
    assert sorted(table["path"]) == ["cat/a.jpg", "cat/deeper/b.PNG", "dog/c.bmp", "dog/d.tif"]
    assert list(table.columns) == ["path", "class", "sha256", "split"]
    for split in ("train", "val", "test"):
        images = np.load(tmp_path / "prepared" / f"{split}_images.npy")
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16)
    assert sum(meta["samples"].values()) == 4 and meta["fingerprint"].startswith("sha256:")


def test_prepare_and_predict_read_a_file_through_the_same_function(tmp_path):
    Image.new("RGB", (50, 30), (90, 160, 20)).save(tmp_path / "x.png")
    expected = to_model_input(Image.open(tmp_path / "x.png"), 28)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png", 28), expected)
    np.testing.assert_array_equal(predict_read_image(tmp_path / "x.png", [28, 28]).numpy(), expected)


@pytest.mark.parametrize("problem, message", [
    ("corrupt", r"images/1/00001\.png .*: not an image file, or a corrupt one"),
    ("truncated", r"images/1/00001\.png .*: cannot decode the image"),
    ("empty class", r"tree/2: class folder '2' holds no image files"),
    ("one class", r"tree: needs at least two class folders .* found only '0'"),
])
def test_a_bad_tree_stops_prepare_naming_the_file_or_folder_and_writes_nothing(tmp_path, default_params, problem,
                                                                               message):
    root = tmp_path / "tree"
    images, labels = tiny_images(4)
    export_tree(root, images, labels % 2)
    bad = root / "1" / "00001.png"
    if problem == "corrupt":
        bad.write_bytes(b"\x89PNG but not really")
    elif problem == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    elif problem == "empty class":
        (root / "2").mkdir()
        (root / "2" / "readme.txt").write_text("no images here")
    else:
        for path in (root / "1").iterdir():
            path.unlink()
        (root / "1").rmdir()
    with pytest.raises(UserError, match=message):
        prepare(root, folder_params(default_params, folder="images").data, 0, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_adding_images_never_moves_an_existing_one_between_splits(tmp_path, default_params):
    images, labels = tiny_images(600)
    images[:, 0, 0] = np.arange(600) % 256
    images[:, 0, 1] = np.arange(600) // 256
    params = folder_params(default_params)
    root = tmp_path / "tree"
    export_tree(root, images[:360], labels[:360])
    prepare(root, params.data, 42, tmp_path / "first")
    export_tree(root, images[360:], labels[360:], start=360)
    second_meta = prepare(root, params.data, 42, tmp_path / "second")

    first, second = read_manifest(tmp_path / "first"), read_manifest(tmp_path / "second")
    merged = first.merge(second, on="sha256", suffixes=("_first", "_second"))
    assert len(merged) == 360 and (merged["split_first"] == merged["split_second"]).all()
    assert second_meta["samples"] == second["split"].value_counts().to_dict() | {}
    assert sum(second_meta["samples"].values()) == 600
    # Another seed draws another split.
    prepare(root, params.data, 7, tmp_path / "other-seed")
    assert not (read_manifest(tmp_path / "other-seed")["split"] == second["split"]).all()
    first_meta = json.loads((tmp_path / "first" / "meta.json").read_text())
    assert first_meta["fingerprint"] != second_meta["fingerprint"]


def test_the_download_stage_copies_the_image_files_of_a_local_tree(tmp_path):
    images, labels = tiny_images(6)
    export_tree(tmp_path / "tree", images, labels % 3)
    (tmp_path / "tree" / "0" / "notes.txt").write_text("skip me")
    out = tmp_path / "data" / "raw"
    out.mkdir(parents=True)
    (out / "stale.png").write_bytes(b"from the last run")
    copy_folder(str(tmp_path / "tree"), out)
    copied = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert copied == sorted(str(path.relative_to(tmp_path / "tree")) for path in (tmp_path / "tree").rglob("*.png"))
    assert [path.name for path in out.parent.iterdir()] == ["raw"]  # no partial copy left beside it
    with pytest.raises(DownloadError, match=r"data.folder '.*missing': no such folder"):
        copy_folder(str(tmp_path / "missing"), tmp_path / "elsewhere")


@pytest.mark.parametrize("folder", ["", " images", "a${b}", 'say "hi"', "two\nlines"])
def test_a_folder_that_cannot_be_templated_into_dvc_yaml_is_refused(default_params, folder):
    with pytest.raises(ParamsError, match=r"data.folder"):
        folder_params(default_params, folder=folder)
