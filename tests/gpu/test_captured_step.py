"""The training step captured in a CUDA graph: it learns, in fp32 and bf16, resumes byte-equal,
and leaves SGD and the epoch's partial batch to the eager step."""

from __future__ import annotations

import pytest
import torch

from classifier.training.split import InMemorySplit, Normalization
from classifier.training.model import NeuralNetwork, to_device
from classifier.params import TrainParams
from classifier.training.serialization import load_weights_only, to_bytes
from classifier.training.train import CapturedSteps, Steps, fit, make_optimizer, make_steps, restore, training_state
from tests.gpu.test_cuda import learnable_images

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
NORMALIZATION = Normalization(mean=0.15, std=0.3)


def split(count: int, seed: int) -> InMemorySplit:
    images, labels = learnable_images(count, seed)
    return to_device(InMemorySplit(torch.from_numpy(images), torch.from_numpy(labels)), CUDA)


def train_params(**overrides) -> TrainParams:
    values = dict(epochs=3, batch_size=64, optimizer="adam", learning_rate=1e-3, device="cuda",
                  precision="fp32", checkpoint_every=1)
    return TrainParams(**{**values, **overrides})


def fresh(params: TrainParams):
    torch.manual_seed(0)
    model = to_device(NeuralNetwork(hidden_sizes=[256, 256]), CUDA)
    return model, make_optimizer(model, params, CUDA)


def test_adam_on_cuda_is_captured_and_sgd_is_not():
    model, optimizer = fresh(train_params())
    assert isinstance(make_steps(model, optimizer, split(1000, 0), NORMALIZATION, train_params(), CUDA), CapturedSteps)
    sgd = train_params(optimizer="sgd")
    model, optimizer = fresh(sgd)
    assert type(make_steps(model, optimizer, split(1000, 0), NORMALIZATION, sgd, CUDA)) is Steps


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_on_cuda_learns(precision, optimizer):
    params = train_params(precision=precision, optimizer=optimizer, learning_rate=1e-3 if optimizer == "adam" else 0.1)
    model, optim = fresh(params)
    history = fit(model, split(5_000 + 17, 0), split(500, 1), NORMALIZATION, params, 0, CUDA, optim)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_accuracy > 0.9, history
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights in fp32


def test_capturing_changes_no_result_the_warm_up_is_undone():
    """Two fits from the same start agree exactly; and one epoch of the captured step is close to
    one epoch of the eager step (not equal: capturable Adam computes its bias corrections on the GPU)."""
    params = train_params(epochs=1)
    runs = []
    for _ in range(2):
        model, optimizer = fresh(params)
        fit(model, split(3_000 + 5, 0), split(200, 1), NORMALIZATION, params, 0, CUDA, optimizer)
        runs.append(to_bytes(model.state_dict()))
    assert runs[0] == runs[1]
    eager_model = to_device(NeuralNetwork(hidden_sizes=[256, 256]), CUDA)
    torch.manual_seed(0)
    eager_model.load_state_dict(NeuralNetwork(hidden_sizes=[256, 256]).state_dict())
    eager_optimizer = make_optimizer(eager_model, params)  # not capturable: fit falls back to the eager step
    fit(eager_model, split(3_000 + 5, 0), split(200, 1), NORMALIZATION, params, 0, CUDA, eager_optimizer)
    captured = load_weights_only(runs[0], "captured")
    for name, tensor in eager_model.state_dict().items():
        torch.testing.assert_close(tensor.cpu(), captured[name], atol=2e-3, rtol=0)


def test_resuming_a_captured_run_gives_the_same_bytes():
    params = train_params(epochs=3)
    meta = {"dataset": "t", "classes": [str(digit) for digit in range(10)], "image_shape": [28, 28],
            "normalization": {"mean": 0.15, "std": 0.3}}

    class Params:  # what training_state reads of the whole params
        seed = 0
        model = type("M", (), {"model_dump": staticmethod(lambda: {"hidden_sizes": [256, 256]})})
        train = params

    def train(model, optimizer, train_params, history=()):
        return fit(model, split(2_000 + 3, 0), split(200, 1), NORMALIZATION, train_params, 0, CUDA, optimizer,
                   history=history)

    model, optimizer = fresh(params)
    train(model, optimizer, params)
    uninterrupted = to_bytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    model, optimizer = fresh(params)
    history = train(model, optimizer, params.model_copy(update={"epochs": 1}))
    resume_file = to_bytes(training_state(model, optimizer, history, {}, meta, Params, CUDA))
    model, optimizer = fresh(params)
    history = restore(load_weights_only(resume_file, "resume"), model, optimizer, CUDA)
    train(model, optimizer, params, history)
    assert to_bytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()}) == uninterrupted
