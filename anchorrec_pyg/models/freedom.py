r"""FREEDOM (Zhou & Shen, ACM MM 2023): frozen item-item graph and degree-sensitive edge pruning,
as MMRec implements it (SPEC §9).

* Item-item graph, built once and never rebuilt:
  :math:`\mathbf{S} = w_v\mathbf{S}_v + (1 - w_v)\mathbf{S}_t` with :math:`w_v = 0.1`, where
  :math:`\mathbf{S}_m` keeps each item's :math:`k` most cosine-similar items (itself included)
  of the raw features of modality :math:`m`, every kept edge weighted
  :math:`1/\sqrt{n_i n_j}` with :math:`n_i` the number of neighbours kept for :math:`i` (MMRec's
  normalised Laplacian of the binary kNN graph), i.e. :math:`1/k`, the row mean.
* User-item graph: during training a degree-sensitively pruned copy of the SPEC §2 graph,
  resampled every epoch (:meth:`FREEDOM.on_epoch_start`): ``int(|E| (1 - rho))`` edges drawn
  without replacement with probability :math:`\propto 1/\sqrt{d_u d_i}`, then re-weighted
  :math:`1/\sqrt{d'_u d'_i}` with the kept degrees; evaluation uses the full graph.
* Forward: :math:`\mathbf{H} = \mathbf{S}\mathbf{E}_i`; :math:`\mathbf{C}` = LightGCN mean
  (2 layers); users :math:`\mathbf{C}_u`, items :math:`\mathbf{C}_i + \mathbf{H}`.
* Loss (no L2 term):

  .. math::
      \mathcal{L} = \mathrm{BPR}(\mathbf{u}, \mathbf{p}, \mathbf{n}) + \lambda\big[
      \mathrm{BPR}(\mathbf{u}, W_t\mathbf{t}_p, W_t\mathbf{t}_n)
      + \mathrm{BPR}(\mathbf{u}, W_v\mathbf{v}_p, W_v\mathbf{v}_n)\big],

  :math:`W_t`, :math:`W_v` linear maps applied to trainable copies of the feature tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import degree

from anchorrec_pyg.errors import DataError
from anchorrec_pyg.models.base import (
    ModelConfig,
    RecOutput,
    feature_copies,
    node_rows,
    require_knn_graphs,
    rows,
)
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel
from anchorrec_pyg.nn.lightgcn import user_item_adjacency
from anchorrec_pyg.nn.propagation import Adjacency
from anchorrec_pyg.schema import USER_ITEM, knn_edge_type

__all__ = ['FREEDOM', 'freedom_item_graph', 'prune_user_item_edges']

FEATURE_MODALITIES = ('text', 'image')


def _binary_knn_weights(edge_index: Tensor, num_items: int) -> Tensor:
    """``1 / sqrt(n_i n_j)`` on a kNN edge list (row 0 neighbour j, row 1 item i), with
    ``n_i`` the number of neighbours kept for item i."""
    kept = degree(edge_index[1], num_items)
    return (kept[edge_index[0]] * kept[edge_index[1]]).clamp_min(1.0).rsqrt()


def freedom_item_graph(text_index: Tensor, image_index: Tensor, num_items: int,
                       image_weight: float) -> tuple[Tensor, Tensor]:
    r"""FREEDOM's frozen item-item graph
    :math:`\mathbf{S} = w_v\mathbf{S}_v + (1 - w_v)\mathbf{S}_t` as one edge list.

    Args:
        text_index, image_index: the ``[2, I*k]`` kNN edges of the raw text and image features
            (row 0 neighbour :math:`j`, row 1 item :math:`i`; Contract 1's ``similar_text`` and
            ``similar_image`` edges hold exactly these neighbour sets).
        num_items: :math:`I`.
        image_weight: :math:`w_v` (published 0.1).

    Returns:
        ``(edge_index, edge_weight)``; an edge present in both graphs appears twice (the
        propagation sums them).
    """
    edge_index = torch.cat([text_index, image_index], dim=1)
    edge_weight = torch.cat([
        (1.0 - image_weight) * _binary_knn_weights(text_index, num_items),
        image_weight * _binary_knn_weights(image_index, num_items),
    ])
    return edge_index, edge_weight


def prune_user_item_edges(edge_index: Tensor, edge_weight: Tensor, num_users: int,
                          num_items: int, keep_ratio: float,
                          generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""FREEDOM's degree-sensitive edge pruning of the user-item graph.

    Keeps ``int(E * keep_ratio)`` of the ``E`` edges, drawn without replacement with probability
    proportional to ``edge_weight`` (:math:`1/\sqrt{d_u d_i}`, SPEC §2), and re-weights the kept
    edges :math:`1/\sqrt{d'_u d'_i}` with the degrees of the kept graph.

    Returns:
        ``(edge_index [2, E'], edge_weight [E'])`` of the kept user -> item edges, in the order
        drawn (on ``edge_index``'s device).
    """
    num_keep = int(edge_index.size(1) * keep_ratio)
    if num_keep < 1:
        raise DataError(f'edge pruning keeps no edge of the {edge_index.size(1)} training '
                        f'interactions; lower model.edge_dropout')
    chosen = torch.multinomial(edge_weight.detach().double().cpu(), num_keep, replacement=False,
                               generator=generator).to(edge_index.device)
    kept = edge_index[:, chosen]
    deg_user = degree(kept[0], num_users)
    deg_item = degree(kept[1], num_items)
    weight = (deg_user[kept[0]] * deg_item[kept[1]]).rsqrt().to(edge_weight.dtype)
    return kept, weight


