r"""Writing an analysis' results: the numbers (JSON and CSV) and, when matplotlib is installed,
the picture (PNG), all next to each other in the ``--out`` folder and all written atomically
(a temporary file in the same folder, then :func:`os.replace`).

matplotlib is an optional extra (``pip install 'anchorrec-pyg[plots]'``); without it the numbers
are still written and :func:`write_figure` returns :obj:`None`, so that the command can say how
to get the picture (:data:`NO_MATPLOTLIB`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from anchorrec_pyg.io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

NO_MATPLOTLIB = ("no picture: matplotlib is not installed; install it with "
                 "pip install 'anchorrec-pyg[plots]' and rerun the command")

FIGURE_DPI = 150


def _clean(value: Any) -> Any:
    """JSON-safe copy of :obj:`value`: NaN/inf become ``None`` (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: PathLike, payload: Dict[str, Any]) -> Path:
    r"""Writes :obj:`payload` as indented JSON (non-finite numbers as ``null``), atomically."""
    text = json.dumps(_clean(payload), indent=2, allow_nan=False) + '\n'
    atomic_write_text(path, text)
    return Path(path)


def write_csv(path: PathLike, rows: Sequence[Dict[str, Any]],
              columns: Optional[Sequence[str]] = None) -> Path:
    r"""Writes :obj:`rows` (dicts) as CSV with the header :obj:`columns` (default: the keys in
    order of first appearance), atomically. Floats are written with 6 significant digits."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f'{v:.6g}' if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def load_matplotlib() -> Optional[Any]:
    r"""The :class:`matplotlib.figure.Figure` class, or :obj:`None` when matplotlib is not
    installed. Figures are drawn with the object-oriented API and the Agg canvas, so that no
    global pyplot state or display backend is touched."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def write_figure(path: PathLike, draw: Callable[[Any], None],
                 size: Sequence[float] = (6.4, 4.8)) -> Optional[Path]:
    r"""Draws a figure with :obj:`draw(figure)` and writes it as PNG to :obj:`path`, atomically.

    Returns the path, or :obj:`None` (nothing written) when matplotlib is not installed.
    """
    figure_cls = load_matplotlib()
    if figure_cls is None:
        return None
    figure = figure_cls(figsize=tuple(size), layout='constrained')
    draw(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=FIGURE_DPI)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return Path(path)


def format_table(rows: List[List[str]]) -> str:
    r"""Left-aligned first column, right-aligned others, two spaces between columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)
