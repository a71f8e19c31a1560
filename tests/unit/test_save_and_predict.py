import json

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import predict, save
from classifier.cli import UserError
from classifier.files import file_digest
from classifier.model import NeuralNetwork
from classifier.serialization import save_atomically

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


def test_a_model_below_the_bar_is_not_published_and_the_old_one_stays(stage_files):
    run_save(stage_files)
    published = (stage_files / "model.pth").read_bytes()
    card = (stage_files / "model.json").read_text()
    write_candidate(stage_files, weights_seed=1)  # different weights
    metrics = json.loads((stage_files / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 0.42
    (stage_files / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match=r"test accuracy 0.4200 is below save.min_accuracy 0.9000"):
        run_save(stage_files)
    assert (stage_files / "model.pth").read_bytes() == published
    assert (stage_files / "model.json").read_text() == card


@pytest.fixture
def published(stage_files):
    run_save(stage_files)
    return stage_files


def digit_png(path, label: int = 1) -> None:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 13:15] = 255 if label == 1 else 0
    Image.fromarray(image).save(path)


def test_predict_prints_class_and_probability(published, capsys):
    digit_png(published / "one.png")
    Image.fromarray(np.zeros((56, 40), dtype=np.uint8)).convert("RGB").save(published / "big.jpg")
    predict.main([str(published / "model.pth"), str(published / "one.png"), str(published / "big.jpg")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    path, label, probability = lines[0].split("\t")
    assert path.endswith("one.png") and label in [str(d) for d in range(10)] and 0 < float(probability) <= 1


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
