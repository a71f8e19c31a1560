import copy

import pytest
import yaml

from classifier.params import ParamsError, load_params, validate_params


def with_change(params: dict, dotted: str, value) -> dict:
    changed = copy.deepcopy(params)
    *parents, leaf = dotted.split(".")
    section = changed
    for key in parents:
        section = section[key]
    section[leaf] = value
    return changed


def test_committed_params_are_valid(default_params):
    params = validate_params(default_params)
    assert params.data.dataset == "mnist-5k"
    assert list(params.model.hidden_sizes) == [512, 512]


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("train.epochs", 0, "greater than or equal to 1"),
        ("train.epochs", "10", "valid integer"),
        ("train.epochs", 2.5, "valid integer"),
        ("train.batch_size", -64, "greater than or equal to 1"),
        ("train.optimizer", "rmsprop", "'adam' or 'sgd'"),
        ("train.learning_rate", 0, "greater than 0"),
        ("train.device", "tpu", "'auto', 'cpu', 'cuda' or 'mps'"),
        ("data.dataset", "cifar10", "mnist-5k"),
        ("data.val_fraction", 0.7, "less than 0.5"),
        ("data.test_fraction", True, "valid number"),
        ("model.hidden_sizes", 512, "valid list"),
        ("save.min_accuracy", 1.5, "less than or equal to 1"),
        ("seed", -1, "greater than or equal to 0"),
        # 0 would call every measurable change one that matters, and the report and gate divide by it (issue 38)
        ("compare.min_effect.accuracy", 0, "greater than 0"),
        ("compare.min_effect.loss", 0.0, "greater than 0"),
        # templated into a double-quoted shell command in dvc.yaml (issue 38.6)
        ("data.folder", "images$(touch pwned)", "must not hold '$'"),
        ("data.folder", "images`id`", "must not hold '`'"),
        ("data.folder", "images\\x", "must not hold '\\\\'"),
        ("train.seed", -1, "greater than or equal to 0"),
        ("train.seed", "3", "valid integer"),
        ("train.seed", 2**32, "less than or equal to 4294967295"),
    ],
)
def test_bad_value_names_file_key_value_and_rule(default_params, key, value, rule):
    with pytest.raises(ParamsError) as caught:
        validate_params(with_change(default_params, key, value), "params.yaml")
    message = str(caught.value)
    assert message.startswith("params.yaml: invalid params")
    line = next(line for line in message.splitlines() if line.strip().startswith(key))
    assert repr(value) in line
    assert rule in line


def test_bad_list_item_is_named_by_its_index(default_params):
    with pytest.raises(ParamsError, match=r"model\.hidden_sizes\.1 = 0: must be greater than or equal to 1"):
        validate_params(with_change(default_params, "model.hidden_sizes", [512, 0]))


def test_unknown_key_is_named_with_the_allowed_ones(default_params):
    with pytest.raises(ParamsError, match=r"train\.epoch: unknown key \(allowed: epochs, batch_size"):
        validate_params(with_change(default_params, "train.epoch", 3))


def test_missing_section_is_named(default_params):
    del default_params["save"]
    with pytest.raises(ParamsError, match=r"save: missing"):
        validate_params(default_params)


def test_mirrors_in_an_older_params_yaml_are_refused_saying_where_they_went(default_params):
    """The mirrors left params.yaml (they changed `dvc exp show` into 3,000 columns of URLs, and no
    result depends on them): an older file that still names them gets one line saying where they are."""
    changed = with_change(default_params, "data.mirrors", {"mnist": ["https://example.com/mnist/"]})
    with pytest.raises(ParamsError, match=r"data\.mirrors: unknown key \(the mirrors moved out of params\.yaml "
                                          r"into classifier/datasets\.py.*CLASSIFIER_MIRRORS"):
        validate_params(changed)


def test_empty_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(ParamsError, match=r"params.yaml: the file is empty"):
        load_params(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [epochs: 1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match=r"nope.yaml: cannot read params file"):
        load_params(tmp_path / "nope.yaml")


def test_round_trip_through_yaml(tmp_path, default_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(default_params))
    assert load_params(path).train.epochs == default_params["train"]["epochs"]


@pytest.mark.parametrize("resamples", [50, 2000, None])
def test_an_old_bases_resamples_is_accepted_whatever_its_value(default_params, resamples):
    # The report and the gate read the base's params.yaml; `compare.resamples` is read by nothing now.
    params = copy.deepcopy(default_params)
    params["compare"]["resamples"] = resamples
    assert validate_params(params).compare.min_effect.accuracy == default_params["compare"]["min_effect"]["accuracy"]


def test_the_training_seed_defaults_to_the_split_seed(default_params):
    assert "seed" not in default_params["train"]  # absent: main's models train as before there was one
    params = validate_params(default_params)
    assert params.train.seed is None and params.train.seed_or(params.seed) == params.seed
    assert validate_params(with_change(default_params, "train.seed", 7)).train.seed_or(params.seed) == 7
