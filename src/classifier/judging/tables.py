"""Per-example results tables: read and checked, scored, coded on one class set, paired.

Pure pandas and numpy. A table is evaluate's `metrics/predictions.csv`: columns `id`, `actual`,
`predicted`, `loss`, one row per test example in the test split's order.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from classifier.judging.intervals import macro_f1

COLUMNS = ("id", "actual", "predicted", "loss")


class PredictionsError(ValueError):
    """A per-example table that cannot be used; the message names the file and the problem."""


def loss_problem(loss: pd.Series) -> str | None:
    """Why a column of per-example losses cannot be judged (a row that is not a number >= 0), or None."""
    values = pd.to_numeric(loss, errors="coerce").to_numpy(float)
    bad = ~(np.isfinite(values) & (values >= 0))
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad)[0])
    return f"row {row + 1}: loss {loss.iloc[row]!r} is not a number >= 0"


def read_predictions(text: str, source: str = "predictions.csv") -> pd.DataFrame:
    """A per-example CSV as a DataFrame of (id, actual, predicted: str; loss: float), checked."""
    try:
        # keep_default_na: a class called "NA" or "None" is a class name, not a missing value.
        table = pd.read_csv(io.StringIO(text), dtype={"id": str, "actual": str, "predicted": str},
                            keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise PredictionsError(f"{source}: not a readable CSV ({error})") from None
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise PredictionsError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    table = table.loc[:, list(COLUMNS)]
    if table.empty:
        raise PredictionsError(f"{source}: no examples")
    if problem := loss_problem(table["loss"]):
        raise PredictionsError(f"{source}: {problem}")
    if (table[["id", "actual", "predicted"]] == "").any().any():
        raise PredictionsError(f"{source}: an empty id, actual or predicted cell")
    if table["id"].duplicated().any():
        raise PredictionsError(f"{source}: id {table['id'][table['id'].duplicated()].iloc[0]!r} appears twice")
    return table.assign(loss=pd.to_numeric(table["loss"]).astype(float)).reset_index(drop=True)


def class_set(*tables: pd.DataFrame) -> list[str]:
    """Every class the test split holds or any table predicts: the classes macro F1 averages over,
    the same for both sides of a comparison, so a change and its interval average over one set."""
    return sorted(set().union(*(set(table["actual"]) | set(table["predicted"]) for table in tables)))


def codes(column: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Class names as their positions in `classes`."""
    index = {name: position for position, name in enumerate(classes)}
    return column.map(index).to_numpy(dtype=np.int64)


def point_metrics(table: pd.DataFrame, classes: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy, macro F1 (over `classes`; by default the table's own) and mean loss of one table."""
    classes = class_set(table) if classes is None else classes
    actual, predicted = codes(table["actual"], classes), codes(table["predicted"], classes)
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (actual, predicted), 1)
    return {
        "accuracy": float(np.mean(actual == predicted)),
        "macro_f1": float(macro_f1(confusion)),
        "loss": float(table["loss"].mean()),
    }


def pairing_problem(base: pd.DataFrame, head: pd.DataFrame) -> str | None:
    """Why two tables cannot be paired example by example, or None when they can."""
    if len(base) != len(head):
        return f"the base has {len(base):,} examples and the head {len(head):,}"
    if not base["id"].reset_index(drop=True).equals(head["id"].reset_index(drop=True)):
        return "the examples' ids differ (a different test set, or another order)"
    if not base["actual"].reset_index(drop=True).equals(head["actual"].reset_index(drop=True)):
        return "the same examples carry different true classes"
    return None
