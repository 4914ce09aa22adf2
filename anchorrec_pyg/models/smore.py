r"""SMORE (Ong & Khong, WSDM 2025): spectrum-based modality fusion, as MMRec implements it
(SPEC §10).

With trainable copies :math:`\mathbf{V}, \mathbf{T}` of the image and text tables:

* item graphs :math:`\mathbf{S}_v` = SPEC §2 kNN graph of the raw image rows with
  ``image_knn_k`` neighbours, :math:`\mathbf{S}_t` the same for text with ``text_knn_k``, and
  :math:`\mathbf{S}_f` = their union, each edge the larger of its two weights
  (:func:`~anchorrec_pyg.data.knn.max_union_graph`); built once per data object, sparse;
* spectral step (:class:`~anchorrec_pyg.nn.spectral.SpectralFusion`) on
  :math:`\mathbf{x}_v = \mathrm{Lin}(\mathbf{V})`, :math:`\mathbf{x}_t = \mathrm{Lin}(\mathbf{T})`
  gives :math:`\mathbf{c}_v, \mathbf{c}_t, \mathbf{c}_f`;
* views :math:`\mathbf{e}_m = \mathbf{E}_i \odot \sigma(\mathrm{Lin}(\mathbf{c}_m))`,
  :math:`\mathbf{h}_m = \mathbf{S}_m^{n}\mathbf{e}_m`,
  :math:`\mathbf{V}_m = [\mathbf{R}\mathbf{h}_m; \mathbf{h}_m]` (``R`` the SPEC §2 user-item
  block) for :math:`m \in \{v, t, f\}`;
* :math:`\mathbf{C}` = LightGCN mean (``n_ui_layers``); preference
  :math:`\mathbf{a}_m = \mathrm{softmax}_d(Q_m(\mathbf{V}_f))` for :math:`m \in \{v, t\}`
  (:math:`Q` = Lin, Tanh, Lin without bias),
  :math:`\mathbf{q}_m = \mathrm{dropout}(\sigma(\mathrm{Lin}(\mathbf{C})))`;
  :math:`\mathrm{Side} = \frac{1}{3}(\mathbf{q}_v\mathbf{a}_v\mathbf{V}_v +
  \mathbf{q}_t\mathbf{a}_t\mathbf{V}_t + \mathbf{q}_f\mathbf{V}_f)` (elementwise);
  :math:`\mathbf{Z} = \mathbf{C} + \mathrm{Side}`;
* loss :math:`\mathrm{BPR} + \lambda_{reg}\frac{1}{2B}(\|\mathbf{u}\|^2 + \|\mathbf{p}\|^2 +
  \|\mathbf{n}\|^2) + \lambda_{cl}[\mathrm{InfoNCE}(\mathrm{Side}_i[p], \mathbf{C}_i[p]) +
  \mathrm{InfoNCE}(\mathrm{Side}_u[u], \mathbf{C}_u[u])]` (in-batch, :math:`\tau = 0.2`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.data.knn import knn_graph_normalized, max_union_graph
from anchorrec_pyg.errors import DataError
from anchorrec_pyg.losses import InfoNCE
from anchorrec_pyg.models.base import ModelConfig, RecOutput, feature_copies, node_rows, rows
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel
from anchorrec_pyg.nn.propagation import Adjacency, propagate_many
from anchorrec_pyg.nn.spectral import SpectralFusion
from anchorrec_pyg.schema import feature_key

__all__ = ['SMORE']

FEATURE_MODALITIES = ('image', 'text')
VIEWS = ('image', 'text', 'fusion')


def _query(dim: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh(),
                               torch.nn.Linear(dim, dim, bias=False))


class SMORE(GraphRecModel):
    r"""SMORE (SPEC §10) on the image and text tables of Contract 1 (module docstring).

    Views: ``'C'``, ``'side'`` and ``'V_<m>'`` for ``m`` in image, text, fusion (``[U+I, d]``).
    ``loss`` returns ``bpr``, ``reg`` and ``cl`` (weighted).
    """

    description = ('SMORE: LightGCN ID view plus image, text and spectrally fused kNN views '
                   'with modality-aware preference gates; in-batch InfoNCE')
    sampled_refusal = ('its kNN graphs at image_knn_k / text_knn_k are built from the whole '
                       'item feature tables, which a sampled subgraph does not hold')

    @dataclass
    class Config(GraphModelConfig):
        r"""SMORE hyper-parameters (defaults: the authors' best on Baby; ``embedding_dim``,
        64, is also the width of the feature maps and the spectral filters; ``propagation`` as
        :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_ui_layers: LightGCN layers of :math:`\mathbf{C}` (grid {3, 4}; Baby 4).
            n_layers: propagation steps on the item graphs (1).
            image_knn_k: neighbours of :math:`\mathbf{S}_v` (grid {10, 15, 20, 40}; Baby 40).
            text_knn_k: neighbours of :math:`\mathbf{S}_t` (grid {10, 15, 20, 40}; Baby 15).
            reg_weight: weight of the squared L2 term (grid {1e-5, 1e-4}; Baby 1e-4).
            dropout: dropout of the preference gates (grid {0, 0.1}; Baby 0.1).
            cl_weight: weight of the InfoNCE terms (MMRec's ``cl_loss``, 0.01).
            cl_tau: InfoNCE temperature (0.2).
        """

        n_ui_layers: int = 4
        n_layers: int = 1
        image_knn_k: int = 40
        text_knn_k: int = 15
        reg_weight: float = 1e-4
        dropout: float = 0.1
        cl_weight: float = 0.01
        cl_tau: float = 0.2

        def validate(self) -> None:
            self.require(self.n_layers >= 0, 'n_layers', 'must be >= 0')
            self.require(self.image_knn_k >= 1, 'image_knn_k', 'must be >= 1')
            self.require(self.text_knn_k >= 1, 'text_knn_k', 'must be >= 1')
            self.require(self.reg_weight >= 0, 'reg_weight', 'must be >= 0')
            self.require(0 <= self.dropout < 1, 'dropout', 'must be in [0, 1)')
            self.require(self.cl_weight >= 0, 'cl_weight', 'must be >= 0')
            self.require(self.cl_tau > 0, 'cl_tau', 'must be > 0')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return FEATURE_MODALITIES

    def __init__(self, data: HeteroData, config: SMORE.Config | None = None) -> None:
        super().__init__(data, config)
        cfg = self.config
        for m in FEATURE_MODALITIES:
            k = getattr(cfg, f'{m}_knn_k')
            if k > self.num_items:
                raise DataError(f'model.{m}_knn_k = {k} exceeds the {self.num_items} items')
        d = cfg.embedding_dim
        self.features = feature_copies(data, FEATURE_MODALITIES)
        self.feature_maps = torch.nn.ModuleDict({
            m: torch.nn.Linear(self.features[m].size(1), d)
            for m in FEATURE_MODALITIES
        })
        self.spectral = SpectralFusion(d)
        self.gates = torch.nn.ModuleDict({m: torch.nn.Linear(d, d) for m in VIEWS})
        self.queries = torch.nn.ModuleDict({m: _query(d) for m in FEATURE_MODALITIES})
        self.preferences = torch.nn.ModuleDict({m: torch.nn.Linear(d, d) for m in VIEWS})
        self.dropout = torch.nn.Dropout(cfg.dropout)
        self.info_nce = InfoNCE(cfg.cl_tau)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ID tables; PyTorch's defaults elsewhere, N(0, 1) spectral filters."""
        super().reset_parameters()
        for module in (*self.feature_maps.values(), *self.gates.values(),
                       *self.preferences.values(), self.spectral):
            module.reset_parameters()
        for query in self.queries.values():
            query[0].reset_parameters()
            query[2].reset_parameters()

    def item_graphs(self, data: HeteroData) -> dict[str, Adjacency]:
        r"""The operators :math:`\mathbf{S}_v, \mathbf{S}_t, \mathbf{S}_f` of ``data``'s raw
        image and text rows (exact chunked cosine kNN, SPEC §2 weights), built once per data
        object."""
        tables = tuple(data['item'][feature_key(m)] for m in FEATURE_MODALITIES)
        ks = tuple(getattr(self.config, f'{m}_knn_k') for m in FEATURE_MODALITIES)
        num_items = data['item'].num_nodes

        def build() -> dict[str, Adjacency]:
            edges = [knn_graph_normalized(table, k) for table, k in zip(tables, ks)]
            edges.append(max_union_graph(edges, num_items))
            size = (num_items, num_items)
            return {m: self.propagation.adjacency(index, weight, size)
                    for m, (index, weight) in zip(VIEWS, edges)}

        return self.graph_cache.get(f'smore_items:{num_items}:{ks}', tables, build)

    def forward(self, data: HeteroData) -> RecOutput:
        view = self.collaborative(data)
        item_graphs = self.item_graphs(data)
        projected = [self.feature_maps[m](node_rows(self.features[m], data, 'item'))
                     for m in FEATURE_MODALITIES]
        filtered = self.spectral(*projected)
        h = [view.item_emb * torch.sigmoid(self.gates[m](c)) for m, c in zip(VIEWS, filtered)]
        adjs = [item_graphs[m] for m in VIEWS]
        for _ in range(self.config.n_layers):
            h = propagate_many(adjs, h)
        views = {f'V_{m}': torch.cat([view.graph.user_item @ hm, hm]) for m, hm in zip(VIEWS, h)}
        c = view.c
        fused = views['V_fusion']
        preference = {m: self.dropout(torch.sigmoid(self.preferences[m](c))) for m in VIEWS}
        side = (preference['image'] * torch.softmax(self.queries['image'](fused), -1)
                * views['V_image']
                + preference['text'] * torch.softmax(self.queries['text'](fused), -1)
                * views['V_text']
                + preference['fusion'] * fused) / 3
        z = c + side
        views.update(C=c, side=side)
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
        """BPR + ``reg_weight`` times the L2 term (divided by the configured ``batch_size``) +
        ``cl_weight`` times the item and user InfoNCE between ``Side`` and ``C``."""
        u, p, n = self.batch_rows(out, users, pos, neg)
        bpr = self.bpr_loss(u, p, n)
        reg = self.config.reg_weight * self.l2_loss(u, p, n, batch_size)
        num_users = out.user.size(0)
        side, c = out.views['side'], out.views['C']
        cl = self.config.cl_weight * (
            self.info_nce(rows(side, pos + num_users), rows(c, pos + num_users))
            + self.info_nce(rows(side, users), rows(c, users)))
        return bpr + reg + cl, {'bpr': bpr.detach(), 'reg': reg.detach(), 'cl': cl.detach()}
