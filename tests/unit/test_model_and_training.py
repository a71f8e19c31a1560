import io

import pytest
import torch

from classifier.cli import UserError
from classifier.training.split import InMemorySplit, Normalization, batches
from classifier.training.model import NeuralNetwork, resolve_device
from classifier.params import TrainParams
from classifier.training.serialization import load_weights_only, to_bytes
from classifier.training.train import fit, history_csv, make_optimizer
from tests.conftest import tiny_images

NORMALIZATION = Normalization(mean=0.2, std=0.3)


def tiny_split(count: int, seed: int = 0) -> InMemorySplit:
    images, labels = tiny_images(count, seed)
    return InMemorySplit(torch.from_numpy(images), torch.from_numpy(labels))


def train_params(**overrides) -> TrainParams:
    values = dict(epochs=2, batch_size=16, optimizer="adam", learning_rate=1e-3, device="cpu",
                  precision="fp32", checkpoint_every=1)
    return TrainParams(**{**values, **overrides})


def test_the_seed_architecture_without_the_final_relu():
    model = NeuralNetwork()
    layers = list(model.linear_relu_stack)
    assert [type(layer).__name__ for layer in layers] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(layer.in_features, layer.out_features) for layer in layers[::2]] == [(784, 512), (512, 512), (512, 10)]
    assert list(model.state_dict())[0] == "linear_relu_stack.0.weight"  # the quickstart's names
    logits = model(torch.randn(64, 28, 28))
    assert logits.shape == (64, 10) and (logits < 0).any()  # logits may go negative


def test_sizes_come_from_the_data_and_params():
    model = NeuralNetwork(input_size=16, hidden_sizes=[8], num_classes=3)
    assert model(torch.zeros(2, 4, 4)).shape == (2, 3)


def test_normalization_matches_the_formula():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    expected = (pixels.double() / 255 - 0.2) / 0.3
    torch.testing.assert_close(NORMALIZATION.apply(pixels).double(), expected, atol=1e-6, rtol=0)


def test_batches_are_whole_tensors_and_cover_the_split_once():
    split = tiny_split(50)
    loader = batches(split, 16, torch.Generator().manual_seed(0))
    seen = [labels for _, labels in loader]
    assert [len(labels) for labels in seen] == [16, 16, 16, 2]
    images, _ = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (16, 28, 28)
    assert sorted(torch.cat(seen).tolist()) == sorted(split.labels.tolist())


def test_shuffle_order_follows_the_generator_seed():
    split = tiny_split(40)
    order = lambda seed: torch.cat([y for _, y in batches(split, 8, torch.Generator().manual_seed(seed))])  # noqa: E731
    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = NeuralNetwork()
    split = tiny_split(64)
    inputs, labels = NORMALIZATION.apply(split.images), split.labels
    optimizer = make_optimizer(model, train_params(learning_rate=1e-3))
    before = torch.nn.functional.cross_entropy(model(inputs), labels)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = torch.nn.functional.cross_entropy(model(inputs), labels)
    assert after.item() < before.item()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fit_learns_the_tiny_task_and_reports_every_epoch(optimizer):
    torch.manual_seed(0)
    model = NeuralNetwork()
    reported = []
    history = fit(model, tiny_split(200), tiny_split(50, seed=1), NORMALIZATION,
                  train_params(epochs=3, optimizer=optimizer, learning_rate=0.05 if optimizer == "sgd" else 1e-3),
                  seed=0, device=torch.device("cpu"), on_epoch=lambda stats, rate: reported.append((stats, rate)))
    assert [stats.epoch for stats in history] == [1, 2, 3]
    assert [stats for stats, _ in reported] == history and all(rate > 0 for _, rate in reported)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_accuracy > 0.5
    assert history_csv(history).splitlines()[0] == "epoch,train_loss,train_accuracy,val_loss,val_accuracy"


def test_training_is_deterministic():
    def run_once() -> bytes:
        torch.manual_seed(3)
        model = NeuralNetwork(hidden_sizes=[32])
        fit(model, tiny_split(100), tiny_split(20, 1), NORMALIZATION, train_params(), seed=3, device=torch.device("cpu"))
        return to_bytes(model.state_dict())
    assert run_once() == run_once()


def test_state_dict_round_trip_is_weights_only_and_byte_stable():
    torch.manual_seed(0)
    model = NeuralNetwork(hidden_sizes=[16])
    data = to_bytes(model.state_dict())
    assert to_bytes(model.state_dict()) == data  # same tensors, same bytes
    restored = NeuralNetwork(hidden_sizes=[16])
    restored.load_state_dict(load_weights_only(data, "model.pth"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name])


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "owned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    torch.save({"weights": Evil()}, buffer)
    with pytest.raises(UserError, match="refused to load"):
        load_weights_only(buffer.getvalue(), "evil.pth")
    assert not marker.exists()


