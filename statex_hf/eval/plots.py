"""Figures for eval results: a length x depth heatmap for needle retrieval, accuracy lines for MQAR.

Figures are built with matplotlib's object API (``Figure``), not pyplot: no display backend is
needed and nothing global changes, so plotting is safe on a headless GPU node and inside tests.

Line plots keep every series visible where several share a value (two models both at 1.0, say):
each series has its own marker and line style, and is shifted sideways by a small fraction of the
spacing between points, so equal points sit side by side instead of on top of each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")
# Sideways shift between neighbouring series, as a fraction of the smallest gap between x values.
_SPREAD = 0.06


def format_length(tokens: int) -> str:
    """``4096 -> "4k"``, ``1536 -> "1.5k"``, ``300 -> "300"`` (k = 1024, as on the command line)."""
    if tokens >= 1024 and tokens % 512 == 0:
        k = tokens / 1024
        return f"{k:g}k"
    return str(tokens)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_niah_heatmap(results: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Heatmap of ``run_niah`` accuracy: context length (rows) x needle depth (columns).

    The needle goes in at a sentence boundary, so at short lengths it can land far from the depth asked
    for. Where it did (``placed_depth``, the mean depth the needles landed at, differs by more than 0.05),
    the cell says where: ``0.60 @0.08``.
    """
    lengths, depths, accuracy = results["lengths"], results["depths"], results["accuracy"]
    placed = results.get("placed_depth")
    fig = Figure(figsize=(1.2 + 1.1 * len(depths), 1.0 + 0.55 * len(lengths)))
    ax = fig.add_subplot()
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lengths)), [format_length(n) for n in lengths])
    moved = placed is not None and any(
        "@" in heatmap_cell_label(0.0, d, p) for row in placed for d, p in zip(depths, row)
    )
    ax.set_xlabel(
        "needle depth asked for (0 = start of context)" + ("; @: mean depth where it landed" if moved else "")
    )
    ax.set_ylabel("context length (tokens)")
    for i, row in enumerate(accuracy):
        for j, value in enumerate(row):
            label = heatmap_cell_label(value, depths[j], placed[i][j] if placed is not None else None)
            ax.text(j, i, label, ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="exact match")
    ax.set_title(title or f"{results.get('task', 'niah')}: {results.get('model') or 'model'}", fontsize=10)
    return _save(fig, path)


def heatmap_cell_label(accuracy: float, depth: float, placed_depth: float | None) -> str:
    """``"0.60"``, or ``"0.60 @0.08"`` where the needles landed more than 0.05 away from the depth asked for."""
    label = f"{accuracy:.2f}"
    if placed_depth is not None and abs(placed_depth - depth) > 0.05:
        label += f" @{placed_depth:.2f}"
    return label


def plot_mqar(results: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """MQAR accuracy against sequence length, one line per number of key-value pairs."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    lengths = results["lengths"]
    series = {
        f"{n} pairs": [(length, a) for length, a in zip(lengths, row) if a is not None]
        for n, row in zip(results["num_pairs"], results["accuracy"])
    }
    series = {name: points for name, points in series.items() if points}
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*points)
        ax.plot(_shifted(xs, i, len(series), lengths, log_x=True), ys, label=name, **_style(i))
    _length_axis(ax, lengths)
    ax.set_ylabel("query accuracy")
    ax.legend(fontsize=8)
    ax.set_title(title or f"MQAR: {results.get('model') or 'model'}", fontsize=10)
    return _save(fig, path)


def plot_accuracy_by_length(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    title: str,
    ylabel: str = "accuracy",
    errors: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Several models' accuracy against length on one axis (``curves[name] = (lengths, accuracy)``)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    all_lengths = sorted({n for lengths, _ in curves.values() for n in lengths})
    _draw_series(ax, curves, errors, all_lengths, log_x=True)
    _length_axis(ax, all_lengths)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_lines(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    *,
    xlabel: str,
    ylabel: str = "accuracy",
    errors: Mapping[str, Sequence[float]] | None = None,
    log_x: bool = True,
    tick_format: Callable[[Any], str] = str,
    ylim: tuple[float, float] | None = (-0.03, 1.03),
    markers: bool = True,
) -> Path:
    """Several series on one axis (``curves[name] = (xs, ys)``), every one visible where they coincide.

    ``log_x`` puts the x axis on a base-2 log scale with a tick at every x (pairs, lengths); otherwise the
    axis is linear (steps) and ``markers=False`` draws plain lines.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    all_x = sorted({x for xs, _ in curves.values() for x in xs})
    _draw_series(ax, curves, errors, all_x, log_x=log_x, markers=markers)
    if log_x and all_x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_x, [tick_format(x) for x in all_x])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _style(i: int, markers: bool = True) -> dict[str, Any]:
    """Series ``i``'s marker (hollow every other one) and line style: no two neighbours look alike."""
    style: dict[str, Any] = {"linestyle": _LINESTYLES[i % len(_LINESTYLES)], "linewidth": 1.4}
    if markers:
        style.update(marker=_MARKERS[i % len(_MARKERS)], markersize=6)
        if i % 2:
            style["markerfacecolor"] = "none"
    return style


def _shifted(xs: Sequence[float], i: int, count: int, all_x: Sequence[float], log_x: bool) -> list[float]:
    """``xs`` moved sideways for series ``i`` of ``count``, centred on the true x, by ``_SPREAD`` of the x gap."""
    if count < 2:
        return list(xs)
    offset = (i - (count - 1) / 2) * _SPREAD
    if log_x:
        ratios = [b / a for a, b in zip(all_x, all_x[1:]) if a > 0]
        step = min(ratios, default=2.0)
        return [x * step**offset for x in xs]
    gaps = [b - a for a, b in zip(all_x, all_x[1:])]
    return [x + offset * min(gaps, default=1.0) for x in xs]


def _draw_series(
    ax: Any,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    errors: Mapping[str, Sequence[float]] | None,
    all_x: Sequence[float],
    log_x: bool,
    markers: bool = True,
) -> None:
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        yerr = errors.get(name) if errors else None
        shifted = _shifted(xs, i, len(curves), all_x, log_x) if markers else list(xs)
        ax.errorbar(shifted, list(ys), yerr=yerr, capsize=3 if yerr else 0, label=name, **_style(i, markers))


def _length_axis(ax: Any, lengths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [format_length(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
