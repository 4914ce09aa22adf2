"""The model contract (Contract 2 of docs/ARCHITECTURE.md): :class:`RecModel`, :class:`RecOutput`.

Every recommender of the package is a :class:`RecModel`:

* ``Model.Config``: a :class:`ModelConfig` dataclass holding every hyper-parameter and constant
  with its published default; it validates itself on construction and raises
  :class:`~anchorrec_pyg.errors.ConfigError` naming the dotted key (``model.<field>``).
* ``Model(data, config)``: sizes and feature tables come from the full ``HeteroData`` of
  Contract 1.
* ``model(data) -> RecOutput``: final user and item embeddings (scores are
  ``out.user[users] @ out.item.T``) and the intermediate views the analyses use.
* ``model.loss(data, out, users, pos, neg, batch_size=None)``: the total loss of a batch of
  ``(user, positive, negative)`` triples and every weighted term, detached, for logging.
  ``users``/``pos``/``neg`` index the rows of ``out.user``/``out.item``. Terms that SPEC divides
  by the *configured* batch size B (the embedding L2 term, SPEC §4) use ``batch_size``; ``None``
  means ``len(users)``, so the trainer passes its configured B to reproduce SPEC on the last,
  smaller batch of an epoch.
* ``Model.required_modalities(config)``: the item feature tables (``'mm'``, ``'text'``,
  ``'image'``) the model reads, checked before training.

The optional part of the model-trainer contract is declared on :class:`RecModel` with its
default, which a model overrides where it differs:

* ``needs_negatives`` (default ``True``): ``False`` makes the trainer hand :meth:`RecModel.loss`
  positive pairs (``neg`` is ``None``);
* ``sampled_refusal`` (default ``None``): ``None`` means the model can train on a sampled
  subgraph ``HeteroData`` (node ids in ``n_id``), otherwise a one-line reason why it cannot;
* ``sampled_hops`` (default ``None``): the user-item hops a sampled subgraph needs (the
  graph models: their LightGCN layers), which ``train.fanout`` must match;
* ``sampled_views`` (default none): the modality kNN views a batch's losses read on a sampled
  subgraph (:class:`SampledView`: which batch rows read modality ``m``'s view and its kNN
  steps), so that the subgraph holds the kNN edges those rows need and no more;
* ``sampled_features`` (default none): the modalities whose file feature rows
  (``data['item'].x_<m>``) the model reads on a sampled subgraph, which the subgraphs carry
  (the others are not sliced into every batch);
* :meth:`RecModel.on_epoch_start` (default: nothing): called by the trainer before every
  training epoch with the run's random generator;
* :meth:`RecModel.project` (default: no views): projection-domain item views the analyses
  compare beside ``out.views``.

Subgraphs: a model reads node ids from ``data[node_type].n_id`` when present (else
``arange(num_nodes)``) to index its embedding tables, so a sampled subgraph gets the rows of its
own nodes; everything else (features, edges) is read from the data object it is given. The
tables it gathers that way (:func:`node_rows`) are its *node tables*
(:meth:`RecModel.node_tables`); inside :func:`row_sparse_gradients` their gradient on a
subgraph is row-sparse, for the row-sparse optimiser, and inside :func:`row_gradient_buffers`
it is written into a kept table-sized buffer (dense, the same values) instead of a fresh
tensor of zeros per step.

Data-derived objects (adjacency operators, normalised feature tables) are built once per data
object and kept in ``self.graph_cache`` (:class:`~anchorrec_pyg.nn.propagation.TensorCache`),
keyed by the identity of the data tensors they come from.

The models with a LightGCN collaborative view share
:class:`~anchorrec_pyg.models.graph.GraphRecModel`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.nn.feature_grad import GradBuffer, buffered_rows
from anchorrec_pyg.nn.lightgcn import user_item_adjacency
from anchorrec_pyg.nn.propagation import Adjacency, PropagationBackend, TensorCache
from anchorrec_pyg.schema import (
    ITEM_USER,
    MODALITIES,
    MODALITY_FILES,
    USER_ITEM,
    feature_key,
    knn_edge_type,
)

__all__ = [
    'ModelConfig',
    'RecOutput',
    'RecModel',
    'SampledView',
    'UserItemGraph',
    'node_ids',
    'view_input_rows',
    'exact_view_items',
    'node_rows',
    'row_sparse_gradients',
    'row_gradient_buffers',
    'rows',
    'require_item_features',
    'require_knn_graphs',
    'feature_copies',
]


def _is_instance(value: object, expected: type) -> bool:
    """``isinstance`` that does not take a bool for an int or a float."""
    if isinstance(value, bool):
        return expected is bool
    return isinstance(value, expected)


@dataclass
class ModelConfig:
    """Base class of the models' ``Config`` dataclasses.

    On construction every field is checked against its annotated type (``int``, ``float``,
    ``bool``, ``str``; an int is accepted and converted where a float is expected), then
    :meth:`validate` checks ranges.
    Errors name the dotted key, e.g. ``model.tau must be > 0``.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif expected in (int, float, str, bool) and not _is_instance(value, expected):
                raise ConfigError(f'model.{f.name} must be of type {expected.__name__}, '
                                  f'got {value!r}')
        self.validate()

    #: Keys added with a default that changed what the model computes: key -> the value that
    #: a stored run configuration written before the key existed was trained with.
    #: :func:`~anchorrec_pyg.config.resolved_identity` fills these in (instead of the
    #: default) before a resumed or reread run is compared with the current configuration.
    stored_defaults: ClassVar[dict[str, Any]] = {}

    def validate(self) -> None:
        """Range checks of the subclass; raise :class:`ConfigError` via :meth:`require`."""

    @staticmethod
    def require(condition: bool, key: str, requirement: str) -> None:
        """Raises ``ConfigError('model.<key> <requirement>')`` unless ``condition``."""
        if not condition:
            raise ConfigError(f'model.{key} {requirement}')

    def require_nonnegative(self, *keys: str) -> None:
        """:meth:`require` ``>= 0`` of each field named in ``keys``."""
        for key in keys:
            self.require(getattr(self, key) >= 0, key, 'must be >= 0')


