"""Stage `train`: fit the MLP on the prepared train split, validating after every epoch.

    python -m classifier.train data/prepared models/candidate.pth models/candidate.json \
        metrics/history.csv --resume-dir .cache/train-resume

Deterministic on a given machine (same CPU, thread count and torch build): weights from
`seed`, shuffle order from a generator seeded with `seed + epoch`. Writes the per-epoch
history that `dvc plots` draws, and the candidate model: its state_dict serialised exactly
as save will publish it, and a JSON of the facts its model card needs, so that evaluate and
save read small files and save never imports torch. The device is `train.device`.

Every `train.checkpoint_every` epochs the full training state (model, optimizer, epoch, RNG
states, history) goes to a resume file in the resume folder, named by a hash of everything
the result depends on (params, prepared data, training code, device). DVC deletes the
stage's outputs before it runs, but not that folder: an interrupted run restarts from its
last resume file and, on the CPU, ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from classifier.cli import run, stage_parser
from classifier.data import InMemorySplit, Normalization, batches, load_prepared
from classifier.files import atomic_write_json, atomic_write_text, file_digest
from classifier.model import NeuralNetwork, logits_for, loss_and_accuracy, resolve_device
from classifier.params import TrainParams, load_params
from classifier.serialization import load_file, save_atomically

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
        # fused: one kernel per step instead of a dozen ops that each allocate a temporary the
        # size of the model; on the CPU the unfused update costs more than the matrix multiplies.
        return torch.optim.Adam(model.parameters(), lr=train_params.learning_rate, fused=True)
    return torch.optim.SGD(model.parameters(), lr=train_params.learning_rate)


def train_epoch(model, split, optimizer, normalization, batch_size, generator, device, progress,
                precision: str = "fp32") -> tuple[float, float]:
    """One pass over `split`; returns mean training loss and accuracy over the epoch."""
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in progress(batches(split, batch_size, generator)):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            logits = model(normalization.apply(images))
            loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: calling .item() per batch would wait for the GPU every step.
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    return loss_sum.item() / len(split), correct.item() / len(split)


@contextmanager
def flushed_denormals():
    """Adam's running averages of units that never get a gradient decay into subnormal floats,
    which the CPU handles several times slower; treat them as zero while training, then put the
    processor's (process-wide) default back."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


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
    history: Sequence[EpochStats] = (),
    on_checkpoint: Callable[[list[EpochStats]], None] | None = None,
) -> list[EpochStats]:
    """Train from epoch len(history) + 1 to train_params.epochs; `history` is what a resumed
    run already did. `on_checkpoint` gets the history every `checkpoint_every` epochs."""
    optimizer = optimizer or make_optimizer(model, train_params)
    show_bar = sys.stderr.isatty()
    history = list(history)
    with flushed_denormals():
        for epoch in range(len(history) + 1, train_params.epochs + 1):
            generator = torch.Generator().manual_seed(seed + epoch)
            progress = lambda loader: tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show_bar)  # noqa: E731
            started = time.perf_counter()
            train_loss, train_accuracy = train_epoch(
                model, train_split, optimizer, normalization, train_params.batch_size, generator, device, progress,
                train_params.precision,
            )
            samples_per_second = len(train_split) / (time.perf_counter() - started)
            val_loss, val_accuracy = loss_and_accuracy(
                logits_for(model, val_split.images, normalization, device), val_split.labels
            )
            stats = EpochStats(epoch, train_loss, train_accuracy, val_loss, val_accuracy)
            history.append(stats)
            on_epoch(stats, samples_per_second)
            if on_checkpoint and epoch % train_params.checkpoint_every == 0 and epoch < train_params.epochs:
                on_checkpoint(history)
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


def trained_with(params) -> dict:
    """The params a training run depends on: recorded in the checkpoint and the model card."""
    return {"seed": params.seed, "model": params.model.model_dump(), "train": params.train.model_dump()}


def resume_key(params, prepared_dir: Path, device: torch.device) -> str:
    """A hash of everything a training run's result depends on: a resume file is only ever
    picked up by a run that would have produced exactly the same state."""
    code = [Path(__file__).parent / name for name in ("train.py", "data.py", "model.py")]
    inputs = {
        "params": trained_with(params),
        "data": {path.name: file_digest(path) for path in sorted(prepared_dir.iterdir()) if path.is_file()},
        "code": {path.name: file_digest(path) for path in code},
        "device": device.type,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def training_state(model, optimizer, history, architecture, data_meta, params, device) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": len(history),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        "architecture": architecture,
        "data": {key: data_meta[key] for key in ("dataset", "classes", "image_shape", "normalization")},
        "params": trained_with(params),
        "history": [asdict(stats) for stats in history],
        "device": device.type,
    }


def candidate_info(architecture: dict, data_meta: dict, params, device: torch.device) -> dict:
    return {
        "architecture": architecture,
        "dataset": data_meta["dataset"],
        "classes": data_meta["classes"],
        "input_shape": data_meta["image_shape"],
        "normalization": data_meta["normalization"],
        # What it learnt from: the data set's fingerprint (prepare's manifest); the counts come from metrics.
        "data_fingerprint": data_meta.get("fingerprint"),
        "params": trained_with(params),
        "trained_on": device.type,
        "torch_version": torch.__version__,
    }


def restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> list[EpochStats]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return [EpochStats(**row) for row in state["history"]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("train", __doc__.splitlines()[0])
    parser.add_argument("prepared_dir", type=Path, help="folder written by the prepare stage")
    parser.add_argument("candidate_path", type=Path, help="the trained state_dict, as save would publish it")
    parser.add_argument("candidate_info_path", type=Path, help="JSON facts about it for the model card")
    parser.add_argument("history_path", type=Path, help="per-epoch CSV for `dvc plots`")
    parser.add_argument("--resume-dir", type=Path,
                        help="folder for resume checkpoints, outside DVC's outputs (default: no resuming)")
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

    def state(history: Sequence[EpochStats]) -> dict:
        return training_state(model, optimizer, history, architecture, data.meta, params, device)

    history: list[EpochStats] = []
    resume_path = None
    if args.resume_dir is not None:
        resume_path = args.resume_dir / f"train-{resume_key(params, args.prepared_dir, device)}.pt"
        if resume_path.exists():
            history = restore(load_file(resume_path), model, optimizer, device)
            log.info("resuming from epoch %d of %d (%s)", len(history), params.train.epochs, resume_path)

    history = fit(model, train_split, val_split, data.normalization, params.train, params.seed, device,
                  optimizer, on_epoch=log_epoch(params.train.epochs), history=history,
                  on_checkpoint=(lambda done: save_atomically(state(done), resume_path)) if resume_path else None)

    save_atomically({name: tensor.cpu() for name, tensor in model.state_dict().items()}, args.candidate_path)
    atomic_write_json(args.candidate_info_path, candidate_info(architecture, data.meta, params, device))
    atomic_write_text(args.history_path, history_csv(history))
    if args.resume_dir is not None:
        # The finished model is DVC's now; resume files of this or older inputs are spent.
        for spent in args.resume_dir.glob("train-*.pt"):
            spent.unlink(missing_ok=True)
    log.info("wrote %s, %s and %s", args.candidate_path, args.candidate_info_path, args.history_path)


if __name__ == "__main__":
    sys.exit(run(main))
