"""Stage `train`: fit the MLP on the prepared train split, validating after every epoch.

    python -m classifier.training.train data/prepared models/candidate.pth models/candidate.json \
        models/candidate-history.csv --resume-dir .cache/train-resume

Deterministic on a given machine (same CPU, thread count and torch build): weights from
the training seed (`train.seed`, else the top-level `seed` that also fixes the split), shuffle
order from a generator seeded with that seed + epoch. Writes the per-epoch
history (save publishes it as metrics/history.csv, which `dvc plots` draws), and the candidate model: its state_dict serialised exactly
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
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from classifier.cli import run, stage_parser
from classifier.training.split import InMemorySplit, Normalization, epoch_order, load_prepared
from classifier.files import atomic_write_json, atomic_write_text, file_digest
from classifier.training.model import (NeuralNetwork, host_state_dict, logits_for, loss_and_accuracy, resolve_device,
                              to_device)
from classifier.params import TrainParams, load_params
from classifier.training.serialization import load_file, save_atomically

log = logging.getLogger("train")


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


def captures_step(device: torch.device, train_params: TrainParams) -> bool:
    """On a GPU the eager step is launch-bound (dozens of small kernels per batch), so with Adam it
    is recorded once as a CUDA graph and replayed; SGD and every other device run it op by op."""
    return device.type == "cuda" and train_params.optimizer == "adam"


def make_optimizer(model: nn.Module, train_params: TrainParams, device: torch.device | None = None) -> torch.optim.Optimizer:
    if train_params.optimizer == "adam":
        # fused: one kernel per step instead of a dozen ops that each allocate a temporary the
        # size of the model; on the CPU the unfused update costs more than the matrix multiplies.
        # capturable: the step count lives on the device, so a replayed CUDA graph updates it.
        capturable = device is not None and captures_step(device, train_params)
        return torch.optim.Adam(model.parameters(), lr=train_params.learning_rate, fused=True, capturable=capturable)
    return torch.optim.SGD(model.parameters(), lr=train_params.learning_rate)


def autocast_for(device: torch.device, precision: str, cache_casts: bool = True):
    """bf16: autocast the forward pass. A captured graph must not keep autocast's cached casts of the
    weights (they would be stale on replay), so the captured step turns the cache off."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_casts)


class Steps:
    """One optimisation step per batch of indices into a split already on the device; the epoch's
    summed loss and correct count accumulate on the device (an .item() per batch would wait for
    the GPU every step)."""

    def __init__(self, model, optimizer, split: InMemorySplit, normalization: Normalization, precision: str,
                 device: torch.device, set_to_none: bool = True, cache_casts: bool = True):
        self.model, self.optimizer, self.split, self.normalization = model, optimizer, split, normalization
        self.autocast = lambda: autocast_for(device, precision, cache_casts)  # noqa: E731
        # A captured step needs the gradients to keep their storage from one replay to the next.
        self.set_to_none = set_to_none
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, index: torch.Tensor) -> None:
        images, labels = self.split.images[index], self.split.labels[index]
        with self.autocast():
            logits = self.model(self.normalization.apply(images))
            loss = nn.functional.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.argmax(dim=1) == labels).sum()

    def totals(self, count: int) -> tuple[float, float]:
        return self.loss_sum.item() / count, self.correct.item() / count


# Steps run on a side stream before capture, so that lazily made state (Adam's moments, cuBLAS
# workspaces) exists before recording starts; three is what PyTorch's CUDA-graph examples use.
WARMUP_STEPS = 3


