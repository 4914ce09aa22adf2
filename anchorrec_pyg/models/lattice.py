r"""LATTICE (Zhang et al., ACM MM 2021): a latent item-item graph learned from the features, as
MMRec implements it (SPEC §10), with every graph sparse.

* User-item propagation (not the SPEC §2 graph): :math:`\mathbf{P} = \mathbf{D}^{-1}
  (\mathbf{A}_{01} + \mathbf{I})` over the ``(U+I)`` bipartite 0/1 adjacency, row-normalised
  with self loops; :math:`\mathbf{C}` = mean of layers ``0..L`` of :math:`\mathbf{P}` on
  :math:`[\mathbf{E}_u; \mathbf{E}_i]` (:func:`lattice_user_item_edges`).
* Item-item graph :math:`\mathbf{S}` of :class:`~anchorrec_pyg.nn.latent_graph.LatentItemGraph`
  over the image and text modalities: the static graphs are the dataset's SPEC §2 kNN graphs,
  the learned ones top-k of :math:`\cos(\mathrm{Lin}_m(\mathbf{F}_m))` on trainable copies.
* Rebuild rule: :math:`\mathbf{S}` is rebuilt at the first training forward of every epoch
  (:meth:`LATTICE.on_epoch_start`), and only that forward trains :math:`\mathrm{Lin}_m`,
  :math:`\boldsymbol\omega` and the copies; the other batches of the epoch use it detached.
  Every forward in evaluation mode rebuilds it (the published ``full_sort_predict``).
* Forward: :math:`\mathbf{h} = \mathbf{S}^{n}\mathbf{E}_i`; users :math:`\mathbf{C}_u`, items
  :math:`\mathbf{C}_i + \mathbf{h}/\lVert\mathbf{h}\rVert`.
* Loss: :math:`\mathrm{BPR} + \lambda_{reg}\frac{1}{2B}(\lVert\mathbf{u}\rVert^2 +
  \lVert\mathbf{p}\rVert^2 + \lVert\mathbf{n}\rVert^2)` on the final embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import degree

from anchorrec_pyg.losses import BPRLoss, EmbeddingL2Loss
from anchorrec_pyg.models.base import (
    ModelConfig,
    RecModel,
    RecOutput,
    feature_copies,
    require_knn_graphs,
)
from anchorrec_pyg.models.graph import GraphModelConfig
from anchorrec_pyg.nn.latent_graph import LatentItemGraph, propagate_edges
from anchorrec_pyg.nn.lightgcn import LightGCNEncoder
from anchorrec_pyg.nn.propagation import Adjacency, get_backend
from anchorrec_pyg.schema import USER_ITEM, knn_edge_type

__all__ = ['LATTICE', 'lattice_user_item_edges']

#: Modalities in the order of the published ``modal_weight`` (image first).
FEATURE_MODALITIES = ('image', 'text')


def lattice_user_item_edges(edge_index: Tensor, num_users: int,
                            num_items: int) -> tuple[Tensor, Tensor]:
    r"""The edges of :math:`\mathbf{P} = \mathbf{D}^{-1}(\mathbf{A}_{01} + \mathbf{I})` over
    ``U + I`` nodes (item ``i`` is node ``U + i``): both directions of every training edge
    ``(u, i)`` of ``edge_index`` plus a self loop per node, the edge into node :math:`n`
    weighted :math:`1 / (\deg(n) + 1)`. Returns ``(edge_index, edge_weight)`` (row 0 source)."""
    num_nodes = num_users + num_items
    user, item = edge_index[0], edge_index[1] + num_users
    loops = torch.arange(num_nodes, device=edge_index.device)
    source = torch.cat([user, item, loops])
    target = torch.cat([item, user, loops])
    inv_deg = (degree(target, num_nodes)).reciprocal()
    return torch.stack([source, target]), inv_deg[target]


class LATTICE(RecModel):
    r"""LATTICE (SPEC §10) on the image and text tables and kNN graphs of Contract 1.

    ``forward`` returns users :math:`\mathbf{C}_u` and items :math:`\mathbf{C}_i +
    \mathrm{l2norm}(\mathbf{h})` with the views ``'C'`` and ``'h'``; ``loss`` returns ``bpr`` and
    ``reg``. Works on the full graph only (:attr:`sampled_refusal`).
    """

    description = ('LATTICE: LightGCN (row-normalised, self loops) plus a learned image+text '
                   'item-item graph rebuilt every epoch')
    sampled_refusal = ('its learned item-item graph is a top-k over all items of the whole '
                       'feature tables, and P is normalised with full-graph degrees')

    @dataclass
    class Config(GraphModelConfig):
        r"""LATTICE hyper-parameters (MMRec's defaults; ``embedding_dim``, d of the ID tables,
        published 64, and ``propagation``, the backend of :math:`\mathbf{P}` and of the detached
        :math:`\mathbf{S}`, as :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            feat_embed_dim: width of :math:`\mathrm{Lin}_m`'s output (published 64).
            n_ui_layers: layers of :math:`\mathbf{P}` (published 2, ``len(weight_size)``).
            n_mm_layers: steps on :math:`\mathbf{S}` (published 1, ``n_layers``).
            knn_k: neighbours per item of the learned graphs (published 10; the static graphs
                are the dataset's, ``data.knn_k``).
            lambda_coeff: :math:`\lambda`, weight of the static graph in :math:`\mathbf{S}`
                (published 0.9).
            reg_weight: :math:`\lambda_{reg}` of the L2 term (grid {0, 1e-5, 1e-4, 1e-3}).
        """

        feat_embed_dim: int = 64
        n_ui_layers: int = 2
        n_mm_layers: int = 1
        knn_k: int = 10
        lambda_coeff: float = 0.9
        reg_weight: float = 1e-4

        def validate(self) -> None:
            for key in ('feat_embed_dim', 'knn_k'):
                self.require(getattr(self, key) > 0, key, 'must be > 0')
            self.require_nonnegative('n_mm_layers')
            self.require(0 <= self.lambda_coeff <= 1, 'lambda_coeff', 'must be in [0, 1]')
            self.require(self.reg_weight >= 0, 'reg_weight', 'must be >= 0')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return FEATURE_MODALITIES

    def __init__(self, data: HeteroData, config: LATTICE.Config | None = None) -> None:
        super().__init__(data, config if config is not None else self.Config())
        cfg = self.config
        require_knn_graphs(data, FEATURE_MODALITIES, 'LATTICE')
        self.propagation = get_backend(cfg.propagation)
        self.user_embedding = torch.nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, cfg.embedding_dim)
        self.features = feature_copies(data, FEATURE_MODALITIES)
        self.item_graph_learner = LatentItemGraph(
            {m: self.features[m].size(1) for m in FEATURE_MODALITIES}, cfg.feat_embed_dim,
            cfg.knn_k, cfg.lambda_coeff)
        self.encoder = LightGCNEncoder(cfg.n_ui_layers)
        self.bpr = BPRLoss()
        self.l2 = EmbeddingL2Loss()
        self.rebuild = True
        self.item_adj: Adjacency | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ID tables; the graph learner's own initialisation."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        self.item_graph_learner.reset_parameters()

    def on_epoch_start(self, data: HeteroData, epoch: int, generator: torch.Generator) -> None:
        """Marks :math:`\\mathbf{S}` for a rebuild (with gradient) at the next training
        forward, the epoch's first batch (trainer hook)."""
        self.rebuild = True

    def user_item_operator(self, data: HeteroData) -> Adjacency:
        """:math:`\\mathbf{P}` of :func:`lattice_user_item_edges`, built once per data object."""
        edge_index = data[USER_ITEM].edge_index
        num_users, num_items = data['user'].num_nodes, data['item'].num_nodes

        def build() -> Adjacency:
            index, weight = lattice_user_item_edges(edge_index, num_users, num_items)
            num_nodes = num_users + num_items
            return self.propagation.adjacency(index, weight, (num_nodes, num_nodes))

        return self.graph_cache.get(f'lattice_ui:{num_users}:{num_items}', (edge_index, ),
                                    build)

    def item_item_graph(self, data: HeteroData) -> tuple[Tensor, Tensor]:
        """:math:`\\mathbf{S}` as ``(edge_index, edge_weight)``, differentiable in the graph
        learner and the feature copies."""
        static = {m: (data[knn_edge_type(m)].edge_index, data[knn_edge_type(m)].edge_weight)
                  for m in FEATURE_MODALITIES}
        return self.item_graph_learner(dict(self.features), static)

    def item_view(self, data: HeteroData) -> Tensor:
        r""":math:`\mathbf{S}^n\mathbf{E}_i` under the rebuild rule of the module docstring."""
        h = self.item_embedding.weight
        if self.training and not self.rebuild and self.item_adj is not None:
            for _ in range(self.config.n_mm_layers):
                h = self.item_adj @ h
            return h
        edge_index, edge_weight = self.item_item_graph(data)
        if self.training:
            self.rebuild = False
            self.item_adj = self.propagation.adjacency(edge_index, edge_weight.detach(),
                                                       (self.num_items, self.num_items))
        for _ in range(self.config.n_mm_layers):
            h = propagate_edges(edge_index, edge_weight, h, self.num_items)
        return h

    def forward(self, data: HeteroData) -> RecOutput:
        h = self.item_view(data)
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        c = self.encoder(x, self.user_item_operator(data))
        item = c[self.num_users:] + F.normalize(h, dim=1)
        return RecOutput(user=c[:self.num_users], item=item, views={'C': c, 'h': h})

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        u, p, n = self.batch_rows(out, users, pos, neg)
        bpr = self.bpr((u * p).sum(-1), (u * n).sum(-1))
        reg = self.config.reg_weight * self.l2(
            u, p, n, batch_size=batch_size if batch_size is not None else users.numel())
        return bpr + reg, {'bpr': bpr.detach(), 'reg': reg.detach()}
