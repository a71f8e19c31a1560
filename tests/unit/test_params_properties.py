"""Property-based: no params.yaml, however wrong, gets past validation or fails any other way."""

import copy
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier.params import Params, ParamsError, load_params, validate_params
from tests.conftest import PROJECT_ROOT

DEFAULTS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def leaf_keys(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and key != "mirrors":
            yield from leaf_keys(value, (*prefix, key))
        else:
            yield (*prefix, key)


LEAVES = sorted(leaf_keys(DEFAULTS))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
any_value = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=8)


def replaced(path, value):
    params = copy.deepcopy(DEFAULTS)
    section = params
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    return params


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(LEAVES), value=any_value)
def test_any_value_anywhere_is_accepted_or_named(path, value):
    try:
        params = validate_params(replaced(path, value))
    except ParamsError as error:
        assert ".".join(path) in str(error)
    else:
        assert isinstance(params, Params)  # an acceptable value: it must round-trip as given
        accepted = params.model_dump()
        for key in path:
            accepted = accepted[key]
        if isinstance(value, float) and math.isfinite(value):
            assert accepted == value


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(LEAVES),
       value=st.one_of(st.text(min_size=1, max_size=10), st.lists(st.integers(), min_size=1, max_size=3),
                       st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2)))
def test_a_value_of_the_wrong_kind_is_always_refused(path, value):
    default = DEFAULTS
    for key in path:
        default = default[key]
    if type(default) is type(value) or (isinstance(default, str) and isinstance(value, str)):
        return  # same kind: not what this property is about
    try:
        validate_params(replaced(path, value))
    except ParamsError as error:
        assert ".".join(path) in str(error)
    else:
        raise AssertionError(f"{'.'.join(path)} = {value!r} was accepted")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_file_content_is_valid_or_a_params_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(text)
    try:
        load_params(path)
    except ParamsError as error:
        assert str(error).startswith(str(path))


@settings(max_examples=50, deadline=None)
@given(unknown=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       section=st.sampled_from(["data", "model", "train", "save", "compare"]))
def test_an_unknown_key_in_any_section_is_named(unknown, section):
    params = copy.deepcopy(DEFAULTS)
    if unknown in params[section]:
        return
    params[section][unknown] = 1
    try:
        validate_params(params)
    except ParamsError as error:
        assert f"{section}.{unknown}: unknown key" in str(error)
    else:
        raise AssertionError("unknown key accepted")


def test_each_missing_section_is_named():
    for section in DEFAULTS:
        params = copy.deepcopy(DEFAULTS)
        del params[section]
        if not Params.model_fields[section].is_required():  # checks: a base's params from before it still validate
            assert getattr(validate_params(params), section) == Params.model_fields[section].default
            continue
        try:
            validate_params(params)
        except ParamsError as error:
            assert f"{section}: missing" in str(error)
        else:
            raise AssertionError(f"{section} missing but accepted")
