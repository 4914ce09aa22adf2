r"""AlignRec's recommendation stage (SPEC §7), AnchorRec's predecessor.

AlignRec is AnchorRec's ID view plus *one* modality view, on one fused multimodal feature table
:math:`\mathbf{F}` (``data['item'].x_mm``, the BEiT-3 ``<name>_beit3/image_feat.npy``; without
it the data layer's ``mm_source: concat`` derives it) and its kNN graph
``('item', 'similar_mm', 'item')``. It is composed of the same building blocks as
:class:`~anchorrec_pyg.models.AnchorRec`:

* collaborative view :math:`\mathbf{C}`: :class:`~anchorrec_pyg.nn.LightGCNEncoder`;
* multimodal view: :class:`~anchorrec_pyg.nn.ModalityConv`,
  :math:`\mathbf{H} = \mathbf{A}^n(\mathbf{E}_i \odot \sigma(G(P(\mathbf{F}))))`, users
  :math:`\mathbf{R}\mathbf{H}` (``P`` and ``G`` with PyTorch's default ``Linear``
  initialisation, as published; ``F`` a trainable copy of the file's table);
* fusion :math:`\mathbf{Z} = \mathbf{C} + [\mathbf{R}\mathbf{H}; \mathbf{H}]`;
* loss, per batch, from :mod:`anchorrec_pyg.losses`:

  .. math::
      \mathcal{L} = \mathcal{L}_{BPR} + \lambda_{reg}\mathcal{L}_{L2}
      + w_{uia}\,\big(1 - \overline{\cos}(\mathbf{u}, \mathbf{p})\big)
      + w_{cl}\,\big[\mathrm{InfoNCE}_{\tau}(\mathbf{H}_p, \mathbf{C}_p)
      + \mathrm{InfoNCE}_{\tau}((\mathbf{R}\mathbf{H})_u, \mathbf{C}_u)\big]
      + w_{sim}\,\frac{1}{n}\|\mathbf{H}_p\mathbf{H}_p^\top - \mathbf{S}\|_F,

  with :math:`\mathbf{S}` the cosine similarities of the raw :math:`\mathbf{F}` rows of the
  positive items (the trainable copy's current values, without gradient, as the published
  code's shared storage gives; the file's rows with ``raw_from_files``) and
  :math:`\tau = 0.2`.

The upstream BEiT-3 pre-training that produces :math:`\mathbf{F}` is out of scope (SPEC §7).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import CosineDistanceLoss, InfoNCE, SimilarityPreservationLoss
from anchorrec_pyg.models.base import (
    ModelConfig,
    RecOutput,
    SampledView,
    node_rows,
    require_knn_graphs,
    rows,
    view_input_rows,
)
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel
from anchorrec_pyg.models.similarity import batch_similarity_target, cached_similarities
from anchorrec_pyg.nn.modality_conv import ModalityConv
from anchorrec_pyg.schema import feature_key

__all__ = ['AlignRec']

LOSS_TERMS = ('bpr', 'reg', 'uia', 'cca', 'sim')


class AlignRec(GraphRecModel):
    r"""AlignRec (SPEC §7) on the ``HeteroData`` of Contract 1 (needs ``x_mm`` and the
    ``similar_mm`` kNN graph).

    ``forward`` returns the final embeddings and the views ``'C'`` (``[U+I, d]``), ``'H_mm'``
    (items, ``[I, d]``) and ``'H_mm_user'`` (:math:`\mathbf{R}\mathbf{H}`, ``[U, d]``), named as
    AnchorRec's so that the analyses read both models alike. ``loss`` returns the total and the
    weighted terms ``bpr``, ``reg``, ``uia``, ``cca``, ``sim`` (a term whose weight is 0 is not
    computed and reported as 0).
    """

    description = ('AlignRec: LightGCN ID view plus one gated kNN view of the fused multimodal '
                   'features, with UIA, InfoNCE (CCA) and similarity-preservation losses')

    @dataclass
    class Config(GraphModelConfig):
        """AlignRec hyper-parameters and constants (defaults: the published implementation;
        ``embedding_dim``, published 64, and ``propagation`` as
        :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_ui_layers: LightGCN layers on the user-item graph (published 2).
            n_layers: kNN propagation steps of the multimodal view (published 1).
            reg_weight: weight of the embedding L2 term (published 1e-4).
            uia_weight: weight of the user-item alignment 1 - mean cos(u, p) (published 0.1).
            cl_weight: weight of the two InfoNCE terms, CCA (grid {1e-4, 1e-3, 5e-3, 0.01,
                0.1}).
            sim_weight: weight of the similarity-preservation term (grid {0.1, ..., 0.5}).
            tau: InfoNCE temperature (published, fixed: 0.2).
            freeze_features: keep the feature table fixed (published code trains a copy:
                ``False``).
            raw_from_files: the sim target reads the feature file's rows (the paper's
                reading); published (``False``): the trainable copy's current values.
            feature_layernorm: LayerNorm on the features before the projection (published off).
            similarity_cache_mb: memory (MiB) up to which the ``I x I`` raw cosine matrix
                behind the similarity target (packed lower triangle,
                :class:`~anchorrec_pyg.losses.PackedCosineSimilarity`) is computed once and
                cached (speed only; fixed rows only: ``raw_from_files`` or
                ``freeze_features``).
        """

        n_ui_layers: int = 2
        n_layers: int = 1
        reg_weight: float = 1e-4
        uia_weight: float = 0.1
        cl_weight: float = 0.01
        sim_weight: float = 0.1
        tau: float = 0.2
        freeze_features: bool = False
        raw_from_files: bool = False
        feature_layernorm: bool = False
        similarity_cache_mb: float = 256.0

        #: Run folders written before ``raw_from_files`` existed read the file rows.
        stored_defaults = {'raw_from_files': True}

        def validate(self) -> None:
            self.require(self.n_layers >= 1, 'n_layers', 'must be >= 1')
            self.require(self.tau > 0, 'tau', 'must be > 0')
            self.require_nonnegative('reg_weight', 'uia_weight', 'cl_weight', 'sim_weight',
                                     'similarity_cache_mb')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return ('mm', )

    def __init__(self, data: HeteroData, config: AlignRec.Config | None = None) -> None:
        super().__init__(data, config)
        cfg = self.config
        require_knn_graphs(data, ('mm', ), 'AlignRec')
        self.features = torch.nn.Parameter(data['item'][feature_key('mm')].detach().clone().float(),
                                           requires_grad=not cfg.freeze_features)
        self.modality_conv = ModalityConv(self.features.size(1), cfg.embedding_dim, cfg.n_layers,
                                          cfg.feature_layernorm)
        self.uia = CosineDistanceLoss()
        self.info_nce = InfoNCE(cfg.tau)
        self.sim = SimilarityPreservationLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.modality_conv.reset_parameters()

    @property
    def sampled_views(self) -> dict[str, SampledView]:
        """The mm view at the batch's users (``Z``'s user part, CCA), positives and negatives,
        with ``n_layers`` kNN steps."""
        return {'mm': SampledView(self.config.n_layers)}

    @property
    def sampled_features(self) -> tuple[str, ...]:
        """The file table the similarity target reads with ``raw_from_files``."""
        return ('mm', ) if self.config.raw_from_files else ()

    def forward(self, data: HeteroData) -> RecOutput:
        """On a sampled subgraph the gate is computed only for the items whose row the kNN
        propagation reads (:func:`~anchorrec_pyg.models.base.view_input_rows`)."""
        view = self.collaborative(data)
        inputs = view_input_rows(data, 'mm')
        h_items, h_users = self.modality_conv(view.item_emb,
                                              node_rows(self.features, data, 'item', inputs),
                                              self.item_graph(data, 'mm', self.propagation),
                                              view.graph.user_item, inputs)
        return RecOutput(user=view.c_user + h_users, item=view.c_item + h_items,
                         views={'C': view.c, 'H_mm': h_items, 'H_mm_user': h_users})

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r"""SPEC §7: BPR + L2 + UIA + CCA + similarity preservation.

        ``users``, ``pos``, ``neg`` index the rows of ``out.user`` / ``out.item``;
        ``batch_size`` is the configured B of the L2 term (``None``: ``len(users)``).
        """
        cfg = self.config
        u, p, n = self.batch_rows(out, users, pos, neg)
        terms = dict.fromkeys(LOSS_TERMS, out.user.new_zeros(()))
        terms['bpr'] = self.bpr_loss(u, p, n)
        terms['reg'] = cfg.reg_weight * self.l2_loss(u, p, n, batch_size)
        if cfg.uia_weight > 0:
            terms['uia'] = cfg.uia_weight * self.uia(u, p)
        h_items = out.views['H_mm']
        if cfg.cl_weight > 0:
            c = out.views['C']
            num_users = out.user.size(0)
            terms['cca'] = cfg.cl_weight * (
                self.info_nce(rows(h_items, pos), rows(c[num_users:], pos)) +
                self.info_nce(rows(out.views['H_mm_user'], users), rows(c[:num_users], users)))
        if cfg.sim_weight > 0:
            distinct, counts = torch.unique(pos, return_counts=True)
            cached = 'mm' in cached_similarities(
                data, ('mm', ), cfg.similarity_cache_mb,
                fixed_rows=cfg.raw_from_files or cfg.freeze_features)
            target = batch_similarity_target(self.graph_cache, 'similarity_mm', data,
                                             self.features, 'mm', cfg.raw_from_files, distinct,
                                             counts, cached, h_items.dtype)
            terms['sim'] = cfg.sim_weight * self.sim(rows(h_items, distinct), target)
        total = torch.stack(list(terms.values())).sum()
        return total, {key: value.detach() for key, value in terms.items()}
