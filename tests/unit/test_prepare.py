import gzip
import json

import numpy as np
import pytest

from classifier.cli import UserError
from classifier.datasets import BUNDLED_MNIST_5K
from classifier.params import validate_params
from classifier.data.prepare import (array_source, assign_splits, read_idx, read_mnist_5k, read_raw, split_arrays,
                                write_prepared)
from tests.conftest import idx_bytes, tiny_images


def write_csv_gz(path, images, labels):
    rows = np.column_stack([images.reshape(len(images), -1), labels])
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, row)) for row in rows).encode()))


def test_mnist_5k_csv_round_trip(tmp_path):
    images, labels = tiny_images(30)
    write_csv_gz(tmp_path / BUNDLED_MNIST_5K, images, labels)
    read_images, read_labels = read_mnist_5k(tmp_path / BUNDLED_MNIST_5K)
    assert read_images.dtype == np.uint8 and read_images.shape == (30, 28, 28)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_idx_round_trip(tmp_path):
    images, labels = tiny_images(12)
    (tmp_path / "images.gz").write_bytes(idx_bytes(images))
    (tmp_path / "labels.gz").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz", 3), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz", 1), labels)


def test_idx_with_wrong_magic_is_refused(tmp_path):
    images, _ = tiny_images(4)
    (tmp_path / "images.gz").write_bytes(idx_bytes(images))
    with pytest.raises(UserError, match="not an IDX file with 1 dimension"):
        read_idx(tmp_path / "images.gz", 1)


def test_truncated_idx_is_refused(tmp_path):
    images, _ = tiny_images(4)
    raw = gzip.decompress(idx_bytes(images))
    (tmp_path / "images.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(UserError, match=r"header says \(4, 28, 28\)"):
        read_idx(tmp_path / "images.gz", 3)


def split_of(images, labels, data_params, seed, official_test=None):
    source = array_source(images, labels, [str(d) for d in range(10)], [str(i) for i in range(len(labels))],
                          data_params.image_size, official_test)
    return split_arrays(source, assign_splits(source.hashes, seed, data_params, official_test))


def distinct_images(count: int):
    images, labels = tiny_images(count)
    images[:, 0, 0] = np.arange(count) % 256  # make rows distinguishable
    images[:, 0, 1] = np.arange(count) // 256
    return images, labels


def test_split_of_mnist_5k_shape_is_about_4000_1000_then_val(default_params):
    params = validate_params(default_params)
    images, labels = distinct_images(5000)
    splits = split_of(images, labels, params.data, seed=1)
    sizes = {name: len(part[1]) for name, part in splits.items()}
    # Hash draws, not a shuffle: the shares hold to within a few standard deviations.
    assert abs(sizes["test"] - 1000) < 100 and abs(sizes["val"] - 400) < 70, sizes
    assert sum(sizes.values()) == 5000


def test_split_is_reproducible_and_disjoint(default_params):
    params = validate_params(default_params)
    images, labels = distinct_images(500)
    first = split_of(images, labels, params.data, seed=7)
    again = split_of(images, labels, params.data, seed=7)
    other = split_of(images, labels, params.data, seed=8)
    for name in first:
        np.testing.assert_array_equal(first[name][0], again[name][0])
    assert not np.array_equal(first["test"][0], other["test"][0])
    ids = {name: set((part[0][:, 0, 0].astype(int) + 256 * part[0][:, 0, 1].astype(int)).tolist())
           for name, part in first.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"]) and not (ids["val"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == 500


def test_official_test_split_is_kept(tmp_path, default_params):
    params = validate_params({**default_params, "data": {**default_params["data"], "dataset": "fashion-mnist"}})
    train_images, train_labels = tiny_images(100, seed=1)
    test_images, test_labels = tiny_images(20, seed=2)
    for name, array in [
        ("train-images-idx3-ubyte.gz", train_images), ("train-labels-idx1-ubyte.gz", train_labels),
        ("t10k-images-idx3-ubyte.gz", test_images), ("t10k-labels-idx1-ubyte.gz", test_labels),
    ]:
        (tmp_path / name).write_bytes(idx_bytes(array))
    source = read_raw(tmp_path, params.data)
    splits = split_arrays(source, assign_splits(source.hashes, params.seed, params.data, source.official_test))
    np.testing.assert_array_equal(splits["test"][0], test_images)
    assert len(splits["train"][1]) + len(splits["val"][1]) == 100
    meta = write_prepared(tmp_path / "prepared", splits, "fashion-mnist")
    assert meta["classes"][0] == "T-shirt/top"
    on_disk = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert on_disk == meta
    assert np.load(tmp_path / "prepared" / "test_labels.npy").dtype == np.int64


def test_written_files_are_byte_stable(tmp_path, default_params):
    params = validate_params(default_params)
    images, labels = distinct_images(200)
    for folder in ("a", "b"):
        write_prepared(tmp_path / folder, split_of(images, labels, params.data, 3), "mnist-5k")
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
