"""The data checks before training (classifier.data.checks, run by prepare) on constructed folders, each with
one defect; and the folder source's loose ends: a listing without this machine's times, bytes checked against
the listing, symlink loops refused."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import scipy.stats
from PIL import Image

import classifier.data.snapshot
from classifier.cli import UserError
from classifier.data.checks import DataChecksBlocked, blocking_line, markdown, run_checks
from classifier.data.download import DownloadError, download
from classifier.files import sha256_bytes
from classifier.data.leakage import leaked_across
from classifier.params import ChecksParams, ParamsError, validate_params
from classifier.data.prepare import assign_splits, prepare
from classifier.data.snapshot import listing_text, snapshot
from tests.conftest import tiny_images


def folder_params(default_params, **data):
    return validate_params({**default_params, "data": {**default_params["data"], "dataset": "folder",
                                                      "folder": "images", "test_fraction": 0.3,
                                                      "val_fraction": 0.3, **data}})


def write_tree(root, count, classes=3, start=0):
    images, _ = tiny_images(start + count)
    for index in range(start, start + count):
        image = images[index].copy()
        image[0, :2] = index % 256, index // 256  # every file a distinct image
        (root / str(index % classes)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(root / str(index % classes) / f"{index:04d}.png")


def run_prepare(root, params, out, checks=None, reference=None, seed=0):
    """snapshot -> download -> prepare, with the data checks' findings written beside `out`."""
    raw = out.parent / f"{out.name}-raw"
    download(params.data, raw, str(root), snapshot(str(root)))
    report = out.parent / f"{out.name}-checks.json"
    try:
        prepare(raw, params.data, seed, out, None, checks, report, reference)
    finally:
        found = json.loads(report.read_text()) if report.exists() else None
    return found


def test_a_clean_folder_passes_and_its_findings_are_the_same_bytes_every_run(tmp_path, default_params):
    write_tree(tmp_path / "tree", 30)
    params = folder_params(default_params)
    report = run_prepare(tmp_path / "tree", params, tmp_path / "prepared", ChecksParams(min_images_per_class=5))
    assert report["blocked"] is False and report["summary"] == "passed"
    assert report["images"] == 30 and report["classes"] == {"0": 10, "1": 10, "2": 10}
    assert {name: finding["status"] for name, finding in report["checks"].items()} == {
        "leakage": "pass", "broken": "pass", "duplicates": "pass", "unknown_class": "skipped",
        "small_class": "pass", "balance": "skipped"}
    first = (tmp_path / "prepared-checks.json").read_bytes()
    run_prepare(tmp_path / "tree", params, tmp_path / "prepared", ChecksParams(min_images_per_class=5))
    assert (tmp_path / "prepared-checks.json").read_bytes() == first
    # Against itself as the champion's data: the same classes, the same shares.
    again = run_prepare(tmp_path / "tree", params, tmp_path / "prepared", ChecksParams(min_images_per_class=5),
                        reference=report)
    assert again["checks"]["balance"]["status"] == "pass" and again["checks"]["balance"]["p_value"] == 1.0
    assert again["checks"]["unknown_class"]["status"] == "pass"


def same_picture_in_two_splits(root, params):
    """A picture saved as .png and as .bmp (other bytes, the same pixels) whose file hashes fall in two
    different splits: what an exact file-hash rule alone would let through."""
    images, _ = tiny_images(200, seed=5)
    for index, image in enumerate(images):
        png, bmp = root / "1" / f"leak-{index}.png", root / "2" / f"leak-{index}.bmp"
        Image.fromarray(image, mode="L").save(png)
        Image.fromarray(image, mode="L").save(bmp)
        splits = assign_splits([sha256_bytes(png.read_bytes()), sha256_bytes(bmp.read_bytes())], 0, params.data)
        if splits[0] != splits[1]:
            return png, bmp
        png.unlink()
        bmp.unlink()
    raise AssertionError("no pair fell in two splits")


def test_the_same_picture_in_two_splits_blocks_prepare_naming_both_files(tmp_path, default_params):
    root = tmp_path / "tree"
    write_tree(root, 30)
    params = folder_params(default_params)
    png, bmp = same_picture_in_two_splits(root, params)
    with pytest.raises(DataChecksBlocked, match=r"^data checks block training: leakage \(checks.leakage: block\)"
                       r".*(leak-\d+\.png|leak-\d+\.bmp) \((val|test)\) = .*: same pixels") as error:
        run_prepare(root, params, tmp_path / "prepared")
    assert "\n" not in str(error.value)  # one line
    assert not (tmp_path / "prepared").exists()  # nothing to train on
    report = json.loads((tmp_path / "prepared-checks.json").read_text())
    assert report["blocked"] and report["checks"]["leakage"]["count"] == 1
    assert png.name in report["checks"]["leakage"]["examples"][0] and bmp.name in report["checks"]["leakage"]["examples"][0]
    # Policy: warn trains on it all the same, and says so.
    report = run_prepare(root, params, tmp_path / "prepared", ChecksParams(leakage="warn"))
    assert not report["blocked"] and report["checks"]["leakage"]["status"] == "warn"
    assert (tmp_path / "prepared" / "manifest.csv").exists()