class FREEDOM(GraphRecModel):
    r"""FREEDOM (SPEC §9) on the text and image tables and kNN graphs of Contract 1.

    ``forward`` returns users :math:`\mathbf{C}_u` and items :math:`\mathbf{C}_i + \mathbf{H}`,
    with the views ``'C'`` and ``'H'``. In training mode the LightGCN view runs on the pruned
    graph drawn by the last :meth:`on_epoch_start` (the full graph before the first draw, or
    with ``edge_dropout = 0``); in evaluation mode on the full graph. ``loss`` returns ``bpr``
    and ``modal`` (the weighted feature BPR terms).
    """

    description = ('FREEDOM: LightGCN on a degree-pruned user-item graph plus a frozen '
                   'text+image item-item graph; feature BPR terms')
    sampled_refusal = ('its frozen item-item graph is the kNN of all items\' features and its '
                       'pruned user-item graph is drawn from the whole graph each epoch')

    @dataclass
    class Config(GraphModelConfig):
        r"""FREEDOM hyper-parameters (MMRec's defaults; ``embedding_dim``, published 64, is also
        the width of ``W_t``, ``W_v``'s outputs; ``propagation`` as
        :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_ui_layers: LightGCN layers (published 2).
            n_mm_layers: propagation steps on the item-item graph (published 1).
            edge_dropout: :math:`\rho`, the fraction of user-item edges pruned each epoch (grid
                {0.8, 0.85, 0.9}).
            reg_weight: :math:`\lambda`, weight of the feature BPR terms (grid {0.03, 0.05,
                0.07}).
            image_weight: :math:`w_v` of the item-item graph (published 0.1).
        """

        n_ui_layers: int = 2
        n_mm_layers: int = 1
        edge_dropout: float = 0.8
        reg_weight: float = 0.05
        image_weight: float = 0.1

        def validate(self) -> None:
            self.require(self.n_mm_layers >= 0, 'n_mm_layers', 'must be >= 0')
            self.require(0 <= self.edge_dropout < 1, 'edge_dropout', 'must be in [0, 1)')
            self.require(self.reg_weight >= 0, 'reg_weight', 'must be >= 0')
            self.require(0 <= self.image_weight <= 1, 'image_weight', 'must be in [0, 1]')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return FEATURE_MODALITIES

    def __init__(self, data: HeteroData, config: FREEDOM.Config | None = None) -> None:
        super().__init__(data, config)
        require_knn_graphs(data, FEATURE_MODALITIES, 'FREEDOM')
        self.features = feature_copies(data, FEATURE_MODALITIES)
        self.feature_maps = torch.nn.ModuleDict({
            m: torch.nn.Linear(self.features[m].size(1), self.config.embedding_dim)
            for m in FEATURE_MODALITIES
        })
        self.pruned_adj: Adjacency | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ID tables; PyTorch's default initialisation of ``W_t``, ``W_v``."""
        super().reset_parameters()
        for linear in self.feature_maps.values():
            linear.reset_parameters()

    def item_item_graph(self, data: HeteroData) -> Adjacency:
        """The operator :math:`\\mathbf{S}` of :func:`freedom_item_graph` on ``data``'s kNN
        neighbour sets, built once per data object."""
        text = data[knn_edge_type('text')].edge_index
        image = data[knn_edge_type('image')].edge_index
        num_items = data['item'].num_nodes

        def build() -> Adjacency:
            edge_index, edge_weight = freedom_item_graph(text, image, num_items,
                                                         self.config.image_weight)
            return self.propagation.adjacency(edge_index, edge_weight, (num_items, num_items))

        return self.graph_cache.get(f'freedom_item_item:{num_items}', (text, image), build)

    def on_epoch_start(self, data: HeteroData, epoch: int, generator: torch.Generator) -> None:
        """Draws the epoch's pruned user-item graph (trainer hook; ``generator`` is the run's,
        so the draw is reproducible and resumable)."""
        if self.config.edge_dropout == 0:
            self.pruned_adj = None
            return
        store = data[USER_ITEM]
        num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
        kept, weight = prune_user_item_edges(store.edge_index, store.edge_weight, num_users,
                                             num_items, 1.0 - self.config.edge_dropout,
                                             generator)
        self.pruned_adj = user_item_adjacency(self.propagation, kept, weight, None, None,
                                              num_users, num_items)

    def forward(self, data: HeteroData) -> RecOutput:
        view = self.collaborative(data, self.pruned_adj if self.training else None)
        h = view.item_emb
        item_item = self.item_item_graph(data)
        for _ in range(self.config.n_mm_layers):
            h = item_item @ h
        return RecOutput(user=view.c_user, item=view.c_item + h, views={'C': view.c, 'H': h})

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """BPR on the final embeddings + ``reg_weight`` times the text and image BPR terms
        (``batch_size`` is not used: FREEDOM has no L2 term). The feature maps are applied to
        the batch's rows only (the same values as mapping the whole table, then indexing)."""
        u, p, n = self.batch_rows(out, users, pos, neg)
        bpr = self.bpr_loss(u, p, n)
        modal = out.user.new_zeros(())
        for m in FEATURE_MODALITIES:
            table = node_rows(self.features[m], data, 'item')
            fp, fn = self.feature_maps[m](rows(table, pos)), self.feature_maps[m](rows(table, neg))
            modal = modal + self.bpr_loss(u, fp, fn)
        modal = self.config.reg_weight * modal
        return bpr + modal, {'bpr': bpr.detach(), 'modal': modal.detach()}
