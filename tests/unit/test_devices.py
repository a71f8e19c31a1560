"""Device placement, tested where there is no GPU.

Every tensor crossing a device boundary goes through classifier.training.model.to_device / to_host; the
rest of the library computes where its inputs are. A CPU-only machine cannot run CUDA, so
`SimulatedDevice` stands in for it: tensors moved to `meta` become wrappers that report the
device `meta` but hold real CPU data, so the numbers are real and each op runs the CPU kernel.
Like CUDA, it refuses any op whose tensors are on two devices (a zero-dimensional CPU tensor
excepted, as CUDA allows) and lets only explicit copies cross. It caught the first GPU run's
crash: validation logits brought to the host beside labels left on the device.
"""

from __future__ import annotations

import io
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_map

from classifier.training.split import Normalization, epoch_order
from classifier.training.model import HOST, NeuralNetwork, host_state_dict, logits_for, loss_and_accuracy, to_device, to_host
from classifier.training.serialization import load_weights_only, to_bytes
from classifier.training.train import captures_step, fit, make_optimizer
from tests.unit.test_model_and_training import tiny_split, train_params

SIMULATED = torch.device("meta")
NORMALIZATION = Normalization(mean=0.2, std=0.3)
COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


class OnSimulatedDevice(torch.Tensor):
    """A CPU tensor (`data`) that says it lives on SIMULATED."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(cls, data.size(), strides=data.stride(), dtype=data.dtype,
                                                      device=SIMULATED, requires_grad=data.requires_grad)
        wrapper.data_on_cpu = data
        return wrapper

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"{func} ran outside SimulatedDevice")  # the mode handles every op

    def __repr__(self) -> str:
        return f"OnSimulatedDevice({self.data_on_cpu!r})"


class SimulatedDevice(TorchDispatchMode):
    """Runs every op on the CPU, tracking which tensors are 'on the device'; records each crossing
    with the innermost classifier function that asked for it."""

    def __init__(self):
        super().__init__()
        self.crossings: list[str] = []  # per crossing: "to_device", or the function that crossed elsewhere

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        devices = set()

        def unwrap(value):
            if isinstance(value, OnSimulatedDevice):
                devices.add(SIMULATED.type)
                return value.data_on_cpu
            if isinstance(value, torch.Tensor) and not (value.dim() == 0 and value.device.type == "cpu"):
                devices.add(value.device.type)
            return value

        cpu_args, cpu_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        target = cpu_kwargs.get("device")
        if target is not None:
            cpu_kwargs["device"] = torch.device("cpu")  # factories and _to_copy: really make it on the CPU
            devices_after = {torch.device(target).type}
        else:
            devices_after = devices
        if func in COPIES:
            if len(devices | devices_after) > 1 or (func is torch.ops.aten.copy_.default and self._copy_crosses(args)):
                self.crossings.append(self._caller())
        elif len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but {func} got tensors on "
                               f"{' and '.join(sorted(devices))} (simulated)")
        out = func(*cpu_args, **cpu_kwargs)
        if func is torch.ops.aten._local_scalar_dense.default or SIMULATED.type not in devices_after:
            return out
        wrapped = tree_map(lambda value: OnSimulatedDevice(value) if isinstance(value, torch.Tensor) else value, out)
        return return_and_correct_aliasing(func, args, kwargs, wrapped)

    @staticmethod
    def _copy_crosses(args) -> bool:
        destination, source = args[0], args[1]
        return isinstance(destination, OnSimulatedDevice) != isinstance(source, OnSimulatedDevice)

    @staticmethod
    def _caller() -> str:
        """`to_device` when it is on the call stack, else the innermost classifier function."""
        names = [frame.name for frame in traceback.extract_stack() if "/classifier/" in frame.filename]
        return "to_device" if "to_device" in names else (names[-1] if names else "outside classifier")


@pytest.fixture
def simulated(monkeypatch):
    # Fused Adam refuses devices it has no kernel for; the simulated device runs the CPU's kernel.
    import importlib

    monkeypatch.setattr(importlib.import_module("torch.optim.adam"), "_device_dtype_check_for_fused", lambda *args, **kwargs: None)
    with SimulatedDevice() as mode:
        yield mode


def trained(device: torch.device, optimizer: str = "adam") -> tuple[NeuralNetwork, list]:
    """fit as train.main calls it: model and splits moved to `device` once, then trained there."""
    torch.manual_seed(0)
    model = to_device(NeuralNetwork(hidden_sizes=[32]), device)
    history = fit(model, to_device(tiny_split(100), device), to_device(tiny_split(20, 1), device), NORMALIZATION,
                  train_params(optimizer=optimizer), seed=0, device=device)
    return model, history


def test_the_simulated_device_rejects_what_cuda_rejects(simulated):
    labels = to_device(torch.tensor([0, 1]), SIMULATED)
    logits = to_device(torch.randn(2, 3), SIMULATED)
    assert logits.device == SIMULATED and loss_and_accuracy(logits, labels)[1] in (0.0, 0.5, 1.0)
    with pytest.raises(RuntimeError, match="same device"):
        loss_and_accuracy(to_host(logits), labels)  # the first GPU run's crash, reproduced without a GPU


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fit_on_another_device_computes_what_it_computes_on_the_cpu(simulated, optimizer):
    on_device, device_history = trained(SIMULATED, optimizer)
    assert all(param.device == SIMULATED for param in on_device.parameters())
    simulated.crossings.clear()
    weights = host_state_dict(on_device)
    assert simulated.crossings and set(simulated.crossings) == {"to_device"}  # via to_host
    with torch.utils._python_dispatch._disable_current_modes():
        on_cpu, cpu_history = trained(HOST, optimizer)
        assert device_history == cpu_history
        for name, tensor in on_cpu.state_dict().items():
            assert torch.equal(weights[name], tensor), name


def test_every_crossing_in_training_goes_through_to_device(simulated):
    trained(SIMULATED)
    # The splits and the model once each, then one shuffled order per epoch: nothing else crosses.
    assert set(simulated.crossings) == {"to_device"}


def test_logits_stay_on_the_device_of_the_model_and_images(simulated):
    model = to_device(NeuralNetwork(hidden_sizes=[8]), SIMULATED)
    images = to_device(tiny_split(5).images, SIMULATED)
    assert logits_for(model, images, NORMALIZATION, SIMULATED).device == SIMULATED
    assert logits_for(model, images[:0], NORMALIZATION, SIMULATED).device == SIMULATED
    with pytest.raises(ValueError, match="images are on cpu, not on meta"):
        logits_for(model, tiny_split(5).images, NORMALIZATION, SIMULATED)


def test_evaluate_brings_the_logits_home(simulated):
    from classifier.training.evaluate import score, test_logits

    torch.manual_seed(0)
    model = NeuralNetwork(hidden_sizes=[8])
    test = tiny_split(30)
    logits = test_logits(model, test, NORMALIZATION, SIMULATED)
    assert logits.device == HOST and not isinstance(logits, OnSimulatedDevice)
    simulated.crossings.clear()
    summary, _, predictions, losses = score(logits, test.labels, 10)
    assert simulated.crossings == [] and predictions.device == HOST


def test_a_model_trained_on_another_device_loads_and_predicts_on_the_cpu(simulated, tmp_path):
    from classifier.training.predict import predict

    model, _ = trained(SIMULATED)
    data = to_bytes(host_state_dict(model))
    with torch.utils._python_dispatch._disable_current_modes():
        # No map_location: the file itself holds CPU tensors, so a machine with no GPU can read it.
        state = torch.load(io.BytesIO(data), weights_only=True)
        assert {tensor.device for tensor in state.values()} == {HOST}
        loaded = NeuralNetwork(hidden_sizes=[32])
        loaded.load_state_dict(load_weights_only(data, "model"))
        card = {"normalization": {"mean": 0.2, "std": 0.3}, "classes": [str(digit) for digit in range(10)]}
        ranked = predict(loaded, card, tiny_split(4, 2).images, top_k=2)
    assert len(ranked) == 4 and all(len(pairs) == 2 for pairs in ranked)


def test_the_epoch_order_is_the_random_samplers():
    from torch.utils.data import RandomSampler

    order = epoch_order(50, torch.Generator().manual_seed(7))
    assert order.tolist() == list(RandomSampler(range(50), generator=torch.Generator().manual_seed(7)))
    assert order.device == HOST


def test_only_adam_on_cuda_is_captured_and_its_optimizer_is_capturable():
    cuda, cpu = torch.device("cuda"), HOST
    assert captures_step(cuda, train_params()) and not captures_step(cuda, train_params(optimizer="sgd"))
    assert not captures_step(cpu, train_params())
    model = NeuralNetwork(hidden_sizes=[8])
    assert make_optimizer(model, train_params(), cuda).defaults["capturable"] is True
    assert make_optimizer(model, train_params(), cpu).defaults["capturable"] is False
    assert make_optimizer(model, train_params()).defaults["capturable"] is False