def test_an_exact_file_hash_in_two_splits_is_leakage_by_the_shared_rule():
    rows = [("a.png", "0", "train", "h1", "p1"), ("b.png", "0", "test", "h1", "p9"), ("c.png", "1", "val", "h3", "p3")]
    assert leaked_across({"train": ["h1"], "val": ["h3"], "test": ["h1"]}) == {"val": [], "test": ["h1"]}
    report = run_checks(rows, [], ChecksParams(), None)
    assert report["checks"]["leakage"]["examples"] == ["b.png (test) = a.png (train): same file content"]
    assert blocking_line(report).startswith("data checks block training: leakage")


@pytest.mark.parametrize("defect, kind", [("truncated", "truncated"), ("text", "not an image"),
                                          ("garbage", "not an image")])
def test_a_broken_file_blocks_by_default_and_is_left_out_when_it_only_warns(tmp_path, default_params, defect, kind):
    root = tmp_path / "tree"
    write_tree(root, 30)
    bad = root / "2" / "0005.png"
    if defect == "truncated":
        bad.write_bytes(bad.read_bytes()[:70])
    elif defect == "text":
        bad.write_text("a note saved with an image's name")
    else:
        bad.write_bytes(np.random.default_rng(0).bytes(500))
    params = folder_params(default_params)
    with pytest.raises(DataChecksBlocked, match=rf"broken \(checks.broken: block\).*images/2/0005\.png: {kind}"):
        run_prepare(root, params, tmp_path / "prepared")
    report = run_prepare(root, params, tmp_path / "prepared", ChecksParams(broken="warn"))
    assert report["checks"]["broken"]["examples"] == [f"images/2/0005.png: {kind}"]
    assert report["images"] == 29 and report["rejected"] == 1
    assert "2/0005.png" not in (tmp_path / "prepared" / "manifest.csv").read_text()


def test_duplicates_within_a_split_warn_and_two_classes_are_called_a_labelling_error(tmp_path, default_params):
    root = tmp_path / "tree"
    write_tree(root, 30)
    shutil.copy(root / "0" / "0003.png", root / "0" / "copy.png")
    shutil.copy(root / "0" / "0003.png", root / "1" / "mislabelled.png")
    report = run_prepare(root, folder_params(default_params), tmp_path / "prepared")
    finding = report["checks"]["duplicates"]
    assert finding["status"] == "warn" and finding["count"] == 2 and not report["blocked"]
    assert "1 under two classes (a labelling error)" in finding["words"]
    assert "images/0/0003.png = images/0/copy.png = images/1/mislabelled.png" in finding["examples"][0]
    with pytest.raises(DataChecksBlocked, match=r"duplicates \(checks.duplicates: block\)"):
        run_prepare(root, folder_params(default_params), tmp_path / "prepared", ChecksParams(duplicates="block"))


def test_an_unknown_class_folder_and_a_small_class_are_named(tmp_path, default_params):
    root = tmp_path / "tree"
    write_tree(root, 30)
    (root / "Cat ").mkdir()
    for index in range(3):
        shutil.copy(root / "0" / f"{index * 3:04d}.png", root / "Cat " / f"{index}.png")
    champion = {"classes": {"0": 100, "1": 100, "2": 100}}
    report = run_prepare(root, folder_params(default_params), tmp_path / "prepared", reference=champion)
    assert report["checks"]["unknown_class"]["examples"] == ["Cat  (3 images)"]
    assert report["checks"]["small_class"]["examples"] == ["Cat  (3 images)"]
    assert report["checks"]["small_class"]["words"].endswith("fewer than 10 images (checks.min_images_per_class)")
    with pytest.raises(DataChecksBlocked, match=r"unknown_class .*'Cat '.*small_class .*Cat  \(3 images\)"):
        run_prepare(root, folder_params(default_params), tmp_path / "prepared",
                    ChecksParams(unknown_class="block", small_class="block"), reference=champion)


def test_class_balance_against_the_champions_data_is_a_chi_square_warning(tmp_path, default_params):
    root = tmp_path / "tree"
    write_tree(root, 60)
    champion = {"classes": {"0": 100, "1": 100, "2": 400}}
    report = run_prepare(root, folder_params(default_params), tmp_path / "prepared", reference=champion)
    balance = report["checks"]["balance"]
    expected = scipy.stats.chisquare([20, 20, 20], [10, 10, 40])
    assert balance["chi_square"] == pytest.approx(expected.statistic, abs=1e-4) and balance["dof"] == 2
    assert balance["p_value"] == pytest.approx(expected.pvalue, rel=1e-3) and balance["status"] == "warn"
    assert balance["words"].startswith("class shares differ from the champion's data (chi-square 30.00, "
                                       "2 degrees of freedom, p < 0.001); largest change: '2' 66.7% -> 33.3%")
    assert not report["blocked"] and "balance" in report["summary"]
    assert "| balance | warn | **warn** | class shares differ" in markdown(report)


