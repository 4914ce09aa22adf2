r"""The base of the graph recommenders: :class:`GraphRecModel` and :class:`GraphModelConfig`.

Every model with a LightGCN collaborative view (SPEC §3.1, §7, §9, §10) shares the same start,
owned here (the pattern of RecBole-GNN's ``GeneralGraphRecommender``):

* the ID tables ``Eu`` (``U x d``) and ``Ei`` (``I x d``), Xavier-uniform
  (``user_embedding``, ``item_embedding``; :meth:`GraphRecModel.reset_parameters`);
* the sparse backend (``propagation``) and the operators of ``data`` built with it, once per
  data object: the user-item graph (:meth:`GraphRecModel.user_item_graph`, SPEC §2) and the kNN
  graph of a modality (:meth:`GraphRecModel.item_graph`);
* the collaborative view

  .. math::
      \mathbf{C} = \frac{1}{L+1}\sum_{l=0}^{L}\hat{\mathbf{A}}^l[\mathbf{E}_u; \mathbf{E}_i]

  of the (sub)graph's ID rows (:meth:`GraphRecModel.collaborative`, ``encoder``);
* the start of a loss: the batch rows (:meth:`~anchorrec_pyg.models.base.RecModel.batch_rows`),
  BPR (:meth:`GraphRecModel.bpr_loss`) and the embedding L2 term of SPEC §4
  (:meth:`GraphRecModel.l2_loss`).

A new graph model is then its ``Config`` (a :class:`GraphModelConfig`), ``__init__`` (the base's,
its own modules, then ``self.reset_parameters()``), ``forward`` and ``loss``::

    class MyModel(GraphRecModel):
        description = 'MyModel: LightGCN plus ...'

        @dataclass
        class Config(GraphModelConfig):
            n_ui_layers: int = 2
            reg_weight: float = 1e-4

        def __init__(self, data, config=None):
            super().__init__(data, config)
            self.reset_parameters()

        def forward(self, data):
            view = self.collaborative(data)
            return RecOutput(user=view.c_user, item=view.c_item, views={'C': view.c})

        def loss(self, data, out, users, pos, neg, batch_size=None):
            u, p, n = self.batch_rows(out, users, pos, neg)
            bpr = self.bpr_loss(u, p, n)
            reg = self.config.reg_weight * self.l2_loss(u, p, n, batch_size)
            return bpr + reg, {'bpr': bpr.detach(), 'reg': reg.detach()}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import BPRLoss, EmbeddingL2Loss
from anchorrec_pyg.models.base import ModelConfig, RecModel, UserItemGraph, node_rows
from anchorrec_pyg.nn.lightgcn import LightGCNEncoder
from anchorrec_pyg.nn.propagation import BACKENDS, Adjacency, get_backend

__all__ = ['GraphModelConfig', 'GraphRecModel', 'UserItemGraph', 'CollaborativeView']


@dataclass
class GraphModelConfig(ModelConfig):
    """Base of the graph models' ``Config`` dataclasses.

    Attributes:
        embedding_dim: d of the ID tables (published 64).
        propagation: sparse backend (:data:`anchorrec_pyg.nn.propagation.BACKENDS`):
            ``'fast'`` (default, :class:`~anchorrec_pyg.nn.fast_csr.FastCSRBackend`), or
            ``'pyg'`` (the MessagePassing reference) and ``'torch_csr'``: the same products to
            float rounding, each reproducible bit for bit with one seed.

    The subclass declares the field of ``L``, the LightGCN layers of the collaborative view,
    with its published default: ``n_ui_layers`` (AnchorRec, AlignRec, FREEDOM), or the key named
    by :attr:`ui_layers_key` (LightGCN and BM3 keep their published ``n_layers``), so that
    published configs keep their keys. :attr:`ui_layers` reads it. ``embedding_dim``, ``L`` and
    ``propagation`` are checked here, after the subclass's :meth:`validate`.
    """

    #: The name of the field holding ``L``.
    ui_layers_key: ClassVar[str] = 'n_ui_layers'

    embedding_dim: int = 64
    propagation: str = 'fast'

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(self.embedding_dim > 0, 'embedding_dim', 'must be > 0')
        self.require(self.ui_layers >= 0, self.ui_layers_key, 'must be >= 0')
        self.require(self.propagation in BACKENDS, 'propagation',
                     f"must be one of {', '.join(sorted(BACKENDS))}")

    @property
    def ui_layers(self) -> int:
        """``L``, the LightGCN layers of the collaborative view (the :attr:`ui_layers_key`
        field)."""
        return getattr(self, self.ui_layers_key)


@dataclass(frozen=True)
class CollaborativeView:
    """The start of a graph model's forward pass (:meth:`GraphRecModel.collaborative`).

    Attributes:
        user_emb: ``[U, d]`` the ID rows of the (sub)graph's users (``Eu[n_id]``).
        item_emb: ``[I, d]`` the ID rows of its items.
        c: ``[U+I, d]`` the collaborative view ``C`` (users first).
        graph: the user-item operators of the data.
    """

    user_emb: Tensor
    item_emb: Tensor
    c: Tensor
    graph: UserItemGraph

    @property
    def num_users(self) -> int:
        return self.user_emb.size(0)

    @property
    def c_user(self) -> Tensor:
        """``C``'s user rows."""
        return self.c[:self.num_users]

    @property
    def c_item(self) -> Tensor:
        """``C``'s item rows."""
        return self.c[self.num_users:]


