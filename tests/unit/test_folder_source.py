"""The folder source (ImageFolder layout), the one image function, and hash-based splits that never move."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import classifier.data.download
import classifier.data.prepare
from classifier.cli import UserError
from classifier.data.download import download, read_files_table
from classifier.data.images import read_image, to_model_input
from classifier.params import ParamsError, validate_params
from classifier.training.predict import read_image as predict_read_image
from classifier.data.prepare import pixel_statistics, prepare
from classifier.data.shards import SHARDS, pack_name, read_pack
from classifier.data.snapshot import listing_text, snapshot
from tests.conftest import tiny_images


def folder_params(default_params, **data):
    return validate_params({**default_params, "data": {**default_params["data"], "dataset": "folder", **data}})


def export_tree(root, images, labels, start=0):
    """images[i] as root/<label>/<start + i>.png"""
    for index, (image, label) in enumerate(zip(images, labels), start=start):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(root / str(label) / f"{index:05d}.png")


def download_tree(root, params, raw):
    """The snapshot and download stages, as dvc.yaml chains them: the listing, then the packs."""
    return download(params.data, raw, str(root), snapshot(str(root)))


def prepare_tree(root, params, seed, out, cache=None):
    """snapshot -> download -> prepare on an ImageFolder tree (data/raw beside `out`)."""
    download_tree(root, params, out.parent / f"{out.name}-raw")
    return prepare(out.parent / f"{out.name}-raw", params.data, seed, out, cache)


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

    meta = prepare_tree(root, params, 0, tmp_path / "prepared")

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
    ("corrupt", r"data checks block training: broken .*: images/1/00001\.png: not an image"),
    ("truncated", r"data checks block training: broken .*: images/1/00001\.png: truncated"),
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
        prepare_tree(root, folder_params(default_params, folder="images"), 0, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_adding_images_never_moves_an_existing_one_between_splits(tmp_path, default_params):
    images, labels = tiny_images(600)
    images[:, 0, 0] = np.arange(600) % 256
    images[:, 0, 1] = np.arange(600) // 256
    params = folder_params(default_params)
    root = tmp_path / "tree"
    export_tree(root, images[:360], labels[:360])
    prepare_tree(root, params, 42, tmp_path / "first")
    export_tree(root, images[360:], labels[360:], start=360)
    second_meta = prepare_tree(root, params, 42, tmp_path / "second")

    first, second = read_manifest(tmp_path / "first"), read_manifest(tmp_path / "second")
    merged = first.merge(second, on="sha256", suffixes=("_first", "_second"))
    assert len(merged) == 360 and (merged["split_first"] == merged["split_second"]).all()
    assert second_meta["samples"] == second["split"].value_counts().to_dict() | {}
    assert sum(second_meta["samples"].values()) == 600
    # Another seed draws another split.
    prepare_tree(root, params, 7, tmp_path / "other-seed")
    assert not (read_manifest(tmp_path / "other-seed")["split"] == second["split"]).all()
    first_meta = json.loads((tmp_path / "first" / "meta.json").read_text())
    assert first_meta["fingerprint"] != second_meta["fingerprint"]


def test_the_download_stage_packs_the_image_files_of_a_local_tree_in_a_few_files(tmp_path, default_params):
    images, labels = tiny_images(6)
    export_tree(tmp_path / "tree", images, labels % 3)
    (tmp_path / "tree" / "0" / "notes.txt").write_text("skip me")
    out = tmp_path / "data" / "raw"
    out.mkdir(parents=True)
    (out / "stale.png").write_bytes(b"from the last run")
    download_tree(tmp_path / "tree", folder_params(default_params), out)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["files.csv", *(pack_name(shard) for shard in range(SHARDS))])  # no spool, no stale file
    table = read_files_table(out)
    packed = {}
    for shard in range(SHARDS):
        packed |= read_pack(out / pack_name(shard))
    sources = sorted(str(path.relative_to(tmp_path / "tree")) for path in (tmp_path / "tree").rglob("*.png"))
    assert [row["path"] for row in table] == sources
    for row in table:
        assert packed[row["sha256"]] == (tmp_path / "tree" / row["path"]).read_bytes()
    with pytest.raises(UserError, match=r"data.folder '.*missing': no such folder"):
        snapshot(str(tmp_path / "missing"))


def grow(root, images, labels, start, stop):
    export_tree(root, images[start:stop], labels[start:stop], start=start)


def test_a_grown_folder_reads_and_decodes_only_its_new_files_and_packs_as_a_fresh_run_would(
        tmp_path, default_params, monkeypatch):
    images, labels = tiny_images(300)
    images[:, 0, 0] = np.arange(300)
    images[:, 0, 1] = np.arange(300) // 256
    params = folder_params(default_params)
    root, raw, cache = tmp_path / "tree", tmp_path / "raw", tmp_path / "decoded"
    grow(root, images, labels, 0, 200)
    download_tree(root, params, raw)
    prepare(raw, params.data, 42, tmp_path / "first", cache)

    reads, decodes = [], []
    read_bytes = classifier.data.download.Path.read_bytes
    monkeypatch.setattr(classifier.data.download.Path, "read_bytes",
                        lambda self: reads.append(self.name) or read_bytes(self))
    decode = classifier.data.prepare.decode
    monkeypatch.setattr(classifier.data.prepare, "decode", lambda *a: decodes.append(a[2]) or decode(*a))
    grow(root, images, labels, 200, 300)
    download_tree(root, params, raw)
    second = prepare(raw, params.data, 42, tmp_path / "second", cache)
    assert sorted(name for name in reads if name.endswith(".png")) == [f"{i:05d}.png" for i in range(200, 300)]
    assert len(decodes) == 100 and sum(second["samples"].values()) == 300
    monkeypatch.undo()

    # The grown packs and the prepared split are the bytes a cold run on the same folder writes.
    download_tree(root, params, tmp_path / "cold-raw")
    prepare(tmp_path / "cold-raw", params.data, 42, tmp_path / "cold")
    for name in ["files.csv", *(pack_name(shard) for shard in range(SHARDS))]:
        assert (raw / name).read_bytes() == (tmp_path / "cold-raw" / name).read_bytes(), name
    for path in (tmp_path / "cold").iterdir():
        assert path.read_bytes() == (tmp_path / "second" / path.name).read_bytes(), path.name


def test_a_removed_or_edited_image_changes_the_listing_and_the_prepared_data(tmp_path, default_params):
    images, labels = tiny_images(60)
    images[:, 0, 0] = np.arange(60)
    params = folder_params(default_params, test_fraction=0.3, val_fraction=0.3)
    root, raw = tmp_path / "tree", tmp_path / "raw"
    grow(root, images, labels, 0, 60)
    listing = listing_text(snapshot(str(root)))
    assert listing_text(snapshot(str(root))) == listing  # nothing changed: the same bytes, nothing reruns
    download_tree(root, params, raw)
    prepare(raw, params.data, 0, tmp_path / "before")

    (root / "1" / "00001.png").unlink()
    edited = root / "2" / "00002.png"
    stat = edited.stat()
    Image.fromarray(np.full((28, 28), 77, np.uint8), mode="L").save(edited)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert listing_text(snapshot(str(root))) != listing
    download_tree(root, params, raw)
    prepare(raw, params.data, 0, tmp_path / "after")
    before, after = read_manifest(tmp_path / "before"), read_manifest(tmp_path / "after")
    assert "1/00001.png" in set(before["path"]) and "1/00001.png" not in set(after["path"])
    row = after[after["path"] == "2/00002.png"].iloc[0]
    assert row["sha256"] == classifier.data.download.sha256_bytes(edited.read_bytes())
    assert row["sha256"] not in set(before["sha256"]) and len(after) == 59
    packed = set()
    for shard in range(SHARDS):
        packed |= set(read_pack(raw / pack_name(shard)))
    assert packed == set(after["sha256"])  # the removed and the old edited bytes are gone from the packs


def test_every_corrupt_image_is_named_and_the_others_stay_decoded(tmp_path, default_params, monkeypatch):
    images, labels = tiny_images(20)
    images[:, 0, 0] = np.arange(20)
    params = folder_params(default_params, folder="images", test_fraction=0.3, val_fraction=0.3)
    root, raw, cache = tmp_path / "tree", tmp_path / "raw", tmp_path / "decoded"
    grow(root, images, labels, 0, 20)
    (root / "3" / "00003.png").write_bytes(b"not a png")
    (root / "5" / "00005.png").write_bytes(b"nor this")
    download_tree(root, params, raw)
    with pytest.raises(UserError, match=r"broken .*: images/3/00003\.png: not an image; images/5/00005\.png: not an"):
        prepare(raw, params.data, 0, tmp_path / "prepared", cache)
    grow(root, images, labels, 3, 4)
    grow(root, images, labels, 5, 6)
    download_tree(root, params, raw)
    decodes = []
    decode = classifier.data.prepare.decode
    monkeypatch.setattr(classifier.data.prepare, "decode", lambda *a: decodes.append(a[2]) or decode(*a))
    prepare(raw, params.data, 0, tmp_path / "prepared", cache)
    assert sorted(shown.split(" ")[0] for shown in decodes) == ["images/3/00003.png", "images/5/00005.png"]


def test_the_normalisation_statistics_are_those_of_float64_pixels(tmp_path):
    rng = np.random.default_rng(3)
    for images in (rng.integers(0, 256, (5000, 28, 28), dtype=np.uint8), np.zeros((3, 4, 4), np.uint8)):
        scaled = images.astype(np.float64) / 255.0
        mean, std = pixel_statistics(images)
        assert round(mean, 6) == round(float(scaled.mean()), 6) and round(std, 6) == round(float(scaled.std()), 6)


@pytest.mark.parametrize("folder", ["", " images", "a${b}", 'say "hi"', "two\nlines"])
def test_a_folder_that_cannot_be_templated_into_dvc_yaml_is_refused(default_params, folder):
    with pytest.raises(ParamsError, match=r"data.folder"):
        folder_params(default_params, folder=folder)
