"""Figures for eval results: a length x depth heatmap for needle retrieval, accuracy lines for MQAR.

Figures are built with matplotlib's object API (``Figure``), not pyplot: no display backend is
needed and nothing global changes, so plotting is safe on a headless GPU node and inside tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


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
    """Heatmap of ``run_niah`` accuracy: context length (rows) x needle depth (columns)."""
    lengths, depths, accuracy = results["lengths"], results["depths"], results["accuracy"]
    fig = Figure(figsize=(1.2 + 0.9 * len(depths), 1.0 + 0.55 * len(lengths)))
    ax = fig.add_subplot()
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_xlabel("needle depth (0 = start of context)")
    ax.set_ylabel("context length (tokens)")
    for i, row in enumerate(accuracy):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="exact match")
    ax.set_title(title or f"{results.get('task', 'niah')}: {results.get('model') or 'model'}", fontsize=10)
    return _save(fig, path)


def plot_mqar(results: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """MQAR accuracy against sequence length, one line per number of key-value pairs."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    lengths = results["lengths"]
    for n, row in zip(results["num_pairs"], results["accuracy"]):
        points = [(length, a) for length, a in zip(lengths, row) if a is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{n} pairs")
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
    all_lengths: set[int] = set()
    for name, (lengths, accuracy) in curves.items():
        all_lengths.update(lengths)
        yerr = errors.get(name) if errors else None
        ax.errorbar(list(lengths), list(accuracy), yerr=yerr, marker="o", capsize=3, label=name)
    _length_axis(ax, sorted(all_lengths))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _length_axis(ax: Any, lengths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [format_length(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