@contextmanager
def state_kept(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Warm-up and capture run real steps; afterwards the weights and the optimizer state are as
    they were (state the warm-up created zeroed, which is how a fresh optimizer starts), in the
    same storages, so capturing changes no result and the graph's addresses stay valid."""
    params = list(model.parameters())
    saved_params = [param.detach().clone() for param in params]
    saved_state = {(index, key): value.clone() for index, param in enumerate(params)
                   for key, value in optimizer.state.get(param, {}).items() if torch.is_tensor(value)}
    yield
    with torch.no_grad():
        for index, (param, saved) in enumerate(zip(params, saved_params)):
            param.copy_(saved)
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    value.copy_(saved_state[index, key]) if (index, key) in saved_state else value.zero_()


class CapturedSteps:
    """Steps whose full batches replay one CUDA graph of the whole step (gather, normalise, forward,
    loss, backward, fused Adam, the epoch's sums); the batch's indices go into a static buffer
    first. The epoch's last, shorter batch runs eagerly on the same tensors."""

    def __init__(self, steps: Steps, batch_size: int, device: torch.device):
        self.steps = steps
        self.index = torch.zeros(batch_size, dtype=torch.int64, device=device)
        with state_kept(steps.model, steps.optimizer):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    steps(self.index)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                steps(self.index)
        steps.reset()

    def reset(self) -> None:
        self.steps.reset()

    def __call__(self, index: torch.Tensor) -> None:
        if len(index) != len(self.index):
            self.steps(index)
            return
        self.index.copy_(index)
        self.graph.replay()

    def totals(self, count: int) -> tuple[float, float]:
        return self.steps.totals(count)


def make_steps(model, optimizer, split: InMemorySplit, normalization: Normalization, train_params: TrainParams,
               device: torch.device) -> Steps | CapturedSteps:
    if not captures_step(device, train_params) or len(split) < train_params.batch_size:
        return Steps(model, optimizer, split, normalization, train_params.precision, device)
    if not optimizer.defaults.get("capturable"):
        log.warning("the optimizer was not made capturable (make_optimizer(..., device)): training op by op")
        return Steps(model, optimizer, split, normalization, train_params.precision, device)
    steps = Steps(model, optimizer, split, normalization, train_params.precision, device,
                  set_to_none=False, cache_casts=False)
    return CapturedSteps(steps, train_params.batch_size, device)


def train_epoch(model, steps: Steps | CapturedSteps, order: torch.Tensor, batch_size: int, progress) -> tuple[float, float]:
    """One pass in `order` (indices on the split's device); returns mean training loss and accuracy."""
    model.train()
    steps.reset()
    for index in progress(order.split(batch_size)):
        steps(index)
    return steps.totals(len(order))


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
    run already did. `on_checkpoint` gets the history every `checkpoint_every` epochs.

    Model and splits must already be on `device` (train.main moves them): nothing here crosses a
    device boundary except each epoch's shuffled order, drawn on the host and moved once."""
    optimizer = optimizer or make_optimizer(model, train_params, device)
    show_bar = sys.stderr.isatty()
    history = list(history)
    if len(history) >= train_params.epochs:
        return history
    with flushed_denormals():
        steps = make_steps(model, optimizer, train_split, normalization, train_params, device)
        for epoch in range(len(history) + 1, train_params.epochs + 1):
            generator = torch.Generator().manual_seed(seed + epoch)
            progress = lambda loader: tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show_bar)  # noqa: E731
            started = time.perf_counter()
            order = to_device(epoch_order(len(train_split), generator), device)
            train_loss, train_accuracy = train_epoch(model, steps, order, train_params.batch_size, progress)
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
    """The params a training run depends on: recorded in the checkpoint and the model card.
    `train.seed` only when set, so the card of a model trained without one reads as before."""
    return {"seed": params.seed, "model": params.model.model_dump(),
            "train": params.train.model_dump(exclude_none=True)}


def resume_key(params, prepared_dir: Path, device: torch.device) -> str:
    """A hash of everything a training run's result depends on: a resume file is only ever
    picked up by a run that would have produced exactly the same state."""
    code = [Path(__file__).parent / name for name in ("train.py", "split.py", "model.py")]
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
    train_split, val_split = (to_device(data.splits[name], device) for name in ("train", "val"))
    training_seed = params.train.seed_or(params.seed)
    torch.manual_seed(training_seed)
    architecture = {
        "input_size": data.input_size,
        "hidden_sizes": list(params.model.hidden_sizes),
        "num_classes": data.num_classes,
    }
    model = to_device(NeuralNetwork(**architecture), device)
    optimizer = make_optimizer(model, params.train, device)
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

    history = fit(model, train_split, val_split, data.normalization, params.train, training_seed, device,
                  optimizer, on_epoch=log_epoch(params.train.epochs), history=history,
                  on_checkpoint=(lambda done: save_atomically(state(done), resume_path)) if resume_path else None)

    save_atomically(host_state_dict(model), args.candidate_path)
    atomic_write_json(args.candidate_info_path, candidate_info(architecture, data.meta, params, device))
    atomic_write_text(args.history_path, history_csv(history))
    if args.resume_dir is not None:
        # The finished model is DVC's now; resume files of this or older inputs are spent.
        for spent in args.resume_dir.glob("train-*.pt"):
            spent.unlink(missing_ok=True)
    log.info("wrote %s, %s and %s", args.candidate_path, args.candidate_info_path, args.history_path)


if __name__ == "__main__":
    sys.exit(run(main))
