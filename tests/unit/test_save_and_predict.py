import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.training import predict, save
from classifier.cli import UserError
from classifier.files import file_digest
from classifier.training.model import NeuralNetwork
from classifier.training.serialization import save_atomically
from tests.conftest import PROJECT_ROOT

ARCHITECTURE = {"input_size": 784, "hidden_sizes": [32], "num_classes": 10}


def write_candidate(folder, weights_seed: int = 0) -> None:
    """The two files the train stage hands to evaluate and save."""
    torch.manual_seed(weights_seed)
    save_atomically(NeuralNetwork(**ARCHITECTURE).state_dict(), folder / "candidate.pth")
    info = {"architecture": ARCHITECTURE, "dataset": "mnist-5k", "classes": [str(d) for d in range(10)],
            "input_shape": [28, 28], "normalization": {"mean": 0.13, "std": 0.31}, "params": {"seed": 0},
            "trained_on": "cpu", "torch_version": torch.__version__}
    (folder / "candidate.json").write_text(json.dumps(info))


@pytest.fixture
def stage_files(tmp_path, default_params):
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params))
    write_candidate(tmp_path)
    metrics = {"dataset": "mnist-5k", "samples": {"train": 1, "val": 1, "test": 1},
               "test": {"accuracy": 0.95, "loss": 0.2, "macro_f1": 0.95}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path


def run_save(folder, *extra):
    save.main(["--params", str(folder / "params.yaml"), str(folder / "candidate.pth"), str(folder / "candidate.json"),
               str(folder / "metrics.json"), str(folder / "model.pth"), str(folder / "model.json"), *extra])


def test_save_publishes_the_candidate_bytes_and_a_card_with_their_hash(stage_files):
    run_save(stage_files)
    assert (stage_files / "model.pth").read_bytes() == (stage_files / "candidate.pth").read_bytes()
    card = json.loads((stage_files / "model.json").read_text())
    assert card["sha256"] == file_digest(stage_files / "model.pth")
    assert card["classes"][3] == "3" and card["input_shape"] == [28, 28]
    assert card["metrics"]["accuracy"] == 0.95 and card["trained_on"] == "cpu"
    assert card["torch_version"] == torch.__version__
    state = torch.load(stage_files / "model.pth", weights_only=True)
    assert list(state) == list(NeuralNetwork(**ARCHITECTURE).state_dict())


def test_saving_twice_gives_identical_bytes(stage_files):
    run_save(stage_files)
    first = (stage_files / "model.pth").read_bytes()
    (stage_files / "model.pth").unlink()
    run_save(stage_files)
    assert (stage_files / "model.pth").read_bytes() == first


def test_a_model_below_the_bar_is_not_published_and_the_old_one_and_its_results_stay(stage_files):
    publish = ["--publish", str(stage_files / "metrics.json"), str(stage_files / "published-metrics.json")]
    run_save(stage_files, *publish)
    published = (stage_files / "model.pth").read_bytes()
    card = (stage_files / "model.json").read_text()
    published_metrics = (stage_files / "published-metrics.json").read_text()
    assert json.loads(published_metrics) == json.loads((stage_files / "metrics.json").read_text())
    write_candidate(stage_files, weights_seed=1)  # different weights
    metrics = json.loads((stage_files / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 0.42
    (stage_files / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match=r"test accuracy 0.4200 is below save.min_accuracy 0.9000: the candidate was "
                                        r"not published .* raise train.epochs or lower save.min_accuracy, e.g. dvc "
                                        r"exp run -S train.epochs=20 or dvc exp run -S save.min_accuracy=0.42$"):
        run_save(stage_files, *publish)
    assert (stage_files / "model.pth").read_bytes() == published
    assert (stage_files / "model.json").read_text() == card
    assert (stage_files / "published-metrics.json").read_text() == published_metrics


@pytest.fixture
def published(stage_files):
    run_save(stage_files)
    return stage_files


def digit_png(path, label: int = 1) -> None:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 13:15] = 255 if label == 1 else 0
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on MNIST-5k (the bundled digits) and published by the save stage; and held-out digits.

    Three epochs of the project's network on 4,500 images, about 3 s; the 500 held out are never trained on.
    """
    import yaml

    from classifier.training.split import Normalization
    from classifier.data.download import bundled_mnist_5k_path
    from classifier.training.model import logits_for, loss_and_accuracy
    from classifier.data.prepare import read_mnist_5k

    folder = tmp_path_factory.mktemp("trained")
    images, labels = read_mnist_5k(bundled_mnist_5k_path())
    order = np.random.default_rng(0).permutation(len(labels))
    held_out, train = order[:500], order[500:]
    train_images, train_labels = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    pixels = train_images.float() / 255
    normalization = Normalization(pixels.mean().item(), pixels.std().item())
    architecture = {"input_size": 784, "hidden_sizes": [128], "num_classes": 10}
    torch.manual_seed(0)
    model = NeuralNetwork(**architecture)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for batch in torch.randperm(len(train_labels), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(normalization.apply(train_images[batch])), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test_images, test_labels = torch.from_numpy(images[held_out]), torch.from_numpy(labels[held_out])
    test_loss, test_accuracy = loss_and_accuracy(logits_for(model, test_images, normalization, torch.device("cpu")), test_labels)
    assert test_accuracy > 0.85, test_accuracy

    save_atomically(model.state_dict(), folder / "candidate.pth")
    info = {"architecture": architecture, "dataset": "mnist-5k", "classes": [str(d) for d in range(10)],
            "input_shape": [28, 28], "normalization": {"mean": normalization.mean, "std": normalization.std},
            "params": {"seed": 0}, "trained_on": "cpu", "torch_version": torch.__version__}
    (folder / "candidate.json").write_text(json.dumps(info))
    metrics = {"dataset": "mnist-5k", "samples": {"train": len(train), "val": 0, "test": len(held_out)},
               "test": {"accuracy": test_accuracy, "loss": test_loss, "macro_f1": test_accuracy}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["save"]["min_accuracy"] = 0.85
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    run_save(folder)
    # Per class, the held-out digit nearest the class's mean training image: a typical one, picked
    # without asking the model.
    typical = {}
    for label in range(10):
        candidates = held_out[labels[held_out] == label]
        prototype = images[train][labels[train] == label].astype(np.float32).mean(axis=0)
        distances = ((images[candidates].astype(np.float32) - prototype) ** 2).sum(axis=(1, 2))
        typical[label] = images[candidates[distances.argmin()]]
    return folder, typical


def held_out_png(trained, label: int, inverted: bool = False):
    """A typical held-out digit of class `label` as a PNG (light on dark, or inverted)."""
    folder, typical = trained
    path = folder / f"digit-{label}{'-inverted' if inverted else ''}.png"
    Image.fromarray(255 - typical[label] if inverted else typical[label]).save(path)
    return path


def test_predict_prints_the_class_of_a_digit_it_never_saw(trained, capsys):
    digits = [held_out_png(trained, label) for label in range(10)]
    Image.open(digits[7]).resize((56, 56)).convert("RGB").save(trained[0] / "seven-big.jpg")
    predict.main([str(trained[0] / "model.pth"), *map(str, digits), str(trained[0] / "seven-big.jpg")])
    captured = capsys.readouterr()
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert [(Path(path).name, label) for path, label, _ in rows] == [
        *((f"digit-{label}.png", str(label)) for label in range(10)), ("seven-big.jpg", "7")]
    assert all(0.5 < float(probability) <= 1 for _, _, probability in rows)
    assert "warning" not in captured.err


def test_predict_warns_about_a_dark_digit_on_a_light_background(trained, capsys):
    normal, inverted = held_out_png(trained, 0), held_out_png(trained, 0, inverted=True)
    predict.main([str(trained[0] / "model.pth"), str(normal), str(inverted)])
    captured = capsys.readouterr()
    assert captured.err.count("warning:") == 1
    assert f"warning: {inverted}: light background" in captured.err and "invert the image" in captured.err
    assert len(captured.out.splitlines()) == 2  # it still answers, and says what it answered


def test_predict_top_k_lists_the_most_probable_classes_in_order(trained, capsys):
    digit = held_out_png(trained, 3)
    predict.main([str(trained[0] / "model.pth"), str(digit), "--top-k", "3"])
    path, *ranked = capsys.readouterr().out.strip().split("\t")
    labels, probabilities = ranked[0::2], [float(p) for p in ranked[1::2]]
    assert path == str(digit) and labels[0] == "3" and len(set(labels)) == 3
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    predict.main([str(trained[0] / "model.pth"), str(digit), "--top-k", "10"])
    ranked = capsys.readouterr().out.strip().split("\t")[1:]
    assert sorted(ranked[0::2]) == [str(d) for d in range(10)]
    assert abs(sum(float(p) for p in ranked[1::2]) - 1) < 0.001
    with pytest.raises(UserError, match="--top-k 11: must be between 1 and the model's 10 classes"):
        predict.main([str(trained[0] / "model.pth"), str(digit), "--top-k", "11"])


def test_the_border_test_tells_light_on_dark_from_dark_on_light():
    light_on_dark = torch.zeros(28, 28, dtype=torch.uint8)
    light_on_dark[4:24, 12:16] = 255
    assert not predict.looks_inverted(light_on_dark)
    assert predict.looks_inverted(255 - light_on_dark)
    grey_paper = torch.full((28, 28), 150, dtype=torch.uint8)
    assert predict.looks_inverted(grey_paper) and predict.border_mean(grey_paper) == 150


def test_predict_refuses_a_model_whose_hash_does_not_match_its_card(published):
    digit_png(published / "one.png")
    data = bytearray((published / "model.pth").read_bytes())
    data[-30] ^= 0xFF
    (published / "model.pth").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its card"):
        predict.main([str(published / "model.pth"), str(published / "one.png")])


def test_predict_rejects_a_non_image(published):
    (published / "notes.txt").write_text("not a picture")
    with pytest.raises(UserError, match="notes.txt: not an image file"):
        predict.main([str(published / "model.pth"), str(published / "notes.txt")])


def test_predict_reports_an_unreadable_file(published):
    with pytest.raises(UserError, match="missing.png: cannot read"):
        predict.main([str(published / "model.pth"), str(published / "missing.png")])
