"""params.yaml, validated before any work: one error naming the file, key, value and rule."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from classifier.cli import UserError
from classifier.datasets import DATASETS

DatasetName = Literal[tuple(DATASETS)]  # type: ignore[valid-type]


class ParamsError(UserError):
    """Raised for a params file that cannot be used; the message is meant for the user."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_mirror(url: str) -> str:
    """A mirror's base URL with a trailing slash, or ValueError naming the rule (classifier.data.download)."""
    parts = urlsplit(url)
    # Plain http is allowed on loopback only, so tests and local mirrors need no certificate.
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname or "")):
        if not parts.hostname:
            raise ValueError("must be an https:// URL with a host")
        return url if url.endswith("/") else url + "/"
    raise ValueError("must be an https:// URL (http:// only on 127.0.0.1 or localhost)")


class Section(BaseModel):
    # strict: "10" is not an int and 1 is not a bool; forbid: a typo is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# dvc.yaml interpolates data.folder into a double-quoted shell command (`--folder "${data.folder}"`):
# inside double quotes a shell still expands `$`, backticks and `\`, and `"` ends the quoting. So none of
# them may be in the value, and the validate stage, first in the graph, stops `dvc repro`, `dvc exp run -S`
# and every sweep point before the snapshot stage's command is run (tests/pipeline/test_shell_params.py).
SHELL_CHARACTERS = ("$", "`", "\\", '"', "\n", "\r")


def _check_folder(location: str) -> str:
    if not location.strip() or location != location.strip():
        raise ValueError("must be a folder path or a URL, without surrounding spaces")
    if found := [char for char in SHELL_CHARACTERS if char in location]:
        raise ValueError(f"must not hold {' '.join(repr(char) for char in found)}: a shell would read them "
                         "(it is templated into a command in dvc.yaml); rename the folder")
    return location


FolderLocation = Annotated[str, AfterValidator(_check_folder)]


class DataParams(Section):
    dataset: DatasetName
    # The ImageFolder tree for `dataset: folder`: a path (relative to the project, or absolute) or any
    # URL DVC reads (s3://, https://, ssh://, ...). dvc.yaml's download stage depends on it, so DVC
    # notices when its content changes; with another dataset it is a dependency and nothing more.
    folder: FolderLocation = "images"
    # Every image becomes image_size x image_size grayscale uint8 (classifier.data.images).
    image_size: int = Field(default=28, ge=4, le=1024)
    val_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)


class ModelParams(Section):
    hidden_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(max_length=16)


class TrainParams(Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=1_000_000)
    optimizer: Literal["adam", "sgd"]
    learning_rate: float = Field(gt=0, le=10)
    device: Literal["auto", "cpu", "cuda", "mps"]
    precision: Literal["fp32", "bf16"]
    checkpoint_every: int = Field(ge=1, le=10_000)
    # The training seed (initial weights and shuffle order), apart from the top-level `seed` that
    # fixes the split: `dvc exp run -S train.seed=3` retrains on the same split. Absent (None): the
    # top-level seed, as before there was one, so an unchanged params.yaml trains the same bytes.
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    def seed_or(self, split_seed: int) -> int:
        """The seed training draws from: its own, else the split's."""
        return split_seed if self.seed is None else self.seed


class SaveParams(Section):
    min_accuracy: float = Field(ge=0, le=1)


class MinEffect(Section):
    """The smallest change in each test metric that matters; a smaller one is never called a change."""

    # Above 0: a change "matters" relative to min_effect, and the verdict's words and the gate's margin
    # divide by it; 0 would call every measurable change one that matters (and crashed both).
    accuracy: float = Field(gt=0, le=1)
    macro_f1: float = Field(gt=0, le=1)
    loss: float = Field(gt=0, le=100)


class CompareParams(Section):
    """How a new model is judged against a base (classifier.judging.compare); always read from the base."""

    # The paired tests' significance level: every interval is (1 - alpha) and two-sided, and the gate
    # promotes only what the report passes (classifier.judging.gate_rule); below 0.5 so an interval has width.
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_effect: MinEffect
    # Read by nothing since the intervals stopped resampling (classifier.judging.intervals: score and t intervals);
    # still accepted, whatever its value, because the report and the gate read the BASE's params.yaml,
    # which may predate that: an old base's `resamples: 50` must not make its pull requests unjudgeable.
    resamples: Any = Field(default=None, exclude=True)
    # The retrain gate keeps out a challenger measurably worse on these metrics (its interval
    # excludes 0 on the worse side), even by less than min_effect; [] promotes one that is
    # non-inferior within min_effect all the same. Not loss by default: equally accurate models
    # trained with other seeds differ measurably in mean loss (docs/retraining.md, "The gate's rule").
    keep_out_measurably_worse: list[Literal["accuracy", "macro_f1", "loss"]] = ["accuracy", "macro_f1"]

    @field_validator("keep_out_measurably_worse")
    @classmethod
    def _each_metric_once(cls, metrics: list[str]) -> list[str]:
        if len(set(metrics)) != len(metrics):
            raise ValueError("must name each metric at most once")
        return metrics


Policy = Literal["block", "warn", "off"]


class ChecksParams(Section):
    """What the data checks before training do about each finding (classifier.data.checks): `block`
    stops prepare, so nothing trains and a retrain ends `blocked`; `warn` reports; `off` skips."""

    leakage: Policy = "block"             # one image (content hash, or decoded pixels) in two splits
    broken: Policy = "block"              # files that do not decode, are truncated, or are not images
    duplicates: Policy = "warn"           # one image more than once within a split
    unknown_class: Policy = "warn"        # a class folder the champion's data did not have
    small_class: Policy = "warn"          # a class with fewer than min_images_per_class images
    min_images_per_class: int = Field(default=10, ge=0, le=1_000_000_000)
    balance: Policy = "warn"              # class shares differ from the champion's (chi-square p < balance_alpha)
    balance_alpha: float = Field(default=0.001, gt=0, lt=0.5)


class Params(Section):
    seed: int = Field(ge=0, le=2**32 - 1)
    data: DataParams
    model: ModelParams
    train: TrainParams
    save: SaveParams
    compare: CompareParams
    # Optional, so a base revision's params.yaml from before the checks still validates.
    checks: ChecksParams = ChecksParams()


# Keys that left params.yaml, with where they went: an older params.yaml names them.
MOVED_OUT = {
    "data.mirrors": " (the mirrors moved out of params.yaml into classifier/datasets.py, beside their checksums; "
                    "delete the key, and set CLASSIFIER_MIRRORS to use other mirrors)",
}


def _describe(error: dict, fields: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing (required)"
    if kind == "extra_forbidden":
        parent = error["loc"][:-1]
        allowed = fields.get(parent)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{key}: unknown key{MOVED_OUT.get(key, hint)}"
    rule = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{key} = {error['input']!r}: {rule}"


def _allowed_keys() -> dict[tuple, list[str]]:
    allowed = {(): list(Params.model_fields)}
    for name, field in Params.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            allowed[(name,)] = list(field.annotation.model_fields)
    return allowed


def validate_params(raw: object, source: str = "params.yaml") -> Params:
    if raw is None:
        raise ParamsError(f"{source}: the file is empty; expected sections {', '.join(Params.model_fields)}")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        fields = _allowed_keys()
        problems = "\n".join(f"  {_describe(item, fields)}" for item in error.errors())
        raise ParamsError(f"{source}: invalid params\n{problems}") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"{path}: cannot read params file ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    return validate_params(raw, str(path))
