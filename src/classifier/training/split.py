"""The prepared split in memory, served in whole-tensor batches through the usual Dataset/DataLoader."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from classifier.data.prepared import read_split


@dataclass(frozen=True)
class Normalization:
    mean: float
    std: float

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> float32 inputs, (x / 255 - mean) / std, in one fused pass."""
        scale = 1.0 / (255.0 * self.std)
        return torch.sub(images.to(torch.float32) * scale, self.mean / self.std)


class InMemorySplit(Dataset):
    """A split held as uint8 tensors. Indexed by a *list* of indices, it returns a whole batch,
    so the DataLoader does one gather per batch instead of decoding and collating per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]

    def to(self, device: torch.device) -> InMemorySplit:
        return InMemorySplit(self.images.to(device), self.labels.to(device))


def epoch_order(count: int, generator: torch.Generator) -> torch.Tensor:
    """An epoch's shuffled order, on the host: the permutation RandomSampler draws from the same
    generator, so training reads batches in the order `batches` gives. Drawn on the CPU whatever
    the device, so a seed means one order everywhere; the trainer moves it to the device once."""
    return torch.randperm(count, generator=generator)


def batches(split: InMemorySplit, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
    """Shuffled batches when `generator` is given (its seed fixes the order), else in order."""
    order = RandomSampler(split, generator=generator) if generator is not None else SequentialSampler(split)
    # batch_size=None turns off per-item collation: each sampler step is already a batch.
    return DataLoader(split, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)


@dataclass(frozen=True)
class PreparedData:
    meta: dict
    splits: dict[str, InMemorySplit]

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.meta["normalization"])

    @property
    def input_size(self) -> int:
        return int(np.prod(self.meta["image_shape"]))

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])


def load_prepared(prepared_dir: Path, split_names: tuple[str, ...]) -> PreparedData:
    meta = json.loads((prepared_dir / "meta.json").read_text())
    splits = {}
    for name in split_names:
        images, labels = read_split(prepared_dir, name)
        splits[name] = InMemorySplit(torch.from_numpy(images), torch.from_numpy(labels))
    return PreparedData(meta, splits)
