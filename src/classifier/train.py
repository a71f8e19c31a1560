"""Stage `train`: fit the MLP on the prepared train split, validating after every epoch.

    python -m classifier.train data/prepared models/checkpoint.pt metrics/history.csv

Deterministic on a given machine: weights from `seed`, shuffle order from a generator
seeded with `seed + epoch`. Writes a full checkpoint (model, optimizer, epoch, RNG states,
history) and the per-epoch history that `dvc plots` draws.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from classifier.cli import run, stage_parser
from classifier.data import InMemorySplit, Normalization, batches, load_prepared
from classifier.files import atomic_write_text
from classifier.model import NeuralNetwork, logits_for, loss_and_accuracy, resolve_device
from classifier.params import TrainParams, load_params
from classifier.serialization import save_atomically

log = logging.getLogger("train")


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


def make_optimizer(model: nn.Module, train_params: TrainParams) -> torch.optim.Optimizer:
    if train_params.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train_params.learning_rate)
    return torch.optim.SGD(model.parameters(), lr=train_params.learning_rate)


def train_epoch(model, split, optimizer, normalization, batch_size, generator, device, progress) -> tuple[float, float]:
    """One pass over `split`; returns mean training loss and accuracy over the epoch."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in progress(batches(split, batch_size, generator)):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(normalization.apply(images))
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: calling .item() per batch would wait for the GPU every step.
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    return loss_sum.item() / len(split), correct.item() / len(split)


def fit(
    model: nn.Module,
    train_split: InMemorySplit,
    val_split: InMemorySplit,
    normalization: Normalization,
    train_params: TrainParams,
    seed: int,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch: Callable[[EpochStats, float], None] = lambda stats, samples_per_second: None,
) -> list[EpochStats]:
    optimizer = optimizer or make_optimizer(model, train_params)
    show_bar = sys.stderr.isatty()
    history = []
    for epoch in range(1, train_params.epochs + 1):
        generator = torch.Generator().manual_seed(seed + epoch)
        progress = lambda loader: tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show_bar)  # noqa: E731
        started = time.perf_counter()
        train_loss, train_accuracy = train_epoch(
            model, train_split, optimizer, normalization, train_params.batch_size, generator, device, progress
        )
        samples_per_second = len(train_split) / (time.perf_counter() - started)
        val_loss, val_accuracy = loss_and_accuracy(
            logits_for(model, val_split.images, normalization, device), val_split.labels
        )
        stats = EpochStats(epoch, train_loss, train_accuracy, val_loss, val_accuracy)
        history.append(stats)
        on_epoch(stats, samples_per_second)
    return history


def history_csv(history: Sequence[EpochStats]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"])
    for stats in history:
        writer.writerow([stats.epoch] + [f"{value:.6f}" for value in list(asdict(stats).values())[1:]])
    return out.getvalue()


def log_epoch(total_epochs: int) -> Callable[[EpochStats, float], None]:
    def report(stats: EpochStats, samples_per_second: float) -> None:
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.0f samples/s",
            stats.epoch, total_epochs, stats.train_loss, stats.train_accuracy,
            stats.val_loss, stats.val_accuracy, samples_per_second,
        )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("train", __doc__.splitlines()[0])
    parser.add_argument("prepared_dir", type=Path, help="folder written by the prepare stage")
    parser.add_argument("checkpoint_path", type=Path, help="checkpoint to write (model, optimizer, RNG states)")
    parser.add_argument("history_path", type=Path, help="per-epoch CSV for `dvc plots`")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    device = resolve_device(params.train.device)

    data = load_prepared(args.prepared_dir, ("train", "val"))
    train_split, val_split = (data.splits[name].to(device) for name in ("train", "val"))
    torch.manual_seed(params.seed)
    architecture = {
        "input_size": data.input_size,
        "hidden_sizes": list(params.model.hidden_sizes),
        "num_classes": data.num_classes,
    }
    model = NeuralNetwork(**architecture).to(device)
    optimizer = make_optimizer(model, params.train)
    log.info("%s: %d train / %d val images, %s", data.meta["dataset"], len(train_split), len(val_split), architecture)

    history = fit(model, train_split, val_split, data.normalization, params.train, params.seed, device,
                  optimizer, on_epoch=log_epoch(params.train.epochs))

    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": params.train.epochs,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        "architecture": architecture,
        "data": {key: data.meta[key] for key in ("dataset", "classes", "image_shape", "normalization")},
        "params": {"seed": params.seed, "model": params.model.model_dump(), "train": params.train.model_dump()},
        "history": [asdict(stats) for stats in history],
        "device": device.type,
    }
    save_atomically(checkpoint, args.checkpoint_path)
    atomic_write_text(args.history_path, history_csv(history))
    log.info("wrote %s and %s", args.checkpoint_path, args.history_path)


if __name__ == "__main__":
    sys.exit(run(main))
