"""evaluate's numbers against scikit-learn, and the files it commits: per-example results and the test fingerprint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from classifier.training import evaluate
from classifier.judging.compare import point_metrics, read_predictions
from classifier.data.images import split_fingerprint
from classifier.training.evaluate import example_ids, per_class_csv, predictions_csv, score
from classifier.data.prepare import write_prepared
from tests.conftest import tiny_images
from tests.unit.test_save_and_predict import write_candidate

NUM_CLASSES = 7


def random_case(seed: int, n: int = 400):
    """Random labels and logits; class 5 is never the true class and class 6 never predicted."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    labels[labels == 5] = 0
    logits = torch.randn(n, NUM_CLASSES, generator=generator) * 2
    logits[:, 6] = logits.min(dim=1).values - 1  # never the argmax, yet within log_loss's clipping
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn(seed):
    logits, labels = random_case(seed)
    summary, per_class, predictions, losses = score(logits, labels, NUM_CLASSES)
    y_true, y_pred = labels.numpy(), predictions.numpy()
    everything = list(range(NUM_CLASSES))

    assert summary["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-6)
    precision, recall, f1, support = sk.precision_recall_fscore_support(y_true, y_pred, labels=everything, zero_division=0)
    assert [row["precision"] for row in per_class] == pytest.approx(precision)
    assert [row["recall"] for row in per_class] == pytest.approx(recall)
    assert [row["f1"] for row in per_class] == pytest.approx(f1)
    assert [row["support"] for row in per_class] == support.tolist()
    assert summary["macro_f1"] == pytest.approx(
        sk.f1_score(y_true, y_pred, labels=everything, average="macro", zero_division=0), abs=1e-6)
    confusion = evaluate.confusion_matrix(labels, predictions, NUM_CLASSES).numpy()
    assert (confusion == sk.confusion_matrix(y_true, y_pred, labels=everything)).all()

    probabilities = torch.softmax(logits.double(), dim=1).numpy()
    assert summary["loss"] == pytest.approx(sk.log_loss(y_true, probabilities, labels=everything), abs=1e-5)
    per_example = -np.log(probabilities[np.arange(len(y_true)), y_true])
    assert losses.double().numpy() == pytest.approx(per_example, rel=1e-4, abs=1e-6)
    assert per_class[5]["support"] == 0 and per_class[6]["precision"] == 0.0  # the edge classes


def test_predictions_csv_reads_back_into_the_same_numbers():
    logits, labels = random_case(4)
    summary, per_class, predictions, losses = score(logits, labels, NUM_CLASSES)
    classes = [f"class {letter}" for letter in "abcdefg"]
    images = np.arange(len(labels) * 4, dtype=np.uint8).reshape(-1, 2, 2)
    text = predictions_csv(example_ids(images), classes, labels, predictions, losses)
    table = read_predictions(text)
    assert table.columns.tolist() == ["id", "actual", "predicted", "loss"]
    assert table["actual"].tolist() == [classes[i] for i in labels.tolist()]
    numbers = point_metrics(table)
    assert numbers["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-6)
    assert numbers["loss"] == pytest.approx(summary["loss"], abs=1e-5)
    # Every class occurs, as a true class or a prediction, so compare averages over all of them too.
    assert numbers["macro_f1"] == pytest.approx(summary["macro_f1"], abs=1e-6)
    assert per_class_csv(classes, per_class).splitlines()[0] == "class,precision,recall,f1,support"


def test_the_fingerprint_is_the_documented_hash_and_sees_every_change():
    images, labels = tiny_images(50)
    fingerprint = split_fingerprint(images, labels)
    expected = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()
    assert fingerprint == f"sha256:{expected}"
    pixel = images.copy()
    pixel[7, 3, 3] ^= 1
    label = labels.copy()
    label[7] = (label[7] + 1) % 10
    order = np.r_[1, 0, 2:50]
    changed = [split_fingerprint(pixel, labels), split_fingerprint(images, label),
               split_fingerprint(images[order], labels[order]), split_fingerprint(images[:-1], labels[:-1])]
    assert fingerprint not in changed and len(set(changed)) == 4


def test_example_ids_are_content_hashes_and_repeats_stay_distinct():
    images, _ = tiny_images(20)
    ids = example_ids(images)
    assert ids == example_ids(images.copy()) and len(set(ids)) == 20
    assert ids[3] == hashlib.sha256(images[3].tobytes()).hexdigest()[:16]
    repeated = example_ids(np.stack([images[0], images[1], images[0], images[0]]))
    assert repeated == [ids[0], ids[1], f"{ids[0]}-2", f"{ids[0]}-3"]


def test_main_writes_numbers_identity_and_one_row_per_test_image(tmp_path):
    images, labels = tiny_images(60)
    splits = {"train": (images[:40], labels[:40]), "val": (images[40:45], labels[40:45]),
              "test": (images[45:], labels[45:])}
    write_prepared(tmp_path / "prepared", splits, "mnist-5k")
    write_candidate(tmp_path)
    out = tmp_path / "metrics"
    evaluate.main([str(tmp_path / "prepared"), str(tmp_path / "candidate.pth"), str(tmp_path / "candidate.json"),
                   *(str(out / name) for name in ("metrics.json", "evaluation.json", "predictions.csv", "per_class.csv"))])

    metrics = json.loads((out / "metrics.json").read_text())
    leaves = [metrics["samples"][split] for split in ("train", "val", "test")] + list(metrics["test"].values())
    assert set(metrics) == {"samples", "test"} and all(isinstance(value, (int, float)) for value in leaves)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation == {"dataset": "mnist-5k", "classes": [str(digit) for digit in range(10)], "test_samples": 15,
                          "test_fingerprint": split_fingerprint(images[45:], labels[45:])}
    table = read_predictions((out / "predictions.csv").read_text())
    assert table["id"].tolist() == example_ids(images[45:])
    assert table["actual"].tolist() == [str(label) for label in labels[45:]]
    assert point_metrics(table)["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
