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
    """One line per column: base wide, pale and dashed, head thin and solid on top; train and val told apart by marker."""
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(6.4, 4.0)
    axes = figure.add_subplot()
    markers = ["o", "s", "^", "d"]
    # Base first, wide and pale, head on top, thin: where the two coincide (deterministic training
    # makes early epochs identical) the head's line runs inside the base's, and both stay visible.
    runs = [("base", base_history, BASE_COLOR, "--", 5.0, 0.45)] if base_history else []
    runs.append(("head", head_history, HEAD_COLOR, "-", 1.5, 1.0))
    for run_name, history, color, style, width, alpha in runs:
        epochs = [row["epoch"] for row in history]
        for column, marker in zip(columns, markers):
            axes.plot(epochs, [row[column] for row in history], linestyle=style, marker=marker, linewidth=width,
                      markersize=width + 2, alpha=alpha, color=color, label=f"{run_name} {column}")
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


def change_figure(path: Path, title: str, base_pairs: Sequence[tuple[str, str]], head_pairs: Sequence[tuple[str, str]],
                  classes: Sequence[str]) -> Path:
    """Head minus base confusion counts: on the diagonal more is better, off it more is worse."""
    base_counts, head_counts = confusion_counts(base_pairs, classes), confusion_counts(head_pairs, classes)
    change = [[head - base for head, base in zip(head_row, base_row)] for head_row, base_row in zip(head_counts, base_counts)]
    reach = max((abs(value) for row in change for value in row), default=0) or 1
    figure = _new_figure(5.6, 5.0)
    axes = figure.add_subplot()
    image = axes.imshow(change, cmap="PuOr", vmin=-reach, vmax=reach)
    figure.colorbar(image, ax=axes, shrink=0.8, label="head - base (images)")
    axes.set_xticks(range(len(classes)), labels=classes)
    axes.set_yticks(range(len(classes)), labels=classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title)
    for row_index, row in enumerate(change):
        for column_index, value in enumerate(row):
            if value:
                axes.text(column_index, row_index, f"{value:+d}", ha="center", va="center", fontsize=7,
                          color="white" if abs(value) > reach / 2 else "black")
    figure.savefig(path)
    return path