def test_the_checks_policy_is_validated_naming_key_value_and_rule(default_params):
    with pytest.raises(ParamsError, match=r"checks.leakage = 'stop': must be 'block', 'warn' or 'off'"):
        validate_params({**default_params, "checks": {"leakage": "stop"}})
    with pytest.raises(ParamsError, match=r"checks.min_images_per_class = -1: must be greater than or equal to 0"):
        validate_params({**default_params, "checks": {"min_images_per_class": -1}})
    without = {key: value for key, value in default_params.items() if key != "checks"}
    assert validate_params(without).checks == ChecksParams()  # a base's params.yaml from before the checks


def test_the_same_images_at_another_path_list_and_pack_the_same_bytes(tmp_path, default_params):
    write_tree(tmp_path / "here", 20)
    subprocess.run(["cp", "-r", str(tmp_path / "here"), str(tmp_path / "there")], check=True)  # new mtimes
    params = folder_params(default_params)
    listings = [listing_text(snapshot(str(tmp_path / name), tmp_path / f"cache-{name}")) for name in ("here", "there")]
    assert listings[0] == listings[1]
    for name in ("here", "there"):
        download(params.data, tmp_path / f"raw-{name}", str(tmp_path / name), snapshot(str(tmp_path / name)))
    assert (tmp_path / "raw-here" / "files.csv").read_bytes() == (tmp_path / "raw-there" / "files.csv").read_bytes()


def test_the_hash_cache_reads_only_new_or_touched_files(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree", 20)
    cache = tmp_path / "cache"
    snapshot(str(tmp_path / "tree"), cache)
    hashed = []
    original = classifier.data.snapshot._hash_file
    monkeypatch.setattr(classifier.data.snapshot, "_hash_file", lambda path: hashed.append(path) or original(path))
    first = snapshot(str(tmp_path / "tree"), cache)
    assert hashed == []
    write_tree(tmp_path / "tree", 1, start=20)
    (tmp_path / "tree" / "0" / "0000.png").write_bytes((tmp_path / "tree" / "1" / "0001.png").read_bytes())
    second = snapshot(str(tmp_path / "tree"), cache)
    assert sorted(path.rsplit("/", 2)[-1] for path in hashed) == ["0000.png", "0020.png"]
    assert dict((p, v) for p, _, v in second)["0/0000.png"] == dict((p, v) for p, _, v in first)["1/0001.png"]


def test_a_file_rewritten_between_snapshot_and_download_is_refused_not_packed(tmp_path, default_params):
    root = tmp_path / "tree"
    write_tree(root, 12)
    params = folder_params(default_params)
    listing = snapshot(str(root))
    victim = root / "1" / "0004.png"
    victim.write_bytes((root / "2" / "0005.png").read_bytes())  # the same size or not: the content differs
    with pytest.raises(DownloadError, match=r"tree/1/0004\.png: changed since the snapshot stage listed it "
                       r"\(listed .*\); nothing packed: run `dvc repro` again"):
        download(params.data, tmp_path / "raw", str(root), listing)
    assert not (tmp_path / "raw" / "files.csv").exists()
    download(params.data, tmp_path / "raw", str(root), snapshot(str(root)))  # listed anew: packed as it is now


@pytest.mark.parametrize("link", ["to the class folder", "to the root", "to itself"])
def test_a_symlink_loop_in_the_folder_is_named_and_refused(tmp_path, link):
    root = tmp_path / "tree"
    write_tree(root, 6)
    where = root / "1" / "deeper"
    where.mkdir()
    if link == "to the class folder":
        (where / "loop").symlink_to(root / "1")
        expected = rf"tree/1/deeper/loop: a symlink loop \(it leads back to .*tree/1\)"
    elif link == "to the root":
        (root / "3").symlink_to(root)
        expected = rf"tree/3: a symlink loop \(it leads back to .*tree\)"
    else:
        (where / "self.png").symlink_to(where / "self.png")
        expected = r"tree/1/deeper/self.png: a symlink loop \(it leads back to itself\)"
    with pytest.raises(UserError, match=expected):
        snapshot(str(root))


def test_a_symlinked_folder_that_is_no_loop_is_followed(tmp_path):
    write_tree(tmp_path / "tree", 6)
    write_tree(tmp_path / "elsewhere", 2, classes=1, start=40)
    (tmp_path / "tree" / "1" / "more").symlink_to(tmp_path / "elsewhere" / "0")
    assert [path for path, _, _ in snapshot(str(tmp_path / "tree"))].count("1/more/0040.png") == 1
