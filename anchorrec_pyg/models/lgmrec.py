r"""LGMRec (Guo et al., AAAI 2024): local and global graph learning, as MMRec implements it
(SPEC §10).

For the modalities :math:`m \in \{v, t\}` (image, text) with fixed raw features
:math:`\mathbf{F}_m`, :math:`\hat{\mathbf{A}}` the SPEC §2 user-item graph,
:math:`\mathbf{R}_{01}` the 0/1 training matrix (``U x I``, sparse) and
:math:`\bar{\mathbf{R}} = \mathrm{diag}(1/(\deg_u + 10^{-7}))\,\mathbf{R}_{01}`:

* collaborative view :math:`\mathbf{C}` = LightGCN mean (``n_ui_layers``);
* local views :math:`\mathbf{Y}_m = \hat{\mathbf{A}}^{n}[\bar{\mathbf{R}}\mathbf{X}_m;
  \mathbf{X}_m]` with :math:`\mathbf{X}_m = \mathbf{F}_m\mathbf{W}_m` (``n_mm_layers``, last
  layer only);
* global view: hyperedge logits :math:`\mathbf{L}_i = \mathbf{F}_m\mathbf{W}^{hyp}_m`,
  :math:`\mathbf{L}_u = \mathbf{R}_{01}\mathbf{L}_i`, soft Gumbel memberships
  :math:`\mathbf{H}_i, \mathbf{H}_u` (:func:`~anchorrec_pyg.nn.hypergraph.soft_membership`,
  recomputed every forward), dropout :math:`1 - \text{keep\_rate}` in training, and
  :class:`~anchorrec_pyg.nn.hypergraph.HypergraphPropagation` from :math:`\mathbf{C}`'s item
  rows gives :math:`\mathbf{E}^m_u, \mathbf{E}^m_i`;
  :math:`\mathbf{G} = [\mathbf{E}^v_u; \mathbf{E}^v_i] + [\mathbf{E}^t_u; \mathbf{E}^t_i]`;
* :math:`\mathbf{Z} = \mathbf{C} + \bar{\mathbf{Y}}_v + \bar{\mathbf{Y}}_t + \alpha\,
  \bar{\mathbf{G}}` (:math:`\bar{\cdot}` row-wise L2 normalisation);
* loss :math:`\mathrm{BPR} + \lambda_{cl}[\mathrm{NCE}(\mathbf{E}^v_u[u], \mathbf{E}^t_u)
  + \mathrm{NCE}(\mathbf{E}^v_i[p], \mathbf{E}^t_i)] + \lambda_{reg}(\|\mathbf{u}\|_F +
  \|\mathbf{p}\|_F + \|\mathbf{n}\|_F)/n`, the NCE over all users (items) and summed over the
  batch (:class:`~anchorrec_pyg.losses.CandidateNCE`), the norms not squared
  (:class:`~anchorrec_pyg.losses.EmbLoss`, :math:`n` the batch's rows, as MMRec).

The published code also draws the Gumbel noise at evaluation, so its scores are random; here
evaluation uses the noise-free :math:`\mathrm{softmax}(\mathbf{L}/\tau)` unless
``gumbel_noise_at_eval``. :math:`\hat{\mathbf{A}}` takes the data's SPEC §2 weights; MMRec's
:math:`\deg + 10^{-7}` there moves a weight by at most one float32 rounding step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import degree

from anchorrec_pyg.losses import CandidateNCE, EmbLoss
from anchorrec_pyg.models.base import ModelConfig, RecOutput, rows
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel
from anchorrec_pyg.nn.hypergraph import HypergraphPropagation, soft_membership
from anchorrec_pyg.nn.propagation import Adjacency
from anchorrec_pyg.schema import USER_ITEM, feature_key

__all__ = ['LGMRec']

FEATURE_MODALITIES = ('image', 'text')
DEGREE_EPS = 1e-7
r"""Added to the user degrees of :math:`\bar{\mathbf{R}}` (MMRec's guard against zero degrees)."""


class LGMRec(GraphRecModel):
    r"""LGMRec (SPEC §10) on the image and text tables of Contract 1 (module docstring).

    Views: ``'C'``, ``'Y_image'``, ``'Y_text'``, ``'G'`` (``[U+I, d]``) and the hypergraph
    embeddings ``'hyper_user_<m>'`` (``[U, d]``), ``'hyper_item_<m>'`` (``[I, d]``).
    ``loss`` returns ``bpr``, ``cl`` and ``reg`` (weighted).
    """

    description = ('LGMRec: LightGCN ID view plus local modality views on the user-item graph '
                   'and a global Gumbel-softmax hypergraph view; hypergraph NCE over all nodes')
    sampled_refusal = ('its contrastive terms take every user and every item as negatives, '
                       'which a sampled subgraph does not hold')

    @dataclass
    class Config(GraphModelConfig):
        r"""LGMRec hyper-parameters (MMRec's Baby values; Sports: keep_rate 0.4, alpha 0.6;
        ``embedding_dim``, 64, is also the width of :math:`\mathbf{W}_m`'s outputs;
        ``propagation`` as :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_ui_layers: LightGCN layers of :math:`\mathbf{C}` (2).
            n_mm_layers: propagation steps of the local views (2).
            n_hyper_layers: hypergraph rounds (1).
            hyper_num: :math:`H`, hyperedges per modality (4).
            keep_rate: dropout keeps this fraction of the memberships in training (0.5).
            alpha: weight of the global view (0.3).
            cl_weight: :math:`\lambda_{cl}` of the hypergraph NCE (1e-4).
            reg_weight: :math:`\lambda_{reg}` of the (not squared) embedding norms (1e-6).
            gumbel_tau: temperature of the Gumbel-softmax memberships (0.2).
            cl_tau: temperature of the NCE (0.2).
            gumbel_noise_at_eval: draw the Gumbel noise at evaluation too, as the published
                code does (random test scores); off: noise-free memberships at evaluation.
        """

        n_ui_layers: int = 2
        n_mm_layers: int = 2
        n_hyper_layers: int = 1
        hyper_num: int = 4
        keep_rate: float = 0.5
        alpha: float = 0.3
        cl_weight: float = 1e-4
        reg_weight: float = 1e-6
        gumbel_tau: float = 0.2
        cl_tau: float = 0.2
        gumbel_noise_at_eval: bool = False

        def validate(self) -> None:
            self.require(self.n_mm_layers >= 0, 'n_mm_layers', 'must be >= 0')
            self.require(self.n_hyper_layers >= 1, 'n_hyper_layers', 'must be >= 1')
            self.require(self.hyper_num >= 1, 'hyper_num', 'must be >= 1')
            self.require(0 < self.keep_rate <= 1, 'keep_rate', 'must be in (0, 1]')
            for key in ('alpha', 'cl_weight', 'reg_weight'):
                self.require(getattr(self, key) >= 0, key, 'must be >= 0')
            for key in ('gumbel_tau', 'cl_tau'):
                self.require(getattr(self, key) > 0, key, 'must be > 0')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return FEATURE_MODALITIES

    def __init__(self, data: HeteroData, config: LGMRec.Config | None = None) -> None:
        super().__init__(data, config)
        cfg = self.config
        dims = {m: data['item'][feature_key(m)].size(1) for m in FEATURE_MODALITIES}
        self.feature_maps = torch.nn.ParameterDict({
            m: torch.nn.Parameter(torch.empty(dims[m], cfg.embedding_dim))
            for m in FEATURE_MODALITIES
        })
        self.hyper_maps = torch.nn.ParameterDict({
            m: torch.nn.Parameter(torch.empty(dims[m], cfg.hyper_num))
            for m in FEATURE_MODALITIES
        })
        self.hypergraph = HypergraphPropagation(cfg.n_hyper_layers)
        self.dropout = torch.nn.Dropout(1.0 - cfg.keep_rate)
        self.nce = CandidateNCE(cfg.cl_tau)
        self.reg = EmbLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Xavier-uniform ID tables, :math:`\mathbf{W}_m` and :math:`\mathbf{W}^{hyp}_m`."""
        super().reset_parameters()
        for weight in (*self.feature_maps.values(), *self.hyper_maps.values()):
            torch.nn.init.xavier_uniform_(weight)

    def interaction_operators(self, data: HeteroData) -> tuple[Adjacency, Adjacency]:
        r"""``(R01, Rmean)``: the 0/1 training matrix and its rows divided by
        :math:`\deg_u + 10^{-7}` (``U x I`` sparse operators, built once per data object)."""
        edge_index = data[USER_ITEM].edge_index
        num_users, num_items = data['user'].num_nodes, data['item'].num_nodes

        def build() -> tuple[Adjacency, Adjacency]:
            item_to_user = edge_index.flip(0)
            ones = torch.ones(edge_index.size(1), device=edge_index.device)
            inv_degree = (1.0 / (degree(edge_index[0], num_users, dtype=torch.float64)
                                 + DEGREE_EPS)).float()
            size = (num_items, num_users)
            return (self.propagation.adjacency(item_to_user, ones, size),
                    self.propagation.adjacency(item_to_user, inv_degree[edge_index[0]], size))

        return self.graph_cache.get(f'lgmrec_r01:{num_users}:{num_items}', (edge_index, ), build)

    def forward(self, data: HeteroData) -> RecOutput:
        cfg = self.config
        view = self.collaborative(data)
        c, adj = view.c, view.graph.adj
        r01, rmean = self.interaction_operators(data)
        noise = self.training or cfg.gumbel_noise_at_eval
        feats, memberships = {}, {}
        for m in FEATURE_MODALITIES:
            feats[m] = data['item'][feature_key(m)].to(c.dtype)
            item_logits = feats[m] @ self.hyper_maps[m]
            memberships[m] = (soft_membership(item_logits, cfg.gumbel_tau, noise),
                              soft_membership(r01 @ item_logits, cfg.gumbel_tau, noise))
        views = {'C': c}
        for m in FEATURE_MODALITIES:
            x = feats[m] @ self.feature_maps[m]
            y = torch.cat([rmean @ x, x])
            for _ in range(cfg.n_mm_layers):
                y = adj @ y
            views[f'Y_{m}'] = y
        for m in FEATURE_MODALITIES:
            item_member, user_member = memberships[m]
            views[f'hyper_user_{m}'], views[f'hyper_item_{m}'] = self.hypergraph(
                self.dropout(item_member), self.dropout(user_member), view.c_item)
        g = sum(torch.cat([views[f'hyper_user_{m}'], views[f'hyper_item_{m}']])
                for m in FEATURE_MODALITIES)
        views['G'] = g
        z = (c + F.normalize(views['Y_image']) + F.normalize(views['Y_text'])
             + cfg.alpha * F.normalize(g))
        return RecOutput(user=z[:view.num_users], item=z[view.num_users:], views=views)

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """BPR + ``cl_weight`` times the two summed NCE terms + ``reg_weight * EmbLoss(u, p, n)``
        (``batch_size`` is not used: ``EmbLoss`` divides by the batch's rows, as MMRec's)."""
        u, p, n = self.batch_rows(out, users, pos, neg)
        bpr = self.bpr_loss(u, p, n)
        v = out.views
        cl = self.config.cl_weight * (
            self.nce(rows(v['hyper_user_image'], users), v['hyper_user_text'], users)
            + self.nce(rows(v['hyper_item_image'], pos), v['hyper_item_text'], pos))
        reg = self.config.reg_weight * self.reg(u, p, n)
        return bpr + cl + reg, {'bpr': bpr.detach(), 'cl': cl.detach(), 'reg': reg.detach()}
