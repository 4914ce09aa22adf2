r"""DA-MRS (Xv et al., 2024) on LightGCN, as MMRec's ``DAMRS`` implements it (SPEC §10).

* Graphs, built once per data object (:mod:`anchorrec_pyg.data.denoised_graphs`, sparse):
  denoised image and text graphs :math:`G_v`, :math:`G_t` (pairs below either modality's mean
  cosine dropped, top :math:`\min(k, n_i)` binary edges) and the behaviour graph :math:`G_s`
  (each item's top-2 co-interacted items with at least 2 shared users, plus itself), all
  weighted :math:`1/\sqrt{r_i r_j}`. The features act only through these graphs.
* Forward: :math:`\mathbf{C}` = LightGCN mean; :math:`h_m = G_m^{n}\mathbf{E}_i` for
  :math:`m \in \{t, v, s\}`; users :math:`\mathbf{C}_u`, items
  :math:`\mathbf{C}_i + (h_t + h_v + h_s)/3`.
* Loss: :math:`\mathcal{L}_1 + \lambda_{nd}\,\mathrm{ND} + \lambda_{kl}\,\mathrm{KL}` with

  - :math:`\mathcal{L}_1` the BPR of the final embeddings weighted per triple
    (:class:`~anchorrec_pyg.losses.WeightedBPRLoss`) by the detached confidences of
    :func:`confidence_weights`, from :math:`s^\pm_m = \sigma(\mathbf{C}_u[u]\cdot
    \bar{h}_m[p / n])` (:math:`\bar{\cdot}` = L2-normalised);
  - ND the neighbour discrimination over the batch's distinct items
    (:class:`~anchorrec_pyg.nn.neighbour_discrimination.NeighbourDiscriminationLoss`);
  - KL the symmetric Bernoulli KL (:class:`~anchorrec_pyg.losses.SymmetricBernoulliKL`) between
    :math:`\sigma(\mathbf{C}_u[U_b]\,\bar{\mathbf{C}}_i[I_b]^\top)` and
    :math:`\sigma(\mathbf{C}_u[U_b]\,\overline{\mathrm{mean}_m h_m}[I_b]^\top)`
    (``|U_b| x |I_b|``, the batch's distinct users and items). No L2 term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.data.denoised_graphs import co_interaction_graph, denoised_modality_graphs
from anchorrec_pyg.errors import DataError
from anchorrec_pyg.losses import SymmetricBernoulliKL, WeightedBPRLoss
from anchorrec_pyg.models.base import ModelConfig, RecOutput, rows
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel
from anchorrec_pyg.nn.neighbour_discrimination import NeighbourDiscriminationLoss
from anchorrec_pyg.nn.propagation import Adjacency, propagate_many
from anchorrec_pyg.schema import USER_ITEM, feature_key

__all__ = ['DAMRS', 'confidence_weights']

FEATURE_MODALITIES = ('text', 'image')
VIEWS = ('h_text', 'h_image', 'h_behaviour')


def confidence_weights(pos_prob: Tensor, neg_prob: Tensor) -> tuple[Tensor, Tensor]:
    r"""DA-MRS's per-triple BPR weights from the views' probabilities (``[3, B]`` each).

    .. math::
        w^+ = \mathrm{clamp}\big(\bar{s}^+ e^{-2\,\mathrm{var}(s^+)}, 0, 1\big), \qquad
        w^- = \mathrm{clamp}\big(\max_m s^+_m - \bar{n}, 0, 1\big)\,[\bar{s}^+ < \bar{n}],

    :math:`\bar{s}^+`, :math:`\mathrm{var}` (unbiased) over the 3 views, :math:`\bar{n}` the mean
    of all ``3 B`` negative probabilities."""
    mean = pos_prob.mean(dim=0)
    pos_weight = (mean * torch.exp(-pos_prob.var(dim=0)).pow(2)).clamp(0, 1)
    neg_mean = neg_prob.mean()
    neg_weight = (pos_prob.max(dim=0).values - neg_mean).clamp(0, 1) * (mean < neg_mean)
    return pos_weight, neg_weight


class DAMRS(GraphRecModel):
    r"""DA-MRS on LightGCN (SPEC §10); see the module docstring. Views: ``'C'``, ``'h_text'``,
    ``'h_image'``, ``'h_behaviour'``; ``loss`` returns ``bpr``, ``nd`` and ``kl``."""

    description = ('DA-MRS: LightGCN plus denoised image/text and behaviour item graphs; '
                   'confidence-weighted BPR, neighbour discrimination, KL alignment')

    @dataclass
    class Config(GraphModelConfig):
        r"""DA-MRS hyper-parameters (MMRec's defaults; ``embedding_dim``, published 64, and
        ``propagation`` as :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_ui_layers: LightGCN layers (published 2).
            n_mm_layers: propagation steps on each item graph (grid {1, 2}, published 1).
            knn_k: most neighbours per item in the image and text graphs (grid {3, 5, 10, 15,
                20}, published 10).
            behaviour_k: co-interacted items kept per item in :math:`G_s` (published 2).
            behaviour_min_count: fewest shared users for a :math:`G_s` edge (published 2).
            neighbor_weight: :math:`\lambda_{nd}` (published 1e-3).
            kl_weight: :math:`\lambda_{kl}` (published 1).
            nd_neighbours: :math:`k` of the pseudo-positive sets (published 10).
            nd_temperature: :math:`\tau` of the neighbour discrimination (published 0.2).
            nd_eps: :math:`\epsilon` inside its logs (published 1e-9).
            memory_mb: working memory of one block of the graph build and of one chunk of the
                ``|I_b| x I`` neighbour-discrimination rows (speed/memory only).
        """

        n_ui_layers: int = 2
        n_mm_layers: int = 1
        knn_k: int = 10
        behaviour_k: int = 2
        behaviour_min_count: int = 2
        neighbor_weight: float = 1e-3
        kl_weight: float = 1.0
        nd_neighbours: int = 10
        nd_temperature: float = 0.2
        nd_eps: float = 1e-9
        memory_mb: int = 256

        def validate(self) -> None:
            for key in ('knn_k', 'behaviour_k', 'nd_neighbours', 'memory_mb'):
                self.require(getattr(self, key) > 0, key, 'must be > 0')
            self.require_nonnegative('n_mm_layers', 'behaviour_min_count', 'neighbor_weight',
                                     'kl_weight', 'nd_eps')
            self.require(self.nd_temperature > 0, 'nd_temperature', 'must be > 0')

    sampled_refusal = ('DA-MRS normalises its neighbour discrimination over every item (softmax '
                       'and sums over all I item views)')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return FEATURE_MODALITIES

    def __init__(self, data: HeteroData, config: DAMRS.Config | None = None) -> None:
        super().__init__(data, config)
        cfg = self.config
        if self.num_items < cfg.nd_neighbours:
            raise DataError(f'DA-MRS needs at least model.nd_neighbours = {cfg.nd_neighbours} '
                            f'items, the dataset has {self.num_items}')
        self.weighted_bpr = WeightedBPRLoss()
        self.kl = SymmetricBernoulliKL()
        self.nd = NeighbourDiscriminationLoss(cfg.nd_neighbours, cfg.nd_temperature, cfg.nd_eps,
                                              cfg.memory_mb * 2**20)
        self.reset_parameters()

    def item_graphs(self, data: HeteroData) -> list[Adjacency]:
        """``[G_t, G_v, G_s]`` of ``data`` as operators, built once per data object."""
        cfg, store = self.config, data['item']
        num_items = store.num_nodes
        ui = data[USER_ITEM]

        def modality_graphs() -> dict[str, Adjacency]:
            graphs = denoised_modality_graphs(store[feature_key('image')],
                                              store[feature_key('text')], cfg.knn_k,
                                              cfg.memory_mb * 2**20)
            return {m: self.propagation.adjacency(*graphs[m], (num_items, num_items))
                    for m in graphs}

        def behaviour_graph() -> Adjacency:
            edges = co_interaction_graph(ui.edge_index, data['user'].num_nodes, num_items,
                                         cfg.behaviour_min_count, cfg.behaviour_k)
            return self.propagation.adjacency(*edges, (num_items, num_items))

        modal = self.graph_cache.get(f'damrs_modal:{cfg.knn_k}',
                                     (store[feature_key('image')], store[feature_key('text')]),
                                     modality_graphs)
        behaviour = self.graph_cache.get(
            f'damrs_behaviour:{cfg.behaviour_min_count}:{cfg.behaviour_k}', (ui.edge_index, ),
            behaviour_graph)
        return [modal['text'], modal['image'], behaviour]

    def forward(self, data: HeteroData) -> RecOutput:
        view = self.collaborative(data)
        adjs = self.item_graphs(data)
        hs = [view.item_emb] * 3
        for _ in range(self.config.n_mm_layers):
            hs = propagate_many(adjs, hs)
        item = view.c_item + (hs[0] + hs[1] + hs[2]) / 3
        return RecOutput(user=view.c_user, item=item, views={'C': view.c, **dict(zip(VIEWS, hs))})

    def alignment(self, out: RecOutput, views: list[Tensor], users: Tensor,
                  items: Tensor) -> Tensor:
        """The unweighted KL term over the batch's distinct ``users`` and ``items``."""
        batch_users = rows(out.user, torch.unique(users))
        c_items = rows(out.views['C'][out.user.size(0):], items)
        modal = sum(rows(h, items) for h in views) / 3
        return self.kl(batch_users @ F.normalize(c_items, dim=-1).T,
                       batch_users @ F.normalize(modal, dim=-1).T)

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted BPR + ``neighbor_weight`` ND + ``kl_weight`` KL (``batch_size`` is not used:
        DA-MRS has no L2 term); a term whose weight is 0 is not computed."""
        cfg = self.config
        views = [out.views[v] for v in VIEWS]
        u = rows(out.user, users)
        with torch.no_grad():
            probs = [torch.stack([torch.sigmoid((u * F.normalize(rows(h, i), dim=-1)).sum(-1))
                                  for h in views]) for i in (pos, neg)]
            pos_weight, neg_weight = confidence_weights(*probs)
        p, n = rows(out.item, pos), rows(out.item, neg)
        bpr = self.weighted_bpr((u * p).sum(-1), (u * n).sum(-1), pos_weight, neg_weight)
        items = torch.unique(torch.cat([pos, neg]))
        zero = bpr.new_zeros(())
        nd = cfg.neighbor_weight * self.nd(views, items) if cfg.neighbor_weight > 0 else zero
        kl = (cfg.kl_weight * self.alignment(out, views, users, items) if cfg.kl_weight > 0
              else zero)
        return bpr + nd + kl, {'bpr': bpr.detach(), 'nd': nd.detach(), 'kl': kl.detach()}
