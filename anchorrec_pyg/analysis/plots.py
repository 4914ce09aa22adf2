r"""The pictures of the analyses, drawn on a :class:`matplotlib.figure.Figure` handed in by
:func:`~anchorrec_pyg.analysis.results.write_figure` (matplotlib is imported only there, lazily:
it is the optional extra ``anchorrec-pyg[plots]``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ANNOTATE_MAX = 20
"""Heat maps with at most this many rows print their values in the cells."""


def heatmap(figure: Any, matrix: Sequence[Sequence[float]], labels: Sequence[str],
            title: str, colorbar_label: str) -> None:
    r"""A labelled square heat map of :obj:`matrix` (values in [0, 1])."""
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    ax = figure.add_subplot()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap='viridis')
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha='right')
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(title)
    if len(labels) <= ANNOTATE_MAX:
        for r in range(len(labels)):
            for c in range(len(labels)):
                if math.isfinite(values[r, c]):
                    ax.text(c, r, f'{values[r, c]:.2f}', ha='center', va='center', fontsize=7,
                            color='white' if values[r, c] < 0.6 else 'black')
    figure.colorbar(image, ax=ax, label=colorbar_label)


Panel = Tuple[str, Sequence[str], Dict[str, Sequence[float]],
              Optional[Dict[str, Sequence[float]]]]
"""A bar panel: ``(title, categories, series, errors)``."""


def grouped_bars(figure: Any, panels: List[Panel], xlabel: str = '') -> None:
    r"""One panel per entry ``(title, categories, series, errors)``: for every category a group
    of bars, one per series (``{name: values per category}``), with optional error bars
    (``errors``, same layout)."""
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, categories, series, errors) in zip(axes, panels):
        width = 0.8 / max(len(series), 1)
        x = np.arange(len(categories))
        for s, (name, values) in enumerate(series.items()):
            err = None if errors is None else errors.get(name)
            ax.bar(x + (s - (len(series) - 1) / 2) * width,
                   [np.nan if v is None else v for v in values], width, yerr=err, capsize=2,
                   label=name)
        ax.set_xticks(x, categories, rotation=30 if len(categories) > 4 else 0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if panels and len(panels[0][2]) > 1:
        axes[0].legend(fontsize=7)


def scatter_panels(figure: Any, panels: List[Dict[str, Any]], method: str) -> None:
    r"""One 2-D scatter per panel (``{'spaces': [...], 'points': [[space, item, x, y], ...]}``),
    coloured by space."""
    axes = figure.subplots(1, max(len(panels), 1), squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for name in panel['spaces']:
            points = np.array([p[2:] for p in panel['points'] if p[0] == name], dtype=float)
            ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, label=name)
        ax.set_title(f"{method.upper()}: {', '.join(panel['spaces'])}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3)
