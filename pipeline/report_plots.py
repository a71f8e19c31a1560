"""The pull-request report's images: training curves of base against head, and confusion matrices.

matplotlib's object API (Figure + the Agg canvas) rather than pyplot: no global figure state and
no backend to pick, so it draws the same on a headless CI runner as on a laptop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

HEAD_COLOR, BASE_COLOR = "tab:blue", "tab:gray"

# (image file, title, y label, history columns) for each curve figure.
CURVES = [
    ("loss.png", "Loss per epoch", "cross-entropy", ("train_loss", "val_loss")),
    ("accuracy.png", "Accuracy per epoch", "accuracy", ("train_accuracy", "val_accuracy")),
]


def _new_figure(width: float, height: float):
    # Imported here, not at module level: nothing heavy runs when the report module is imported.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curves_figure(
    path: Path,
    title: str,
    y_label: str,
    columns: Sequence[str],
    head_history: Sequence[Mapping[str, float]],
    base_history: Sequence[Mapping[str, float]] | None,
) -> Path:
    """One line per column: head solid in colour, base dashed in grey; train and val told apart by marker."""
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(6.4, 4.0)
    axes = figure.add_subplot()
    markers = ["o", "s", "^", "d"]
    runs = [("head", head_history, HEAD_COLOR, "-")]
    if base_history:
        runs.append(("base", base_history, BASE_COLOR, "--"))
    for run_name, history, color, style in runs:
        epochs = [row["epoch"] for row in history]
        for column, marker in zip(columns, markers):
            axes.plot(epochs, [row[column] for row in history], linestyle=style, marker=marker,
                      color=color, label=f"{run_name} {column}")
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set_ylabel(y_label)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path)
    return path


def confusion_counts(pairs: Sequence[tuple[str, str]], classes: Sequence[str]) -> list[list[int]]:
    """counts[actual][predicted] in the order of `classes`."""
    index = {name: position for position, name in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for actual, predicted in pairs:
        counts[index[actual]][index[predicted]] += 1
    return counts


def confusion_figure(path: Path, title: str, pairs: Sequence[tuple[str, str]], classes: Sequence[str]) -> Path:
    counts = confusion_counts(pairs, classes)
    figure = _new_figure(5.6, 5.0)
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set_xticks(range(len(classes)), labels=classes)
    axes.set_yticks(range(len(classes)), labels=classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title)
    # Counts written in the cells: colour alone does not say whether a cell holds 3 or 30.
    peak = max((max(row) for row in counts), default=0) or 1
    for row_index, row in enumerate(counts):
        for column_index, count in enumerate(row):
            if count:
                axes.text(column_index, row_index, str(count), ha="center", va="center", fontsize=7,
                          color="white" if count > peak / 2 else "black")
    figure.savefig(path)
    return path
