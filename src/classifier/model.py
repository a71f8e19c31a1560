"""The seed's MLP, sized from the data, and the device it runs on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from classifier.cli import UserError

log = logging.getLogger("model")


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


def resolve_device(requested: str) -> torch.device:
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
        raise UserError(f"train.device is {requested!r} but no {requested} device is available here; "
                        f"use 'auto' or 'cpu'")
    log.info("device %s", requested)
    return torch.device(requested)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy


@torch.no_grad()
def logits_for(model: nn.Module, images: torch.Tensor, normalization, device: torch.device,
               batch_size: int = 4096) -> torch.Tensor:
    """Logits for a stack of uint8 images, in eval mode, computed in chunks to bound memory."""
    model.eval()
    chunks = [
        model(normalization.apply(images[start:start + batch_size].to(device))).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