def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="train.device is 'cuda' but no cuda device is available"):
        resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "mps"}


def test_bf16_autocast_trains_on_the_cpu():
    torch.manual_seed(0)
    model = NeuralNetwork(hidden_sizes=[32])
    history = fit(model, tiny_split(100), tiny_split(20, 1), NORMALIZATION, train_params(precision="bf16"),
                  seed=0, device=torch.device("cpu"))
    assert history[-1].train_loss < history[0].train_loss
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights in fp32


def test_resuming_from_a_checkpoint_gives_the_same_bytes_as_an_uninterrupted_run(default_params):
    from classifier.params import validate_params
    from classifier.training.train import restore, training_state

    default_params["model"]["hidden_sizes"] = [32]
    default_params["train"].update(epochs=3, batch_size=16)
    params = validate_params(default_params)
    interrupted = params.train.model_copy(update={"epochs": 1})  # a run killed after epoch 1's checkpoint
    meta = {"dataset": "t", "classes": list("0123456789"), "image_shape": [28, 28],
            "normalization": {"mean": 0.2, "std": 0.3}}
    cpu = torch.device("cpu")

    def fresh():
        torch.manual_seed(params.seed)
        model = NeuralNetwork(hidden_sizes=[32])
        return model, make_optimizer(model, params.train)

    def train(model, optimizer, train_params, history=()):
        return fit(model, tiny_split(100), tiny_split(20, 1), NORMALIZATION, train_params, params.seed, cpu,
                   optimizer, history=history)

    model, optimizer = fresh()
    full = train(model, optimizer, params.train)
    uninterrupted = to_bytes(training_state(model, optimizer, full, {}, meta, params, cpu))

    model, optimizer = fresh()
    history = train(model, optimizer, interrupted)
    resume_file = to_bytes(training_state(model, optimizer, history, {}, meta, params, cpu))

    model, optimizer = fresh()
    history = restore(load_weights_only(resume_file, "resume"), model, optimizer, cpu)
    assert len(history) == 1
    resumed = train(model, optimizer, params.train, history)
    assert [stats.epoch for stats in resumed] == [1, 2, 3]
    assert to_bytes(training_state(model, optimizer, resumed, {}, meta, params, cpu)) == uninterrupted


def test_checkpoints_are_offered_every_n_epochs_but_not_after_the_last():
    offered = []
    torch.manual_seed(0)
    fit(NeuralNetwork(hidden_sizes=[8]), tiny_split(32), tiny_split(10, 1), NORMALIZATION,
        train_params(epochs=5, checkpoint_every=2), 0, torch.device("cpu"),
        on_checkpoint=lambda history: offered.append(len(history)))
    assert offered == [2, 4]


def test_the_training_seed_moves_the_weights_and_leaves_the_split_seed_alone(tmp_path, default_params):
    """train.main: an absent train.seed trains the bytes of train.seed == seed (main's models are
    unchanged), another training seed other bytes; the card records train.seed only when set."""
    import json

    import yaml

    from classifier.training import train
    from classifier.data.prepare import write_prepared
    from tests.conftest import tiny_images

    splits = {name: tiny_images(count, seed) for name, count, seed in (("train", 60, 0), ("val", 20, 1), ("test", 20, 2))}
    write_prepared(tmp_path / "prepared", splits, "mnist-5k")
    default_params["model"]["hidden_sizes"] = [16]
    default_params["train"].update(epochs=1, batch_size=16, device="cpu")

    def trained(name: str, train_seed: int | None) -> tuple[bytes, dict]:
        changed = {**default_params, "train": {**default_params["train"]}}
        if train_seed is not None:
            changed["train"]["seed"] = train_seed
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(changed))
        out = tmp_path / name
        train.main(["--params", str(tmp_path / f"{name}.yaml"), str(tmp_path / "prepared"), str(out / "m.pth"),
                    str(out / "m.json"), str(out / "h.csv")])
        return (out / "m.pth").read_bytes(), json.loads((out / "m.json").read_text())

    absent, absent_card = trained("absent", None)
    same, same_card = trained("same", default_params["seed"])
    other, _ = trained("other", default_params["seed"] + 1)
    assert absent == same and absent != other
    assert "seed" not in absent_card["params"]["train"] and same_card["params"]["train"]["seed"] == default_params["seed"]