class GraphRecModel(RecModel):
    """Base class of the recommenders with ID tables and a LightGCN collaborative view (see
    the module docstring).

    Args:
        data: the full ``HeteroData`` of Contract 1.
        config: an instance of the model's ``Config`` (a :class:`GraphModelConfig`; ``None``:
            its defaults).

    Subclasses build their own modules after ``super().__init__`` and end their ``__init__``
    with ``self.reset_parameters()``; a subclass's :meth:`reset_parameters` calls the base's
    first.
    """

    Config: ClassVar[type[GraphModelConfig]]
    config: GraphModelConfig

    def __init__(self, data: HeteroData, config: GraphModelConfig | None = None) -> None:
        super().__init__(data, config)
        d = self.config.embedding_dim
        self.propagation = get_backend(self.config.propagation)
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.encoder = LightGCNEncoder(self.config.ui_layers)
        self.bpr = BPRLoss()
        self.l2 = EmbeddingL2Loss()

    def reset_parameters(self) -> None:
        """Xavier-uniform ``Eu`` and ``Ei``."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    @property
    def sampled_hops(self) -> int | None:
        """``L``: the seeds' collaborative view needs their ``L``-hop user-item neighbourhood
        (the modality views need one hop, within it); ``None`` for ``L = 0``."""
        return self.config.ui_layers or None

    def collaborative(self, data: HeteroData, adj: Adjacency | None = None) -> CollaborativeView:
        """The ID rows of ``data``'s users and items (``n_id`` on a subgraph) and their
        collaborative view ``C`` on ``adj`` (default: the data's user-item graph, SPEC §2)."""
        graph = self.user_item_graph(data, self.propagation)
        user_emb = node_rows(self.user_embedding.weight, data, 'user')
        item_emb = node_rows(self.item_embedding.weight, data, 'item')
        c = self.encoder(torch.cat([user_emb, item_emb]), graph.adj if adj is None else adj)
        return CollaborativeView(user_emb=user_emb, item_emb=item_emb, c=c, graph=graph)

    def bpr_loss(self, u: Tensor, p: Tensor, n: Tensor) -> Tensor:
        r"""BPR, :math:`-\mathrm{mean}\log\sigma(\langle u, p\rangle - \langle u, n\rangle)`."""
        return self.bpr((u * p).sum(-1), (u * n).sum(-1))

    def l2_loss(self, u: Tensor, p: Tensor, n: Tensor, batch_size: int | None) -> Tensor:
        r"""The embedding L2 term of SPEC §4 without its weight,
        :math:`\frac{1}{2B}(\|u\|^2 + \|p\|^2 + \|n\|^2)`, ``B`` the configured batch size
        (``None``: the batch's rows)."""
        return self.l2(u, p, n, batch_size=batch_size if batch_size is not None else u.size(0))
