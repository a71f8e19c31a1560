"""The seed's MLP, sized from the data, the device it runs on, and every crossing to and from it.

Device rule: a tensor changes device only in `to_device` / `to_host` below (or inside torch's own
load_state_dict, which copies into the model's tensors wherever they live). Everything else
computes where its inputs already are and returns its results there; `logits_for` refuses
inputs on another device instead of moving them. tests/unit/test_devices.py drives training
and evaluation on a simulated second device that rejects any op mixing devices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from classifier.cli import UserError

log = logging.getLogger("model")

HOST = torch.device("cpu")
Movable = TypeVar("Movable")  # a tensor, a module or an InMemorySplit: anything with .to(device)


class NeuralNetwork(nn.Module):
    """Flatten, then Linear+ReLU per hidden layer, then a Linear to the class logits.

    The seed ended with a ReLU after the last Linear; that clips every negative logit to
    zero, so a wrong class cannot be pushed below the others and training stalls. The
    layer names (`linear_relu_stack.0.weight`, ...) match the PyTorch quickstart's.
    """

    def __init__(self, input_size: int = 28 * 28, hidden_sizes: Sequence[int] = (512, 512), num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.linear_relu_stack = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_relu_stack(self.flatten(x))


def resolve_device(requested: str, setting: str = "train.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        chosen = next(name for name in ("cuda", "mps", "cpu") if available[name])
        log.info("device auto -> %s", chosen)
        return torch.device(chosen)
    if not available.get(requested, False):
        raise UserError(f"{setting} is {requested!r} but no {requested} device is available here; "
                        f"use 'auto' or 'cpu'")
    log.info("device %s", requested)
    return torch.device(requested)


def to_device(value: Movable, device: torch.device) -> Movable:
    """The one way onto a device (and, through to_host, off it): a tensor, a module or a split."""
    return value.to(device)


def to_host(value: Movable) -> Movable:
    return to_device(value, HOST)


def host_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights on the CPU: a file saved from them loads on a machine with no GPU."""
    return {name: to_host(tensor) for name, tensor in model.state_dict().items()}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def same_device(actual: torch.device, wanted: torch.device) -> bool:
    """`cuda` names whichever GPU is current, so it matches `cuda:0`; `cuda:1` does not."""
    return actual.type == wanted.type and None in (actual.index, wanted.index) or actual == wanted


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Both tensors must be on one device; .item() then brings two numbers, not tensors, to the host."""
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy


@torch.no_grad()
def logits_for(model: nn.Module, images: torch.Tensor, normalization, device: torch.device,
               batch_size: int = 4096) -> torch.Tensor:
    """Logits for a stack of uint8 images, in eval mode, computed in chunks to bound memory.

    Model and images must both be on `device`; the logits stay there, beside the labels they
    are scored against (moving them to the host here once left them on the CPU while a resident
    validation split's labels stayed on the GPU)."""
    for name, where in (("model", device_of(model)), ("images", images.device)):
        if not same_device(where, device):
            raise ValueError(f"logits_for: the {name} are on {where}, not on {device}; move them with to_device first")
    model.eval()
    chunks = [
        model(normalization.apply(images[start:start + batch_size])).float()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, 0, device=device)
