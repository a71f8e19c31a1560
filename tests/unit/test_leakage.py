"""classifier.data.leakage: the one content-hash overlap rule of the data checks and the PR report."""

import pytest

from classifier.cli import UserError
from classifier.data.leakage import leaked, leaked_between, split_hashes


def write_manifest(path, rows):
    path.write_text("path,class,sha256,split\n" + "".join(f"p{i},0,{h},{s}\n" for i, (h, s) in enumerate(rows)))
    return path


def test_leaked_is_the_sorted_overlap():
    assert leaked(["c", "a", "b"], ["b", "a", "z"]) == ["a", "b"]
    assert leaked(["a"], []) == []


def test_a_test_image_in_another_manifests_training_split_is_named(tmp_path):
    base = write_manifest(tmp_path / "base.csv", [("t1", "test"), ("t2", "test"), ("x", "train")])
    head = write_manifest(tmp_path / "head.csv", [("t2", "train"), ("t1", "test"), ("y", "val")])
    assert leaked_between(base, head) == ["t2"]
    assert leaked_between(base, base) == []
    assert split_hashes(head) == {"test": {"t1"}, "train": {"t2"}, "val": {"y"}}


def test_a_missing_or_foreign_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no manifest"):
        split_hashes(tmp_path / "absent.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="sha256 and split"):
        split_hashes(tmp_path / "other.csv")
