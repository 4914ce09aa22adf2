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

Subgraphs: a model reads node ids from ``data[node_type].n_id`` when present (else
``arange(num_nodes)``) to index its embedding tables, so a sampled subgraph gets the rows of its
own nodes; everything else (features, edges) is read from the data object it is given.

Data-derived objects (adjacency operators, normalised feature tables) are built once per data
object and kept in ``self.graph_cache`` (:class:`~anchorrec_pyg.nn.propagation.TensorCache`),
keyed by the identity of the data tensors they come from.
"""
from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.losses import PackedCosineSimilarity, SimilarityTarget
from anchorrec_pyg.nn.lightgcn import user_item_adjacency
from anchorrec_pyg.nn.propagation import BACKENDS, Adjacency, PropagationBackend, TensorCache

__all__ = [
    'MODALITIES',
    'MODALITY_FILES',
    'ModelConfig',
    'RecOutput',
    'RecModel',
    'UserItemGraph',
    'node_ids',
    'node_rows',
    'rows',
    'require_item_features',
    'require_knn_graphs',
    'feature_copies',
]

#: The modalities of SPEC §1 and the ``HeteroData`` attribute of each (``data['item'].x_<m>``).
MODALITIES: tuple[str, ...] = ('mm', 'text', 'image')

#: The MMRec file each modality comes from (SPEC §1), for error messages.
MODALITY_FILES: dict[str, str] = {
    'mm': '<name>_beit3/image_feat.npy',
    'text': 'text_feat.npy',
    'image': 'image_feat.npy',
}

USER_ITEM = ('user', 'interacts', 'item')
ITEM_USER = ('item', 'rev_interacts', 'user')


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
    :meth:`validate` checks ranges; a ``propagation`` field must name a registered backend.
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
        if 'propagation' in {f.name for f in dataclasses.fields(self)}:
            self.require(self.propagation in BACKENDS, 'propagation',
                         f"must be one of {', '.join(sorted(BACKENDS))}")

    def validate(self) -> None:
        """Range checks of the subclass; raise :class:`ConfigError` via :meth:`require`."""

    @staticmethod
    def require(condition: bool, key: str, requirement: str) -> None:
        """Raises ``ConfigError('model.<key> <requirement>')`` unless ``condition``."""
        if not condition:
            raise ConfigError(f'model.{key} {requirement}')


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


def node_rows(table: Tensor, data: HeteroData, node_type: str) -> Tensor:
    """The rows of a per-node table (``[num_nodes_total, ...]``) for ``data[node_type]``'s nodes:
    ``table[n_id]`` on a subgraph, the table itself (no copy) otherwise."""
    store = data[node_type]
    if 'n_id' in store:
        return rows(table, store.n_id)
    if table.size(0) != store.num_nodes:
        raise DataError(f"the data has {store.num_nodes} '{node_type}' nodes but the model was "
                        f'built for {table.size(0)} (pass n_id for a subgraph)')
    return table


def require_item_features(data: HeteroData, modalities: tuple[str, ...], model: str) -> None:
    """Raises a one-line :class:`DataError` naming the first missing feature table."""
    store = data['item'] if 'item' in data.node_types else None
    present = [f'x_{m}' for m in MODALITIES if store is not None and f'x_{m}' in store]
    for m in modalities:
        if f'x_{m}' not in present:
            have = ', '.join(present) if present else 'no feature tables'
            raise DataError(f"{model} needs item features 'x_{m}' ({MODALITY_FILES[m]}); "
                            f'the dataset has: {have}')


def require_knn_graphs(data: HeteroData, modalities: tuple[str, ...], model: str) -> None:
    """Raises a one-line :class:`DataError` naming the first missing kNN edge type."""
    for m in modalities:
        if ('item', f'similar_{m}', 'item') not in data.edge_types:
            raise DataError(f"{model} needs the ('item', 'similar_{m}', 'item') kNN edges; "
                            'the dataset has none')


def feature_copies(data: HeteroData, modalities: tuple[str, ...],
                   trainable: bool = True) -> torch.nn.ParameterDict:
    """Parameters initialised from the raw tables ``data['item'].x_<m>`` (float32 copies; with
    ``trainable=False`` they stay in the ``state_dict`` but get no gradient)."""
    return torch.nn.ParameterDict({
        m: torch.nn.Parameter(data['item'][f'x_{m}'].detach().clone().float(),
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
        config: an instance of the model's ``Config``.
    """

    Config: ClassVar[type[ModelConfig]]
    description: ClassVar[str]

    def __init__(self, data: HeteroData, config: ModelConfig) -> None:
        super().__init__()
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

    def user_item_graph(self, data: HeteroData, backend: PropagationBackend) -> UserItemGraph:
        """The SPEC §2 user-item operators of ``data``, built once and cached.

        Reads ``('user', 'interacts', 'item')`` and, when present, ``('item', 'rev_interacts',
        'user')`` (otherwise the flipped forward edges), with their stored ``edge_weight``.
        """
        if USER_ITEM not in data.edge_types:
            raise DataError("the dataset has no ('user', 'interacts', 'item') edges")
        ui = data[USER_ITEM]
        if 'edge_weight' not in ui:
            raise DataError("the ('user', 'interacts', 'item') edges have no edge_weight")
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
        """The kNN operator ``A_m`` (``I x I``) of ``data['item', 'similar_<m>', 'item']``."""
        edge_type = ('item', f'similar_{modality}', 'item')
        if edge_type not in data.edge_types:
            raise DataError(f"the dataset has no {edge_type} kNN edges for modality '{modality}'")
        store = data[edge_type]
        if 'edge_weight' not in store:
            raise DataError(f'the {edge_type} edges have no edge_weight')
        num_items = data['item'].num_nodes
        return self.graph_cache.get(
            f'knn_{modality}:{num_items}', (store.edge_index, store.edge_weight),
            lambda: backend.adjacency(store.edge_index, store.edge_weight, (num_items, num_items)))

    def cached_similarities(self, data: HeteroData) -> tuple[str, ...]:
        """The modalities (of :meth:`required_modalities`) whose ``I x I`` raw cosine-similarity
        matrix :meth:`similarity_target` caches, for models with a ``similarity_cache_mb``
        config key.

        ``similarity_cache_mb`` is one budget for all modalities, spent on the tables that are
        the most expensive to recompute per batch (the widest feature table first); the others
        are computed blockwise per batch. Speed and memory only: the targets are the same.
        A sampled subgraph (``n_id`` on the items) caches none: its table is new every batch.
        """
        if 'n_id' in data['item']:
            return ()
        budget = self.config.similarity_cache_mb * 2**20
        num_items = int(data['item'].num_nodes)
        cached = []
        for m in sorted(self.required_modalities(self.config),
                        key=lambda m: -data['item'][f'x_{m}'].size(1)):
            size = PackedCosineSimilarity.nbytes(num_items, data['item'][f'x_{m}'].element_size())
            if size <= budget:
                cached.append(m)
                budget -= size
        return tuple(cached)

    def similarity_target(self, data: HeteroData, modality: str, distinct: Tensor,
                          counts: Tensor, cache: bool,
                          dtype: torch.dtype | None = None) -> SimilarityTarget:
        """The target ``S`` of the similarity-preservation terms (SPEC §4 AMP, §7): the cosine
        similarities of the raw feature rows of ``data['item'].x_<modality>``, for a batch whose
        sorted distinct items are ``distinct`` with multiplicities ``counts``
        (``torch.unique(items, return_counts=True)``);
        :class:`~anchorrec_pyg.losses.SimilarityPreservationLoss` takes it with the embedding
        rows of ``distinct``.

        With ``cache`` the ``I x I`` matrix is computed once per data tensor
        (:class:`~anchorrec_pyg.losses.PackedCosineSimilarity`, half the memory of the full
        matrix) and the block of the distinct items gathered from it; otherwise the
        target carries the distinct rows, normalised. The loss is the same either way: ``cache``
        trades memory for recomputation.
        """
        require_item_features(data, (modality, ), type(self).__name__)
        table = data['item'][f'x_{modality}']
        if cache:
            packed = self.graph_cache.get(f'similarity_{modality}', (table, ),
                                          lambda: PackedCosineSimilarity(table))
            block = packed.block(distinct)
            return SimilarityTarget(counts, block=block.to(dtype or block.dtype))
        unit_rows = torch.nn.functional.normalize(table.detach().index_select(0, distinct), dim=-1)
        return SimilarityTarget(counts, unit_rows=unit_rows.to(dtype or unit_rows.dtype))

    def extra_repr(self) -> str:
        return f'num_users={self.num_users}, num_items={self.num_items}'