@dataclass
class RecOutput:
    """What a model's forward pass returns.

    Attributes:
        user: ``[U, d']`` final user embeddings used for ranking.
        item: ``[I, d']`` final item embeddings used for ranking.
        views: intermediate views by name (e.g. ``'C'``, ``'H_mm'``), for losses and analyses.
    """

    user: Tensor
    item: Tensor
    views: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class UserItemGraph:
    """The user-item graph operators of SPEC §2.

    Attributes:
        adj: the normalised ``(U+I) x (U+I)`` adjacency of LightGCN (users first).
        user_item: ``R``, the ``U x I`` user-to-item block (``R @ item_features`` gives users).
    """

    adj: Adjacency
    user_item: Adjacency


def node_ids(data: HeteroData, node_type: str) -> Tensor:
    """The global ids of ``data[node_type]``'s nodes: ``n_id`` when present, else ``arange``."""
    store = data[node_type]
    if 'n_id' in store:
        return store.n_id
    device = _data_device(data)
    return torch.arange(store.num_nodes, device=device)


def rows(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` along the first dimension, through ``index_select``.

    The two give the same values, but their backward passes differ on CPU: ``index_select``
    accumulates the gradient rows with ``index_add_``, which sums in a fixed order, while the
    backward of ``table[index]`` (``index_put_`` with ``accumulate=True``) may sum duplicate
    indices in a thread-dependent order. Models gather every differentiable batch row with this
    helper, so that one seed gives bitwise-equal runs on a multi-threaded CPU.
    """
    return table.index_select(0, index)


#: The ids of the tables whose subgraph rows :func:`node_rows` gathers with a sparse gradient.
_ROW_SPARSE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    'row_sparse_tables', default=frozenset())


@contextlib.contextmanager
def row_sparse_gradients(tables: Iterable[Tensor]) -> Iterator[None]:
    """Within the block, :func:`node_rows` gathers a subgraph's rows of ``tables`` with
    ``torch.nn.functional.embedding(n_id, table, sparse=True)``: the same values, and a backward
    pass that gives each table a sparse COO gradient holding only the subgraph's rows (what
    the lazy row-sparse Adam of ``train.sparse_updates`` updates) instead of a dense table of
    zeros around them. Whole tables (no ``n_id``: the full graph) keep their dense gradient."""
    token = _ROW_SPARSE.set(frozenset(id(t) for t in tables))
    try:
        yield
    finally:
        _ROW_SPARSE.reset(token)


#: The kept gradient buffers (by table id) into which :func:`node_rows` writes the gradient of
#: a subgraph's rows.
_ROW_BUFFERS: contextvars.ContextVar[dict[int, GradBuffer]] = contextvars.ContextVar(
    'row_gradient_buffers', default={})


@contextlib.contextmanager
def row_gradient_buffers(buffers: Iterable[tuple[Tensor, GradBuffer]]) -> Iterator[None]:
    """Within the block, :func:`node_rows` gathers a subgraph's rows of each table of
    ``buffers`` (``(table, buffer)`` pairs) with its gradient written into the table's kept
    buffer (:func:`~anchorrec_pyg.nn.feature_grad.buffered_rows`): bit for bit the gradient of
    ``index_select``, without allocating and zero-filling a table-sized tensor per step (only
    the rows of the previous step are zeroed). Whole tables (no ``n_id``) are not gathered and
    keep their gradient; :func:`row_sparse_gradients` takes precedence."""
    token = _ROW_BUFFERS.set({id(table): buffer for table, buffer in buffers})
    try:
        yield
    finally:
        _ROW_BUFFERS.reset(token)


def node_rows(table: Tensor, data: HeteroData, node_type: str,
              index: Tensor | None = None) -> Tensor:
    """The rows of a per-node table (``[num_nodes_total, ...]``) for ``data[node_type]``'s nodes:
    ``table[n_id]`` on a subgraph (with a row-sparse gradient inside
    :func:`row_sparse_gradients`, into a kept buffer inside :func:`row_gradient_buffers`), the
    table itself (no copy) otherwise. With ``index`` (local
    node indices, distinct) only those nodes' rows: ``table[n_id[index]]`` on a subgraph,
    ``table[index]`` otherwise."""
    store = data[node_type]
    if 'n_id' in store:
        ids = store.n_id if index is None else store.n_id.index_select(0, index)
        if id(table) in _ROW_SPARSE.get():
            # n_id holds distinct nodes: the sparse gradient has no duplicate rows to sum
            return torch.nn.functional.embedding(ids, table, sparse=True)
        buffer = _ROW_BUFFERS.get().get(id(table))
        if buffer is not None:
            return buffered_rows(table, ids, buffer)
        return rows(table, ids)
    if table.size(0) != store.num_nodes:
        raise DataError(f"the data has {store.num_nodes} '{node_type}' nodes but the model was "
                        f'built for {table.size(0)} (pass n_id for a subgraph)')
    return table if index is None else rows(table, index)


@dataclass(frozen=True)
class SampledView:
    r"""What a batch's losses read of one modality's kNN view
    :math:`\mathbf{H}_m = \mathbf{A}_m^{n}\mathbf{X}_m` (user part
    :math:`\mathbf{R}\mathbf{H}_m`) on a sampled subgraph (:attr:`RecModel.sampled_views`).

    The view is exact at an item when the subgraph holds every incoming kNN edge of every item
    fewer than ``hops`` kNN steps upstream of it, and :math:`\mathbf{X}_m` at their sources; so
    the subgraph closes over ``hops`` levels of incoming kNN edges from the items whose view the
    batch reads (its *level 0*), and no further.

    Attributes:
        hops: :math:`n`, the view's kNN propagation steps.
        users: the batch's users read the user part, i.e. the view of the items they aggregate
            (the sources of their user-item edges).
        positives: the batch's positives read the item part.
        negatives: the batch's negatives read the item part.
    """

    hops: int
    users: bool = True
    positives: bool = True
    negatives: bool = True


def view_input_rows(data: HeteroData, modality: str) -> Tensor | None:
    r"""The local items whose view input :math:`\mathbf{X}_m` the kNN propagation of ``data``
    reads: the sources of its ``modality`` kNN edges (sorted), ``None`` on a whole graph (every
    item). :math:`(\mathbf{A}^n\mathbf{X})` does not depend on the other rows of
    :math:`\mathbf{X}` (``n >= 1``), so a model computes them on a subgraph only."""
    if 'n_id' not in data['item']:
        return None
    return torch.unique(data[knn_edge_type(modality)].edge_index[0])


def exact_view_items(data: HeteroData, modality: str) -> Tensor | None:
    """The local items at which ``modality``'s view is the whole graph's on a sampled subgraph:
    the destinations of the first closure level of its kNN edges (``num_sampled_edges[0]``, the
    incoming edges of the items the batch reads, :class:`SampledView`), an unbiased estimate of
    it with a kNN fan-out (``train.knn_fanout``); ``None`` on a whole graph (every item)."""
    if 'n_id' not in data['item']:
        return None
    store = data[knn_edge_type(modality)]
    first = int(store.num_sampled_edges[0]) if 'num_sampled_edges' in store else 0
    return torch.unique(store.edge_index[1, :first])


def require_item_features(data: HeteroData, modalities: tuple[str, ...], model: str) -> None:
    """Raises a one-line :class:`DataError` naming the first missing feature table."""
    store = data['item'] if 'item' in data.node_types else None
    present = [feature_key(m) for m in MODALITIES if store is not None and feature_key(m) in store]
    for m in modalities:
        if feature_key(m) not in present:
            have = ', '.join(present) if present else 'no feature tables'
            raise DataError(f"{model} needs item features '{feature_key(m)}' "
                            f'({MODALITY_FILES[m]}); the dataset has: {have}')


def require_knn_graphs(data: HeteroData, modalities: tuple[str, ...], model: str) -> None:
    """Raises a one-line :class:`DataError` naming the first missing kNN edge type."""
    for m in modalities:
        if knn_edge_type(m) not in data.edge_types:
            raise DataError(f'{model} needs the {knn_edge_type(m)} kNN edges; the dataset has none')


def feature_copies(data: HeteroData, modalities: tuple[str, ...],
                   trainable: bool = True) -> torch.nn.ParameterDict:
    """Parameters initialised from the raw tables ``data['item'].x_<m>`` (float32 copies; with
    ``trainable=False`` they stay in the ``state_dict`` but get no gradient)."""
    return torch.nn.ParameterDict({
        m: torch.nn.Parameter(data['item'][feature_key(m)].detach().clone().float(),
                              requires_grad=trainable)
        for m in modalities
    })


def _data_device(data: HeteroData) -> torch.device:
    for store in data.stores:
        for value in store.values():
            if isinstance(value, Tensor):
                return value.device
    return torch.device('cpu')


class RecModel(torch.nn.Module, ABC):
    """Base class of the recommenders (Contract 2).

    Args:
        data: the full ``HeteroData`` of Contract 1 (sizes and feature tables).
        config: an instance of the model's ``Config`` (``None``: its defaults).
    """

    Config: ClassVar[type[ModelConfig]]
    description: ClassVar[str]

    def __init__(self, data: HeteroData, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise ConfigError(f'{type(self).__name__} needs a {type(self).__name__}.Config, '
                              f'got {type(config).__name__}')
        for node_type in ('user', 'item'):
            if node_type not in data.node_types:
                raise DataError(f"the dataset has no '{node_type}' nodes")
        self.config = config
        self.num_users = int(data['user'].num_nodes)
        self.num_items = int(data['item'].num_nodes)
        require_item_features(data, self.required_modalities(config), type(self).__name__)
        self.graph_cache = TensorCache()

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        """The item feature tables the model reads (subset of :data:`MODALITIES`)."""
        return ()

    @abstractmethod
    def forward(self, data: HeteroData) -> RecOutput:
        """Computes the final embeddings and intermediate views of ``data``'s nodes."""

    @abstractmethod
    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of the triples and each weighted term (detached scalars) by short name."""

    def batch_rows(self, out: RecOutput, users: Tensor, pos: Tensor,
                   neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The rows ``(u, p, n)`` of a batch's users, positives and negatives in ``out``
        (through :func:`rows`, so that the backward pass is deterministic)."""
        return rows(out.user, users), rows(out.item, pos), rows(out.item, neg)

    # The optional part of the model-trainer contract: the defaults a model may override. #####

    #: ``False``: the trainer samples positive pairs only and :meth:`loss` gets ``neg=None``.
    needs_negatives: ClassVar[bool] = True

    #: ``None``: the model can train on a sampled subgraph ``HeteroData`` (its nodes' global
    #: ids in ``data[node_type].n_id``); otherwise a one-line reason why it cannot, which the
    #: trainer reports when sampled training is asked for.
    sampled_refusal: ClassVar[str | None] = None

    @property
    def sampled_hops(self) -> int | None:
        """The user-item hops a sampled subgraph needs, one per propagation layer over the
        user-item graph (``train.fanout`` must have this many entries); ``None`` (default): the
        model does not propagate over that graph (it reads the seeds' rows only), so any number
        of hops trains the same model."""
        return None

    @property
    def sampled_views(self) -> dict[str, SampledView]:
        """The modality kNN views (by modality) that a batch's losses read on a sampled
        subgraph, and by which rows (:class:`SampledView`); the subgraph holds the kNN edges of
        these views only. Default: none (the model reads no kNN graph)."""
        return {}

    @property
    def sampled_features(self) -> tuple[str, ...]:
        """The modalities whose file feature tables (``data['item'].x_<m>``) the model reads on
        a sampled subgraph: the subgraphs carry their rows (of all the subgraph's items), no
        other feature table. Default: none (the model reads its own copies of the tables)."""
        return ()

    def node_tables(self) -> dict[str, torch.nn.Parameter]:
        """The trainable tables with one row per user or per item that the model gathers by
        node id (:func:`node_rows`), by parameter name: the 2-D parameters of ``num_users`` or
        ``num_items`` rows held by a :class:`torch.nn.Embedding`, by the model itself or by a
        :class:`torch.nn.ParameterDict` (not the weights of layers such as
        :class:`torch.nn.Linear`, whatever their shape). On a
        sampled subgraph only their subgraph rows get gradient, which the trainer's row-sparse
        updates (``train.sparse_updates``) rely on. A model that reads such a table otherwise
        overrides this."""
        sizes = (self.num_users, self.num_items)
        tables = {}
        for prefix, module in self.named_modules():
            if not isinstance(module, (RecModel, torch.nn.ParameterDict, torch.nn.Embedding)):
                continue
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad and param.dim() == 2 and param.size(0) in sizes:
                    tables[f'{prefix}.{name}' if prefix else name] = param
        return tables

    def on_epoch_start(self, data: HeteroData, epoch: int, generator: torch.Generator) -> None:
        """Called by the trainer before each training epoch (``epoch`` counts from 1) with the
        run's generator, so that what a model draws per epoch (e.g. FREEDOM's pruned graph) is
        reproducible and resumable. Default: nothing."""

    def project(self, data: HeteroData, out: RecOutput,
                items: Tensor | None = None) -> dict[str, Tensor]:
        """Projection-domain views of ``items`` (all items when ``None``) by name, which the
        analyses compare beside ``out.views`` (SPEC §6). Default: none."""
        return {}

    def user_item_graph(self, data: HeteroData, backend: PropagationBackend) -> UserItemGraph:
        """The SPEC §2 user-item operators of ``data``, built once and cached.

        Reads :data:`~anchorrec_pyg.schema.USER_ITEM` and, when present,
        :data:`~anchorrec_pyg.schema.ITEM_USER` (otherwise the flipped forward edges), with their
        stored ``edge_weight``.
        """
        if USER_ITEM not in data.edge_types:
            raise DataError(f'the dataset has no {USER_ITEM} edges')
        ui = data[USER_ITEM]
        if 'edge_weight' not in ui:
            raise DataError(f'the {USER_ITEM} edges have no edge_weight')
        rev = data[ITEM_USER] if ITEM_USER in data.edge_types else None
        num_users, num_items = data['user'].num_nodes, data['item'].num_nodes

        def build() -> UserItemGraph:
            if rev is None:
                iu_index, iu_weight = ui.edge_index.flip(0), ui.edge_weight
            else:
                iu_index, iu_weight = rev.edge_index, rev.edge_weight
            adj = user_item_adjacency(backend, ui.edge_index, ui.edge_weight, iu_index,
                                      iu_weight, num_users, num_items)
            user_item = backend.adjacency(iu_index, iu_weight, (num_items, num_users))
            return UserItemGraph(adj=adj, user_item=user_item)

        key = (ui.edge_index, ui.edge_weight, None if rev is None else rev.edge_index,
               None if rev is None else rev.edge_weight)
        return self.graph_cache.get(f'user_item:{num_users}:{num_items}', key, build)

    def item_graph(self, data: HeteroData, modality: str,
                   backend: PropagationBackend) -> Adjacency:
        """The kNN operator ``A_m`` (``I x I``) of ``data[knn_edge_type(modality)]``, built once
        and cached."""
        edge_type = knn_edge_type(modality)
        if edge_type not in data.edge_types:
            raise DataError(f"the dataset has no {edge_type} kNN edges for modality '{modality}'")
        store = data[edge_type]
        if 'edge_weight' not in store:
            raise DataError(f'the {edge_type} edges have no edge_weight')
        num_items = data['item'].num_nodes
        return self.graph_cache.get(
            f'knn_{modality}:{num_items}', (store.edge_index, store.edge_weight),
            lambda: backend.adjacency(store.edge_index, store.edge_weight, (num_items, num_items)))

    def extra_repr(self) -> str:
        return f'num_users={self.num_users}, num_items={self.num_items}'
