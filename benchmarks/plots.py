"""The figures of ``docs/benchmarks.md``: each benchmark draws its main comparison as a PNG in
``docs/img/`` (``bench-<name>.png``) when it writes its section, so a figure always shows the run
its table shows. Figures are drawn without pyplot (no display, no global state): a
``matplotlib.figure.Figure`` saves itself through the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def _save(figure: Figure, name: str) -> Path:
    path = IMG / f"bench-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _value(value: float) -> str:
    """A bar's label: three significant digits, and whole numbers from 1,000 on ("13,327", not
    "1.33e+04")."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}"


def bars(
    name: str,
    title: str,
    values: Mapping[str, float],
    *,
    ylabel: str,
    target: tuple[str, float] | None = None,
) -> Path:
    """A bar per label (in the mapping's order), each labelled with its value; ``target``, as
    (label, value), draws a dashed line across. Returns the PNG's path."""
    figure = Figure(figsize=(max(7.0, 1.2 * len(values)), 3.6))  # room for each bar's label
    axes = figure.subplots()
    labels = list(values)
    drawn = axes.bar(labels, [values[label] for label in labels], color="#4878a8")
    axes.bar_label(drawn, fmt=_value, padding=2)
    axes.margins(y=0.15)  # room above the bars for their labels
    if target is not None:
        axes.axhline(target[1], color="#c44e52", linestyle="--", label=target[0])
        axes.legend(loc="upper right")
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", labelrotation=12)
    return _save(figure, name)


def lines(
    name: str,
    title: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> Path:
    """One line with markers per named series of (x values, y values). Returns the PNG's path."""
    figure = Figure(figsize=(7, 3.6))
    axes = figure.subplots()
    for label, (xs, ys) in series.items():
        axes.plot(list(xs), list(ys), marker="o", label=label)
    if logy:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, name)
