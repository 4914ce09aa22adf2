r"""The propagation interface: every sparse product of the models goes through it.

A graph convolution in this package needs one operation, the weighted neighbourhood sum

.. math::
    (\mathbf{A}\mathbf{X})_i = \sum_{(j \rightarrow i) \in \mathcal{E}} w_{ji}\,\mathbf{x}_j,

over an ``edge_index`` whose row 0 holds the sources :math:`j` and row 1 the targets :math:`i`
(PyG's ``flow='source_to_target'``), with the edge weights as stored in the data (SPEC §2 weights
are already normalised, so no normalisation happens here). A *backend* turns
``(edge_index, edge_weight, size)`` into an :class:`Adjacency`, an operator that models apply with
``adj @ x``. Which backend a model uses is a string in its config (key ``propagation``):

* ``'pyg'`` (the reference): :class:`~torch_geometric.nn.conv.MessagePassing` gather/scatter
  over the edge list (:class:`WeightedAggregation`).
* ``'torch_csr'``: a ``torch.sparse_csr_tensor`` adjacency multiplied with ``torch.sparse.mm``.
* ``'fast'``: CSR products whose backward uses a transpose built once (the adjacency itself when
  symmetric), fusing the products of one step into one call
  (:class:`~anchorrec_pyg.nn.fast_csr.FastCSRBackend`, registered when :mod:`anchorrec_pyg.nn`
  is imported).

A new backend is one :class:`PropagationBackend` subclass registered with
:func:`register_backend`; models never change. Backends that can batch several products (e.g.
block-diagonal modality graphs) override :meth:`PropagationBackend.matmul_many`, which models use
wherever they multiply several graphs in one step (:func:`propagate_many`).

Building an adjacency is work that depends only on the data, so models build each one once and
keep it in a :class:`TensorCache` keyed by the identity (and in-place version) of the data tensors
it was built from.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import torch
from torch import Tensor
from torch_geometric.nn.conv import MessagePassing

from anchorrec_pyg.errors import ConfigError

__all__ = [
    'Adjacency',
    'PropagationBackend',
    'WeightedAggregation',
    'PyGBackend',
    'TorchCSRBackend',
    'BACKENDS',
    'check_edges',
    'register_backend',
    'get_backend',
    'propagate_many',
    'TensorCache',
]

T = TypeVar('T')


class Adjacency(ABC):
    r"""A weighted sparse operator :math:`\mathbf{A}` of shape ``(num_dst, num_src)``.

    ``adj @ x`` maps source-node features ``x`` (``[num_src, F]``) to target-node features
    (``[num_dst, F]``). Gradients flow to ``x``; the edge weights are constants.
    """

    backend: PropagationBackend
    size: tuple[int, int]  # (num_src, num_dst), PyG's convention

    @abstractmethod
    def matmul(self, x: Tensor) -> Tensor:
        """Returns ``A @ x``."""

    def __matmul__(self, x: Tensor) -> Tensor:
        return self.matmul(x)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(num_src={self.size[0]}, num_dst={self.size[1]})'


class PropagationBackend(ABC):
    """Builds :class:`Adjacency` operators from edge lists (one implementation of the interface)."""

    name: ClassVar[str]

    @abstractmethod
    def adjacency(
        self,
        edge_index: Tensor,
        edge_weight: Tensor,
        size: tuple[int, int],
    ) -> Adjacency:
        """Prepares the operator of the edges ``edge_index`` (row 0 source, row 1 target) with
        weights ``edge_weight`` between ``size = (num_src, num_dst)`` nodes."""

    def matmul_many(self, adjs: Sequence[Adjacency], xs: Sequence[Tensor]) -> list[Tensor]:
        """Returns ``[a @ x for a, x in zip(adjs, xs)]``; backends may fuse the products."""
        return [adj @ x for adj, x in zip(adjs, xs)]

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'


class WeightedAggregation(MessagePassing):
    r"""Weighted sum aggregation :math:`\mathbf{x}'_i = \sum_{j \rightarrow i} w_{ji}\mathbf{x}_j`.

    This is :class:`torch_geometric.nn.conv.LGConv` with ``normalize=False`` generalised to
    bipartite graphs (``size = (num_src, num_dst)``); it has no parameters.
    """

    def __init__(self) -> None:
        super().__init__(aggr='add')

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor,
        size: tuple[int, int],
    ) -> Tensor:
        return self.propagate(edge_index, x=(x, None), edge_weight=edge_weight, size=size)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.view(-1, 1) * x_j


class _PyGAdjacency(Adjacency):
    def __init__(self, backend: PyGBackend, edge_index: Tensor, edge_weight: Tensor,
                 size: tuple[int, int]) -> None:
        self.backend = backend
        self.edge_index = edge_index
        self.edge_weight = edge_weight
        self.size = size

    def matmul(self, x: Tensor) -> Tensor:
        weight = self.edge_weight if self.edge_weight.dtype == x.dtype else self.edge_weight.to(
            x.dtype)
        return self.backend.conv(x, self.edge_index, weight, self.size)


class PyGBackend(PropagationBackend):
    """PyG message passing (gather the source rows, scale by the weight, scatter-add)."""

    name = 'pyg'

    def __init__(self) -> None:
        self.conv = WeightedAggregation()

    def adjacency(self, edge_index: Tensor, edge_weight: Tensor,
                  size: tuple[int, int]) -> Adjacency:
        check_edges(edge_index, edge_weight, size)
        return _PyGAdjacency(self, edge_index, edge_weight, (int(size[0]), int(size[1])))


class _CSRAdjacency(Adjacency):
    def __init__(self, backend: TorchCSRBackend, matrix: Tensor, size: tuple[int, int]) -> None:
        self.backend = backend
        self.matrix = matrix
        self.size = size

    def matmul(self, x: Tensor) -> Tensor:
        matrix = self.matrix if self.matrix.dtype == x.dtype else self.matrix.to(x.dtype)
        return torch.sparse.mm(matrix, x)


class TorchCSRBackend(PropagationBackend):
    """``torch.sparse`` CSR matrix (rows = targets) times dense features (``torch.sparse.mm``)."""

    name = 'torch_csr'

    def adjacency(self, edge_index: Tensor, edge_weight: Tensor,
                  size: tuple[int, int]) -> Adjacency:
        check_edges(edge_index, edge_weight, size)
        num_src, num_dst = int(size[0]), int(size[1])
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
            matrix = torch.sparse_coo_tensor(
                edge_index.flip(0), edge_weight.detach(), (num_dst, num_src)
            ).coalesce().to_sparse_csr()
        return _CSRAdjacency(self, matrix, (num_src, num_dst))


def check_edges(edge_index: Tensor, edge_weight: Tensor, size: tuple[int, int]) -> None:
    """Raises ``ValueError`` unless ``edge_index`` is ``[2, E]``, ``edge_weight`` ``[E]`` and
    ``size`` a pair."""
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f'edge_index must have shape [2, E], got {list(edge_index.shape)}')
    if edge_weight.shape != (edge_index.size(1), ):
        raise ValueError(f'edge_weight must have shape [{edge_index.size(1)}], '
                         f'got {list(edge_weight.shape)}')
    if len(size) != 2:
        raise ValueError(f'size must be (num_src, num_dst), got {size}')


BACKENDS: dict[str, type[PropagationBackend]] = {}


def register_backend(cls: type[PropagationBackend]) -> type[PropagationBackend]:
    """Class decorator adding a backend to :data:`BACKENDS` under its ``name``."""
    if cls.name in BACKENDS:
        raise ValueError(f"propagation backend '{cls.name}' is already registered")
    BACKENDS[cls.name] = cls
    return cls


register_backend(PyGBackend)
register_backend(TorchCSRBackend)


def get_backend(name: str, key: str = 'model.propagation') -> PropagationBackend:
    """Returns a new instance of the backend registered as ``name``.

    Raises:
        ConfigError: if no backend has that name (the message names ``key``).
    """
    if name not in BACKENDS:
        valid = ', '.join(sorted(BACKENDS))
        raise ConfigError(f"{key} must be one of {valid}, got '{name}'")
    return BACKENDS[name]()


def propagate_many(adjs: Sequence[Adjacency], xs: Sequence[Tensor]) -> list[Tensor]:
    """Returns ``[a @ x for a, x in zip(adjs, xs)]`` through the adjacencies' backend, so that a
    backend able to fuse several products (:meth:`PropagationBackend.matmul_many`) can do so."""
    if len(adjs) != len(xs):
        raise ValueError(f'got {len(adjs)} adjacencies and {len(xs)} inputs')
    if not adjs:
        return []
    backend = adjs[0].backend
    if any(adj.backend is not backend for adj in adjs):
        raise ValueError('propagate_many needs adjacencies of one backend instance')
    return backend.matmul_many(adjs, xs)


class TensorCache:
    """A small LRU cache of values derived from tensors, keyed by the tensors' identity.

    An entry is reused only while every key tensor is the very same object with the same in-place
    version counter, so replacing or modifying a data tensor in place invalidates what was built
    from it. The cache keeps references to its key tensors (their ids cannot be recycled while an
    entry lives) and holds at most ``maxsize`` entries. It is not part of a model's state: copies
    and pickles of a model start with an empty cache.
    """

    def __init__(self, maxsize: int = 16) -> None:
        if maxsize < 1:
            raise ValueError(f'maxsize must be >= 1, got {maxsize}')
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple, tuple[tuple[Any, ...], tuple[int, ...], Any]] = (
            OrderedDict())

    def get(self, name: str, tensors: Sequence[Tensor | None], build: Callable[[], T]) -> T:
        """Returns the value cached under ``name`` for ``tensors``, building it on a miss."""
        key = (name, ) + tuple(id(t) for t in tensors)
        versions = tuple(-1 if t is None else t._version for t in tensors)
        entry = self._entries.get(key)
        if entry is not None:
            kept, kept_versions, value = entry
            if all(a is b for a, b in zip(kept, tensors)) and kept_versions == versions:
                self._entries.move_to_end(key)
                return value
        value = build()
        self._entries[key] = (tuple(tensors), versions, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict[str, Any]:
        return {'maxsize': self.maxsize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.maxsize = state['maxsize']
        self._entries = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> TensorCache:
        return TensorCache(self.maxsize)

    def __copy__(self) -> TensorCache:
        return TensorCache(self.maxsize)

    def __repr__(self) -> str:
        return f'TensorCache(entries={len(self)}, maxsize={self.maxsize})'
