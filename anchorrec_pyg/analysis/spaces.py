r"""The item embedding spaces of a trained run, for the analyses of SPEC §6.

A *space* is one ``[I, d]`` table with a row per item. A run offers

* the raw feature tables of its dataset (``raw_mm``, ``raw_text``, ``raw_image``; group
  ``raw``), whatever the model reads: tables the model does not load are read from the same
  dataset folder, and a table the folder lacks is skipped;
* every item-level view of the model's forward pass (Contract 2, ``RecOutput.views``): a view of
  ``U + I`` rows (users first, e.g. ``'C'``) contributes its item rows, a view of ``I`` rows is
  taken as is, views named ``*_user`` (``R H_m``) and views of other shapes are skipped. Views
  named ``h_*`` are projection-domain embeddings (group ``projection``), the others live in the
  original space (group ``original``: ``C``, ``H_mm``, ``H_text``, ``H_image``, the anchor
  correction ``c`` of AnchorRec, AlignRec's views, ...);
* the projection-domain views of :meth:`AnchorRec.project` (``h_id``, ``h_mm``, ``h_text``,
  ``h_image``, ``h_mix``) when the model has such a method;
* the final item embeddings used for ranking, ``Z`` (group ``final``).

So AnchorRec offers all of SPEC §6's spaces, AlignRec its ``C`` and modality views, LightGCN
only ``C`` and ``Z``; every analysis reads whatever a run offers and skips what it lacks.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models.base import RecModel, RecOutput
from anchorrec_pyg.schema import MODALITIES, USER_ITEM, feature_key

logger = logging.getLogger(__name__)

GROUPS = ('raw', 'original', 'projection', 'final')
FINAL_SPACE = 'Z'
USER_VIEW_SUFFIX = '_user'
PROJECTION_PREFIX = 'h_'


@dataclass
class Space:
    """One item embedding space: ``x`` is ``[I, d]`` (float32, CPU)."""
    name: str
    group: str
    x: Tensor

    @property
    def dim(self) -> int:
        return int(self.x.size(1))


@dataclass
class LoadedRun:
    r"""A trained run ready for analysis.

    Attributes:
        path: The run folder or checkpoint given by the user.
        label: The name used in tables and figures.
        model: The model in evaluation mode.
        data: Its dataset (Contract 1).
        config: Its :class:`~anchorrec_pyg.config.ExperimentConfig`.
        output: The forward pass (no gradients).
        raw: The raw feature tables ``{modality: [I, dim]}`` available for this dataset.
    """
    path: Path
    label: str
    model: torch.nn.Module
    data: HeteroData
    config: object
    output: RecOutput
    raw: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return int(self.data['user'].num_nodes)

    @property
    def num_items(self) -> int:
        return int(self.data['item'].num_nodes)

    def spaces(self) -> Dict[str, Space]:
        """All item spaces of the run, in the order raw, original, projection, final."""
        return item_spaces(self.model, self.data, self.output, self.raw)


def run_label(path: Union[str, os.PathLike]) -> str:
    """A short default name for a run: the folder name (the parent's for a checkpoint file)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    return path.resolve().name or str(path)


def raw_feature_tables(config, data: HeteroData) -> Dict[str, Tensor]:
    r"""The raw feature tables of the run's dataset: those in :obj:`data`, plus the modalities
    the model does not load, read from the same dataset folder (skipped, with a log line, when
    the folder does not have them)."""
    from anchorrec_pyg.train.runner import load_data
    raw = {m: data['item'][feature_key(m)].detach().float().cpu()
           for m in MODALITIES if feature_key(m) in data['item']}
    for m in MODALITIES:
        if m in raw:
            continue
        try:
            extra = load_data(config.data, (m, ), log=False)
        except DataError as e:
            logger.info('raw %s features unavailable for this dataset: %s', m, e)
            continue
        raw[m] = extra['item'][feature_key(m)].float().cpu()
    return raw


def load_run(path: Union[str, os.PathLike], label: Optional[str] = None,
             device: Optional[str] = 'cpu', raw: bool = True) -> LoadedRun:
    r"""Loads a trained run (a run folder or a checkpoint, see
    :func:`~anchorrec_pyg.train.runner.resolve_checkpoint`) and runs its forward pass once.

    Args:
        path: The run folder or checkpoint.
        label: Its name in tables and figures (default: :func:`run_label`).
        device: Where to compute (default CPU; ``None``: the run's ``train.device``).
        raw: Also collect the raw feature tables of its dataset.
    """
    from anchorrec_pyg.train.runner import load_trained_model
    model, data, config = load_trained_model(path, device)
    with torch.no_grad():
        output = model(data)
    tables = raw_feature_tables(config, data) if raw else {}
    return LoadedRun(Path(path), label or run_label(path), model, data, config, output, tables)


def _item_rows(view: Tensor, num_users: int, num_items: int) -> Optional[Tensor]:
    if view.dim() != 2:
        return None
    if view.size(0) == num_users + num_items:
        return view[num_users:]
    if view.size(0) == num_items:
        return view
    return None


def item_spaces(model: RecModel, data: HeteroData, output: RecOutput,
                raw: Optional[Dict[str, Tensor]] = None) -> Dict[str, Space]:
    r"""The item spaces of a model (see the module docstring), in the order raw, original,
    projection, final; every table detached, float32, on the CPU."""
    num_users, num_items = int(data['user'].num_nodes), int(data['item'].num_nodes)
    spaces: Dict[str, Space] = {}

    def add(name: str, group: str, x: Tensor) -> None:
        if name not in spaces:
            spaces[name] = Space(name, group, x.detach().float().cpu())

    for m, x in (raw or {}).items():
        add(f'raw_{m}', 'raw', x)
    views = {}
    for name, view in output.views.items():
        if name.endswith(USER_VIEW_SUFFIX):
            continue
        rows = _item_rows(view, num_users, num_items)
        if rows is not None:
            views[name] = rows
    with torch.no_grad():
        views.update({k: v for k, v in model.project(data, output).items() if k not in views})
    for name, x in views.items():
        if not name.startswith(PROJECTION_PREFIX):
            add(name, 'original', x)
    for name, x in views.items():
        if name.startswith(PROJECTION_PREFIX):
            add(name, 'projection', x)
    add(FINAL_SPACE, 'final', output.item)
    return spaces


def select_spaces(spaces: Dict[str, Space], names: Optional[Sequence[str]],
                  what: str = '--spaces') -> Dict[str, Space]:
    r"""The spaces named in :obj:`names` (all when :obj:`None`), in the given order; an unknown
    name raises :class:`ConfigError` listing the available ones."""
    if names is None:
        return dict(spaces)
    unknown = [n for n in names if n not in spaces]
    if unknown:
        raise ConfigError(f"{what}: no space {unknown[0]!r} in this run (available: "
                          f"{', '.join(spaces)})")
    return {n: spaces[n] for n in names}


def check_same_dataset(runs: Sequence[LoadedRun]) -> None:
    r"""Raises :class:`ConfigError` unless all runs have the same numbers of users and items
    and the same training interactions (comparisons use the same target items)."""
    first = runs[0]
    edges = first.data[USER_ITEM].edge_index.cpu()
    for run in runs[1:]:
        other = run.data[USER_ITEM].edge_index.cpu()
        if (run.num_users, run.num_items) != (first.num_users, first.num_items) or \
                not torch.equal(other, edges):
            raise ConfigError(f'{run.path} and {first.path} were trained on different datasets '
                              '(users, items or training interactions differ); compare runs of '
                              'one dataset')


def parse_labels(labels: Optional[List[str]], paths: Sequence[str]) -> List[Optional[str]]:
    r"""``--labels`` checked against the number of runs (``None`` entries: default labels)."""
    if labels is None:
        return [None] * len(paths)
    if len(labels) != len(paths):
        raise ConfigError(f'--labels: got {len(labels)} labels for {len(paths)} runs')
    return list(labels)
