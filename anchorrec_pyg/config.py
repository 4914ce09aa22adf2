r"""Typed, validated experiment configuration (Contract 3 of ``docs/ARCHITECTURE.md``).

A configuration file is YAML (read with a :class:`yaml.SafeLoader` that also reads ``1e-3`` as a
float) with the sections

.. code-block:: yaml

    data:  {root, name, modalities, knn_k, ...}      # DataConfig
    model: {name: anchorrec, n_layers: 2, ...}        # name + the model's Config dataclass
    train: {epochs, batch_size, lr, ...}              # TrainConfig
    eval:  {ks, metric, batch_size}                   # EvalConfig
    grid:  {model.n_layers: [1, 2, 3], train.lr: [0.001, 0.0005]}   # dotted key -> values
    seeds: [999, 777]
    out: null

Every key is optional (a missing key keeps its default; the defaults are ``configs/default.yaml``
exactly). An unknown key, a value of the wrong type or out of range raises
:class:`~anchorrec_pyg.errors.ConfigError` with a one-line message naming the dotted key, and an
unknown key comes with the closest known key as a suggestion, so that a typo is never silently
ignored. ``int`` is accepted where a ``float`` is expected; ``bool`` is never accepted as a number.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from anchorrec_pyg.errors import ConfigError

__all__ = [
    'DataConfig',
    'TrainConfig',
    'EvalConfig',
    'ExperimentConfig',
    'load_config',
    'parse_override',
    'config_from_dict',
    'config_to_dict',
    'dump_config',
]

DEFAULT_MODEL = 'anchorrec'
SECTIONS = ('data', 'model', 'train', 'eval', 'grid', 'seeds', 'out')
_DEVICE = re.compile(r'^(auto|cpu|mps|cuda(:\d+)?)$')
_METRIC = re.compile(r'^(recall|ndcg|precision|map|hit)@(\d+)$')
#: The seeds :func:`torch.manual_seed` accepts.
SEED_RANGE = (-2**63, 2**64 - 1)

logger = logging.getLogger(__name__)


class _SafeLoader(yaml.SafeLoader):
    r"""PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (YAML 1.1, which
    PyYAML follows, needs ``1.0e-3`` and would read ``1e-3`` as a string), and refusing a
    mapping that repeats a key (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key {key!r} (first on line '
                    f'{seen[key].start_mark.line + 1}, again on line '
                    f'{key_node.start_mark.line + 1})', key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_SafeLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def _safe_load(stream: Any) -> Any:
    return yaml.load(stream, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader subclass)


def _require(condition: bool, key: str, requirement: str) -> None:
    if not condition:
        raise ConfigError(f'{key} {requirement}')


@dataclass
class DataConfig:
    r"""Where the dataset comes from and how its graphs are built (SPEC §1-§2); the fields are
    the arguments of :class:`~anchorrec_pyg.data.MMRecDataset`.

    Attributes:
        root: The folder holding ``<name>/``. ``None`` uses a generated dataset instead: the
            synthetic preset :obj:`name` (``default``, ``tiny`` or ``baby``), written once to
            the package cache (:func:`anchorrec_pyg.data.ensure_default_dataset`).
        name: The dataset name (``<root>/<name>/<name>.inter``), or the preset when ``root`` is
            ``None``.
        modalities: The feature tables to load; ``None`` loads the model's
            ``required_modalities``.
        knn_k: :math:`k` of the item-item kNN graphs (SPEC §2).
        mm_source: ``'file'`` reads the fused multimodal table from ``mm_dir/mm_file``;
            ``'concat'`` derives it from the image and text tables.
        inter_file: The interaction file inside ``<root>/<name>/``; ``None`` is
            ``<name>.inter``.
        image_file, text_file: The image and text feature files inside ``<root>/<name>/``.
        mm_dir: The folder of the fused multimodal table; ``None`` is ``<root>/<name>_beit3``.
        mm_file: The fused multimodal table's file inside ``mm_dir``.
        processed_dir: Where the processed graphs are cached; ``None`` is
            ``<root>/<name>/processed`` (or the package cache for read-only folders).
    """
    root: Optional[str] = None
    name: str = 'default'
    modalities: Optional[List[str]] = None
    knn_k: int = 10
    mm_source: str = 'file'
    inter_file: Optional[str] = None
    image_file: str = 'image_feat.npy'
    text_file: str = 'text_feat.npy'
    mm_dir: Optional[str] = None
    mm_file: str = 'image_feat.npy'
    processed_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.root is None:
            from anchorrec_pyg.data import PRESETS
            _require(self.name in PRESETS, 'data.name',
                     f"must be a synthetic preset ({', '.join(PRESETS)}) when data.root is null "
                     f'(got {self.name!r}); set data.root to read an MMRec folder')
        _require(self.knn_k >= 1, 'data.knn_k', f'must be >= 1 (got {self.knn_k})')
        _require(self.mm_source in ('file', 'concat'), 'data.mm_source',
                 f"must be 'file' or 'concat' (got {self.mm_source!r})")
        if self.modalities is not None:
            _require(len(self.modalities) > 0, 'data.modalities',
                     'must list at least one modality, or be null for the model\'s own')
            for m in self.modalities:
                _require(m in ('mm', 'text', 'image'), 'data.modalities',
                         f"entries must be 'mm', 'text' or 'image' (got {m!r})")


@dataclass
class TrainConfig:
    r"""One training run (SPEC §4): Adam with the learning rate decayed as
    :math:`\mathrm{lr} \cdot \mathrm{lr\_decay}^{\,\mathrm{epoch} / \mathrm{lr\_decay\_every}}`
    (MMRec's ``LambdaLR``, stepped after every epoch), early stopping on the validation metric.

    Attributes:
        epochs: The maximum number of epochs.
        batch_size: :math:`B`, triples per batch (also the divisor of the L2 term, SPEC §4).
        lr: The initial learning rate.
        lr_decay, lr_decay_every: The decay base (0.96) and its epoch scale (50).
        eval_every: Evaluate on validation every this many epochs (and after the last one).
        patience: Stop after this many consecutive validation evaluations without a better
            ``eval.metric``; ``None`` never stops early.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or
            ``'mps'``.
        num_threads: CPU threads for torch; ``None`` keeps torch's default.
        checkpoint_every: Write the resumable checkpoint every this many epochs (and at the end).
        mode: ``'full'`` propagates the whole graph for every batch (SPEC §3, the published
            math); ``'sampled'`` propagates a sampled subgraph around each batch's users,
            positives and negatives (:mod:`anchorrec_pyg.train.subgraph`).
        fanout: ``'sampled'`` only: the neighbours drawn per node at each user-item hop (one
            entry per hop, ``-1`` = all neighbours); as many hops as the model has user-item
            propagation layers (``RecModel.sampled_hops``, checked when training starts).
        knn_fanout: ``'sampled'`` only: the incoming kNN edges drawn per item at each level
            of the kNN closure (the views the losses read), uniformly without replacement,
            their weights multiplied by :math:`k_i / s_i` (an unbiased
            :math:`\mathbf{A}_m\mathbf{X}_m` at the level's items); ``-1`` (the default)
            keeps every incoming edge, the views exact. Ignored in ``'full'`` mode, as
            :attr:`fanout` is (the log says so).
        sparse_updates: Row-sparse updates of the model's node tables (ID tables, trainable
            feature copies): their gradient holds the subgraph's rows only and
            :class:`~anchorrec_pyg.train.optim.RowAdam` updates those rows, Adam the other
            parameters (:mod:`anchorrec_pyg.train.optim`). This is *lazy* Adam
            (``torch.optim.SparseAdam``'s update): the moments of rows not in a step's subgraph
            are not decayed at that step. Needs ``'sampled'`` (a full-graph step touches every
            row). Off by default: on CPU, RowAdam costs about 4x fused Adam per row it updates
            (docs/scale.md), so it pays off only when a batch's subgraph holds well under a
            quarter of the tables' rows: with ``knn_fanout`` 3 an AnchorRec step is 6% and 9%
            faster at 4x and 8x Baby, with the exact closure 9% slower at 4x.
        nproc: Data-parallel processes (``anchorrec-pyg train --nproc N``): each draws
            ``batch_size / nproc`` rows of every global batch of ``batch_size`` rows, so the
            learning rate is the one-process rate (no scaling rule: the global batch is
            unchanged).
        dist_timeout_s: The process group's timeout: a collective that waits longer (a rank
            that died or hangs) ends the job with an error.
        keep_freed_memory: Keep the memory a step frees in the process for the next step
            (glibc ``malloc``'s mmap and trim thresholds raised,
            :func:`~anchorrec_pyg.train.allocator.keep_freed_memory`; Linux with glibc,
            elsewhere nothing) instead of returning it to the kernel and page-faulting it back
            in: the same values, 15x fewer page faults per step (sampled mode, 16x Baby). Off
            by default: side by side on this machine the step time did not change
            consistently (docs/scale.md), and the process's resident memory then stays at
            its peak.
    """
    epochs: int = 40
    batch_size: int = 2048
    lr: float = 0.005
    lr_decay: float = 0.96
    lr_decay_every: float = 50.0
    eval_every: int = 1
    patience: Optional[int] = 10
    device: str = 'auto'
    num_threads: Optional[int] = None
    checkpoint_every: int = 1
    mode: str = 'full'
    fanout: List[int] = field(default_factory=lambda: [20, 10])
    knn_fanout: int = -1
    sparse_updates: bool = False
    nproc: int = 1
    dist_timeout_s: float = 1800.0
    keep_freed_memory: bool = False

    @property
    def data_parallel(self) -> Optional[str]:
        r"""With ``nproc > 1``, the global batch and the learning-rate rule in one line (the
        run's log and a comment heading its ``config.yaml``); ``None`` otherwise."""
        if self.nproc == 1:
            return None
        return (f'data-parallel: {self.nproc} processes, global batch {self.batch_size} '
                f'({self.batch_size // self.nproc} rows per process), learning rate {self.lr:g} '
                'as for one process (no scaling rule: the global batch does not change with '
                'nproc)')

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, 'train.epochs', f'must be >= 1 (got {self.epochs})')
        _require(self.batch_size >= 1, 'train.batch_size', f'must be >= 1 (got {self.batch_size})')
        _require(self.lr > 0, 'train.lr', f'must be > 0 (got {self.lr})')
        _require(0 < self.lr_decay <= 1, 'train.lr_decay',
                 f'must be in (0, 1] (got {self.lr_decay})')
        _require(self.lr_decay_every > 0, 'train.lr_decay_every',
                 f'must be > 0 (got {self.lr_decay_every})')
        _require(self.eval_every >= 1, 'train.eval_every', f'must be >= 1 (got {self.eval_every})')
        _require(self.patience is None or self.patience >= 1, 'train.patience',
                 f'must be >= 1 or null (got {self.patience})')
        _require(bool(_DEVICE.match(self.device)), 'train.device',
                 f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (got {self.device!r})")
        _require(self.num_threads is None or self.num_threads >= 1, 'train.num_threads',
                 f'must be >= 1 or null (got {self.num_threads})')
        _require(self.checkpoint_every >= 1, 'train.checkpoint_every',
                 f'must be >= 1 (got {self.checkpoint_every})')
        _require(self.mode in ('full', 'sampled'), 'train.mode',
                 f"must be 'full' or 'sampled' (got {self.mode!r})")
        _require(len(self.fanout) > 0 and all(f >= 1 or f == -1 for f in self.fanout),
                 'train.fanout', 'must list one fan-out per hop, each a positive int or -1 '
                 f'(all neighbours) (got {self.fanout})')
        _require(isinstance(self.knn_fanout, int) and not isinstance(self.knn_fanout, bool)
                 and (self.knn_fanout >= 1 or self.knn_fanout == -1), 'train.knn_fanout',
                 'must be a positive int (incoming kNN edges drawn per item and level) or -1 '
                 f'(every incoming kNN edge) (got {self.knn_fanout!r})')
        _require(not (self.sparse_updates and self.mode == 'full'), 'train.sparse_updates',
                 "needs train.mode=sampled (a full-graph step gives every row a gradient: "
                 "dense Adam)")
        _require(self.nproc >= 1, 'train.nproc', f'must be >= 1 (got {self.nproc})')
        _require(self.batch_size % self.nproc == 0, 'train.batch_size',
                 f'({self.batch_size}) must be divisible by train.nproc ({self.nproc}): every '
                 'process draws the same share of each global batch')
        _require(self.dist_timeout_s > 0, 'train.dist_timeout_s',
                 f'must be > 0 (got {self.dist_timeout_s})')


@dataclass
class EvalConfig:
    r"""Full-ranking evaluation (SPEC §5).

    Attributes:
        ks: The cut-offs :math:`K` of every metric.
        metric: The validation metric used for early stopping and model selection.
        batch_size: Users scored at once (memory ``batch_size x I`` scores).
    """
    ks: List[int] = field(default_factory=lambda: [5, 10, 20, 50])
    metric: str = 'recall@20'
    batch_size: int = 1024

    def __post_init__(self) -> None:
        _require(len(self.ks) > 0 and all(k >= 1 for k in self.ks), 'eval.ks',
                 f'must be a non-empty list of positive ints (got {self.ks})')
        _require(len(set(self.ks)) == len(self.ks), 'eval.ks',
                 f'must not repeat a cut-off (got {self.ks})')
        match = _METRIC.match(self.metric)
        _require(match is not None, 'eval.metric',
                 f"must be recall|ndcg|precision|map|hit@K (got {self.metric!r})")
        _require(int(match.group(2)) in self.ks, 'eval.metric',
                 f'uses K = {match.group(2)}, which is not in eval.ks {self.ks}')
        _require(self.batch_size >= 1, 'eval.batch_size', f'must be >= 1 (got {self.batch_size})')


def _default_model_config() -> Any:
    from anchorrec_pyg.models.registry import get_model_class
    return get_model_class(DEFAULT_MODEL).Config()


@dataclass
class ExperimentConfig:
    r"""A whole experiment: one dataset, one model, the grid and the seeds.

    Attributes:
        data, train, eval: See :class:`DataConfig`, :class:`TrainConfig`, :class:`EvalConfig`.
        model_name: The registry name of the model (``model.name`` in YAML).
        model: An instance of that model's ``Config`` dataclass.
        grid: Dotted key -> list of values; the runner trains their product.
        seeds: One run per seed for every grid combination.
        out: The output folder; ``None`` gives ``runs/<model>-<dataset>-<timestamp>``.
    """
    data: DataConfig = field(default_factory=DataConfig)
    model_name: str = DEFAULT_MODEL
    model: Any = field(default_factory=_default_model_config)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=lambda: [999])
    out: Optional[str] = None

    def __post_init__(self) -> None:
        from anchorrec_pyg.models.registry import get_model_class
        cls = get_model_class(self.model_name)
        _require(isinstance(self.model, cls.Config), 'model',
                 f'must be a {cls.__name__}.Config for model.name {self.model_name!r}')
        _require(len(self.seeds) > 0, 'seeds', 'must list at least one seed')
        _require(len(set(self.seeds)) == len(self.seeds), 'seeds',
                 f'must not repeat a seed (got {self.seeds})')
        for seed in self.seeds:
            _require(SEED_RANGE[0] <= seed <= SEED_RANGE[1], 'seeds',
                     f'must fit 64 bits, from -2**63 to 2**64 - 1 (got {seed})')
        for key, values in self.grid.items():
            _require(isinstance(values, list) and len(values) > 0, f'grid.{key}',
                     'must be a non-empty list of values')
            _require(key.partition('.')[0] in ('data', 'model', 'train', 'eval')
                     and key != 'model.name', f'grid.{key}',
                     'cannot be searched: grid keys are data.*, model.* (except model.name), '
                     'train.* or eval.* (list several seeds under seeds:)')

    def combinations(self) -> List[Dict[str, Any]]:
        r"""The grid's combinations in order (last key varying fastest); ``[{}]`` without a
        grid."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def single_run(self, combination: Dict[str, Any], seed: int) -> 'ExperimentConfig':
        r"""The configuration of one run: :obj:`combination` applied, no grid, one seed."""
        raw = config_to_dict(self)
        raw['grid'], raw['seeds'] = {}, [seed]
        for key, value in combination.items():
            _set_dotted(raw, key, value)
        return _build_config(raw)


# Validation and conversion ###################################################################

def _type_name(tp: Any) -> str:
    if tp is type(None):
        return 'null'
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return ' or '.join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f'list of {_type_name(args[0])}' if args else 'list'
    if origin is dict:
        return 'mapping'
    if origin is typing.Literal:
        return ' or '.join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, '__name__', str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _convert(value: Any, tp: Any, key: str) -> Any:
    r"""Checks :obj:`value` against the annotation :obj:`tp` and returns it converted (int to
    float, list to tuple where annotated); raises :class:`ConfigError` naming :obj:`key`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            item = args[0] if args else Any
            items = [_convert(v, item, f'{key}[{i}]') for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f'{key} must be {_type_name(tp)}, got {_short(value)}')


def _unknown_key(key: str, known: List[str]) -> ConfigError:
    prefix, _, name = key.rpartition('.')
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    else:
        hint = f"known keys: {', '.join(known)}"
    return ConfigError(f'unknown key {key} ({hint})')


def _build_section(cls: type, raw: Any, section: str, exclude: Tuple[str, ...] = ()) -> Any:
    r"""Builds dataclass :obj:`cls` from the mapping :obj:`raw`, checking keys and types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f'{section} must be a mapping of keys to values, got {_short(raw)}')
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in raw.items():
        if key in exclude:
            continue
        if key not in names:
            raise _unknown_key(f'{section}.{key}', names + list(exclude))
        kwargs[key] = _convert(value, hints[key], f'{section}.{key}')
    return cls(**kwargs)


def config_from_dict(raw: Any) -> ExperimentConfig:
    r"""Validates the mapping :obj:`raw` (a parsed YAML file) into an :class:`ExperimentConfig`;
    every value listed in the grid is validated too, by applying it on its own.

    Raises:
        ConfigError: For an unknown key, a wrong type or an out-of-range value (naming it).
    """
    config = _build_config(raw)
    for key, values in config.grid.items():
        for value in values:
            try:
                config.single_run({key: value}, config.seeds[0])
            except ConfigError as e:
                raise ConfigError(f'grid.{key} value {_short(value)}: {e}') from None
    return config


def _build_config(raw: Any) -> ExperimentConfig:
    r"""Validates :obj:`raw` into an :class:`ExperimentConfig`, except the grid's values."""
    from anchorrec_pyg.models.registry import get_model_class
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f'a config must be a mapping with sections {", ".join(SECTIONS)}, '
                          f'got {_short(raw)}')
    for key in raw:
        if key not in SECTIONS:
            raise _unknown_key(str(key), list(SECTIONS))
    model_raw = raw.get('model') or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f'model must be a mapping of keys to values, got {_short(model_raw)}')
    model_name = _convert(model_raw.get('name', DEFAULT_MODEL), str, 'model.name')
    model_cls = get_model_class(model_name)

    grid = _convert(raw.get('grid') or {}, Dict[str, Any], 'grid')
    for key, values in grid.items():
        if not isinstance(values, list) or len(values) == 0:
            raise ConfigError(f'grid.{key} must be a non-empty list of values, '
                              f'got {_short(values)}')
    top = {}
    if 'seeds' in raw:
        top['seeds'] = _convert(raw['seeds'], List[int], 'seeds')
    if 'out' in raw:
        top['out'] = _convert(raw['out'], Optional[str], 'out')
    return ExperimentConfig(
        data=_build_section(DataConfig, raw.get('data'), 'data'),
        model_name=model_name,
        model=_build_section(model_cls.Config, model_raw, 'model', exclude=('name', )),
        train=_build_section(TrainConfig, raw.get('train'), 'train'),
        eval=_build_section(EvalConfig, raw.get('eval'), 'eval'),
        grid=grid,
        **top,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(config: ExperimentConfig) -> Dict[str, Any]:
    r"""The complete configuration as plain YAML/JSON types (the inverse of
    :func:`config_from_dict`)."""
    return {
        'data': _plain(dataclasses.asdict(config.data)),
        'model': {'name': config.model_name, **_plain(dataclasses.asdict(config.model))},
        'train': _plain(dataclasses.asdict(config.train)),
        'eval': _plain(dataclasses.asdict(config.eval)),
        'grid': _plain(copy.deepcopy(config.grid)),
        'seeds': list(config.seeds),
        'out': config.out,
    }


#: Keys that may change when a run is resumed: they do not change what is computed.
RESUME_FREE_KEYS = (('out', ), ('train', 'device'), ('train', 'num_threads'),
                    ('train', 'dist_timeout_s'), ('train', 'keep_freed_memory'))


def run_identity(raw: Dict[str, Any]) -> Dict[str, Any]:
    r"""The part of a configuration (as :func:`config_to_dict` gives it) that a resumed run
    must share with the original: all but the output folder, the device and the thread
    count."""
    raw = copy.deepcopy(raw)
    for path in RESUME_FREE_KEYS:
        node = raw
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return raw


def resolved_identity(raw: Dict[str, Any]) -> Dict[str, Any]:
    r"""The :func:`run_identity` of a stored configuration after validation: a key it does not
    hold counts as its default, so a run folder written before a key existed resumes as the
    same run; except the model's ``Config.stored_defaults``, keys whose default changed what
    the model computes, which count as the value such a folder was trained with (so that
    resuming it under the new default is refused, naming the key).

    Raises:
        ConfigError: If :obj:`raw` is not a valid configuration (naming the key).
    """
    from anchorrec_pyg.models.registry import get_model_class
    model_raw = raw.get('model') if isinstance(raw, dict) else None
    if isinstance(model_raw, dict) and isinstance(model_raw.get('name', DEFAULT_MODEL), str):
        stored = get_model_class(model_raw.get('name', DEFAULT_MODEL)).Config.stored_defaults
        raw = {**raw, 'model': {**stored, **model_raw}}
    return run_identity(config_to_dict(config_from_dict(raw)))


def stored_identity(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    r""":func:`resolved_identity` of the configuration file a run folder holds.

    Raises:
        ConfigError: Naming the file and the key.
    """
    raw = _read_yaml(path)
    try:
        return resolved_identity(raw)
    except ConfigError as e:
        raise ConfigError(f'{path}: {e}') from None


def first_difference(a: Any, b: Any, prefix: str = '') -> Optional[str]:
    r"""``'key.path: a != b'`` for the first differing value of two nested mappings (the keys
    of :obj:`a` first), or :obj:`None` if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            diff = first_difference(a.get(key), b.get(key), f'{prefix}{key}.')
            if diff is not None:
                return diff
        return None
    return None if a == b else f'{prefix[:-1]}: {a!r} != {b!r}'


def dump_config(config: ExperimentConfig) -> str:
    r"""The resolved configuration as YAML text (what ``config.yaml`` of a run folder holds),
    headed by the data-parallel rule as a comment when ``train.nproc > 1``."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
    note = config.train.data_parallel
    return text if note is None else f'# {note}\n{text}'


def _set_dotted(raw: Dict[str, Any], key: str, value: Any) -> None:
    if key.startswith('grid.') and len(key) > len('grid.'):
        grid = raw.get('grid')
        raw['grid'] = grid = dict(grid) if isinstance(grid, dict) else {}
        grid[key[len('grid.'):]] = value
        return
    parts = key.split('.')
    if any(not p for p in parts):
        raise ConfigError(f'malformed key {key!r}: expected section.key, e.g. train.lr')
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> Tuple[str, Any]:
    r"""Parses a ``--set key=value`` override; the value is read as safe YAML
    (``train.lr=1e-3``, ``eval.ks=[10,20]``, ``train.patience=null``)."""
    key, sep, value = text.partition('=')
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f'malformed override {text!r}: expected key=value, e.g. train.lr=0.001')
    try:
        parsed = _safe_load(value) if value.strip() else ''
    except yaml.YAMLError as e:
        reason = ' '.join(str(e).split())
        raise ConfigError(f'--set {key}: value {value!r} is not valid YAML ({reason})') from None
    return key, parsed


def _read_yaml(path: Union[str, os.PathLike]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            raw = _safe_load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f'{path}: not a UTF-8 text file (byte {e.start}: '
                          f'{e.object[e.start:e.start + 1]!r}); a config is YAML text') from None
    except yaml.YAMLError as e:
        reason = ' '.join(str(e).split())
        raise ConfigError(f'{path}: not valid YAML ({reason})') from None
    if raw is None:
        logger.warning('%s: empty config: using the defaults', path)
    return raw


def load_config(
    path: Union[str, os.PathLike, None] = None,
    overrides: Union[List[str], Dict[str, Any], None] = None,
) -> ExperimentConfig:
    r"""Loads and validates a configuration.

    Args:
        path: A YAML file; :obj:`None` starts from the packaged defaults
            (``configs/default.yaml``).
        overrides: ``key=value`` strings (``--set``) or a mapping of dotted keys to values,
            applied in order on top of the file.

    Raises:
        ConfigError: Naming the file (when the error is in it) and the dotted key.
    """
    raw = {} if path is None else _read_yaml(path)
    try:
        config = config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f'{path}: {e}' if path is not None else str(e)) from None
    if not overrides:
        return config
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = [parse_override(text) for text in overrides]
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    for key, value in pairs:
        _set_dotted(raw, key, value)
    return config_from_dict(raw)
