r"""AnchorRec: anchored alignment for multimodal recommendation (SPEC §2-§4).

The model composes the package's building blocks, one per paper component:

* collaborative view :math:`\mathbf{C}`: :class:`~anchorrec_pyg.nn.LightGCNEncoder` on the
  user-item graph (``n_ui_layers`` layers, layer mean);
* modality views :math:`\mathbf{H}_m` for :math:`m \in \{mm, text, image\}`:
  :class:`~anchorrec_pyg.nn.ModalityConv` (gated item view, ``n_layers`` kNN steps, users
  :math:`\mathbf{R}\mathbf{H}_m`);
* projection domain and anchor correction: :class:`~anchorrec_pyg.nn.ProjectionDomain`;
* fusion (SPEC §3.4)

  .. math::
      \mathbf{Z} = \mathbf{C} + [\mathbf{R}\mathbf{H}_{mm}; \mathbf{H}_{mm}]
      + [\mathbf{R}\mathbf{H}_{text}; \mathbf{H}_{text}]
      \;(+ [\mathbf{R}\mathbf{H}_{image}; \mathbf{H}_{image}]
      \text{ with } \texttt{fuse\_image\_view}),

  :math:`\mathbf{Z}_u = \mathbf{Z}_{:U}`, :math:`\mathbf{Z}_i = \mathbf{Z}_{U:} + \beta
  D_{mm}(W_{mm}(\mathbf{H}_{mm}))`;
* the loss of SPEC §4 from :mod:`anchorrec_pyg.losses`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import AALLoss, AMPLoss, CosineMarginLoss, GraphSmoothnessLoss
from anchorrec_pyg.models.base import (
    ModelConfig,
    RecOutput,
    SampledView,
    exact_view_items,
    feature_copies,
    node_rows,
    require_knn_graphs,
    rows,
    view_input_rows,
)
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel
from anchorrec_pyg.models.similarity import (
    batch_similarity_target,
    cached_similarities,
    raw_rows,
)
from anchorrec_pyg.nn.modality_conv import ModalityConv, propagate_item_views
from anchorrec_pyg.nn.projection import ProjectionDomain
from anchorrec_pyg.schema import MODALITIES, knn_edge_type

__all__ = ['AnchorRec']

LOSS_TERMS = ('bpr', 'reg', 'cm', 'aal', 'amp', 'smooth')


class AnchorRec(GraphRecModel):
    r"""AnchorRec (SPEC §2-§4) on the ``HeteroData`` of Contract 1.

    Parameters: ID tables ``Eu``, ``Ei`` (Xavier-uniform), trainable copies of the three raw
    feature tables (``features``; frozen with ``freeze_features``), one
    :class:`~anchorrec_pyg.nn.ModalityConv` per modality (``P_m``, ``G_m``: PyTorch's default
    ``Linear`` initialisation, as published) and the
    :class:`~anchorrec_pyg.nn.ProjectionDomain` heads (Xavier-uniform weights; SPEC §3).

    ``forward`` returns the final embeddings and the views ``'C'`` (``[U+I, d]``), ``'H_mm'``,
    ``'H_text'``, ``'H_image'`` (items, ``[I, d]``), ``'H_mm_user'``, ``'H_text_user'``,
    ``'H_image_user'`` (:math:`\mathbf{R}\mathbf{H}_m`, ``[U, d]``), ``'h_mm'`` (the projected
    anchor :math:`W_{mm}(\mathbf{H}_{mm})`) and ``'c'`` (the anchor correction). The other
    projection-domain views are computed on demand by :meth:`project` (only the rows asked for).

    ``loss`` returns the total of SPEC §4 and its weighted terms ``bpr``, ``reg``, ``cm``,
    ``aal``, ``amp``, ``smooth``; a term whose weight is 0 is not computed (reported as 0).
    The raw feature rows used by AAL's mixture and AMP's targets are the trainable copies'
    current values, read without gradient (the published code's shared storage); with
    ``raw_from_files`` the file rows in ``data`` (the paper's reading).
    """

    description = ('AnchorRec: LightGCN ID view plus gated mm/text/image kNN views, aligned '
                   'through a multimodal anchor in a projection domain (AAL + AMP)')

    @dataclass
    class Config(GraphModelConfig):
        """AnchorRec hyper-parameters and constants (defaults: the published implementation;
        ``embedding_dim``, published 64, and ``propagation`` as
        :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_ui_layers: LightGCN layers on the user-item graph (published 2).
            n_layers: kNN propagation steps of the modality views (grid {1, 2, 3}).
            lambda_reg: weight of the embedding L2 term (published ``lambda_weight``, grid
                {0.001, 0.01, 0.1}).
            aal_weight: lambda_1, weight of AAL (grid {0, 1e-4, 1e-3, 1e-2, 0.1, 1}).
            amp_weight: lambda_2, weight of AMP (same grid).
            tau: InfoNCE temperature of AAL (grid {0.05, 0.1, 0.25, 0.5, 1}).
            cm_enabled: use the user-item cosine margin term (published on).
            cm_weight: its weight (published 0.01).
            cm_margin: its margin (published 0.2).
            mix_image: weight of ``Wv(image)`` in the AAL mixture (published 0.25).
            mix_text: weight of ``Wt(text)`` in the AAL mixture (published 0.75).
            amp_mm: AMP weight of the mm view's similarity term (published 1).
            amp_text: AMP weight of the text view's term (published 0.03).
            amp_image: AMP weight of the image view's term (published 0.01).
            smooth_weight: weight of the mm kNN graph smoothness (published 0.1).
            recover_lambda: beta, weight of the anchor correction in the items (published
                0.0005).
            freeze_features: keep the feature tables fixed, as the paper states (published code
                trains them: ``False``).
            raw_from_files: AAL's mixture and AMP's targets read the feature files' rows, as the
                paper states; published (``False``): the trainable copies' current values
                (they share storage with the tables they were made from), without gradient.
            fuse_image_view: add the image view to the final embeddings, as the paper states
                (published code leaves it out: ``False``).
            feature_layernorm: LayerNorm on each feature table before its projection (published
                ``use_ln``, off).
            similarity_cache_mb: memory budget (MiB, all modalities together) for caching the
                ``I x I`` raw cosine-similarity matrices behind AMP's targets (packed lower
                triangles, :class:`~anchorrec_pyg.losses.PackedCosineSimilarity`) instead of
                computing each batch's block (widest feature table first, see
                :func:`~anchorrec_pyg.models.similarity.cached_similarities`); trades
                memory for recomputation, the targets are the same (0: compute every block).
                Only fixed rows are cached (``raw_from_files`` or ``freeze_features``): trained
                copies change every step. The default fits Baby's image table (99 MB).
            feature_grad_buffer: compute the gradients of the trainable feature tables into
                buffers kept between steps (:mod:`anchorrec_pyg.nn.feature_grad`): the same
                values without allocating (and page-faulting) the ``I x f`` gradients every
                step; a table's gradient tensor is overwritten by the next backward pass.
                Full mode; in sampled mode the trainer writes every node table's gradient (the
                subgraph's rows) into kept buffers (``row_gradient_buffers``), whatever this key.
        """

        n_ui_layers: int = 2
        n_layers: int = 1
        lambda_reg: float = 0.001
        aal_weight: float = 0.01
        amp_weight: float = 0.01
        tau: float = 0.25
        cm_enabled: bool = True
        cm_weight: float = 0.01
        cm_margin: float = 0.2
        mix_image: float = 0.25
        mix_text: float = 0.75
        amp_mm: float = 1.0
        amp_text: float = 0.03
        amp_image: float = 0.01
        smooth_weight: float = 0.1
        recover_lambda: float = 0.0005
        freeze_features: bool = False
        raw_from_files: bool = False
        fuse_image_view: bool = False
        feature_layernorm: bool = False
        similarity_cache_mb: float = 128.0
        feature_grad_buffer: bool = True

        #: Run folders written before ``raw_from_files`` existed read the file rows.
        stored_defaults = {'raw_from_files': True}

        def validate(self) -> None:
            self.require(self.n_layers >= 1, 'n_layers', 'must be >= 1')
            self.require(self.tau > 0, 'tau', 'must be > 0')
            self.require_nonnegative('lambda_reg', 'aal_weight', 'amp_weight', 'cm_weight',
                                     'mix_image', 'mix_text', 'amp_mm', 'amp_text', 'amp_image',
                                     'smooth_weight', 'recover_lambda', 'similarity_cache_mb')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return MODALITIES

    def __init__(self, data: HeteroData, config: AnchorRec.Config | None = None) -> None:
        super().__init__(data, config)
        cfg = self.config
        require_knn_graphs(data, MODALITIES, 'AnchorRec')
        d = cfg.embedding_dim
        self.features = feature_copies(data, MODALITIES, trainable=not cfg.freeze_features)
        self.modality_convs = torch.nn.ModuleDict({
            m: ModalityConv(self.features[m].size(1), d, cfg.n_layers, cfg.feature_layernorm,
                            cfg.feature_grad_buffer)
            for m in MODALITIES
        })
        self.projection = ProjectionDomain(d, self.features['text'].size(1),
                                           self.features['image'].size(1), cfg.mix_text,
                                           cfg.mix_image)
        self.cosine_margin = CosineMarginLoss(cfg.cm_margin)
        self.aal = AALLoss(cfg.tau)
        self.amp = AMPLoss({'mm': cfg.amp_mm, 'text': cfg.amp_text, 'image': cfg.amp_image})
        self.smoothness = GraphSmoothnessLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for conv in self.modality_convs.values():
            conv.reset_parameters()
        self.projection.reset_parameters()

    @property
    def fused_modalities(self) -> tuple[str, ...]:
        """The modality views added to the final embeddings (SPEC §3.4)."""
        return MODALITIES if self.config.fuse_image_view else ('mm', 'text')

    @property
    def sampled_views(self) -> dict[str, SampledView]:
        r"""The views the losses read on a sampled subgraph: every fused view (mm, text; image
        with ``fuse_image_view``) at the batch's users, positives and negatives (the final
        embeddings; the anchor correction, AAL's ``h_mm`` and the smoothness read ``H_mm`` there
        too); the image view, when not fused, at the positives only (AMP), and not at all without
        AMP. Each with ``n_layers`` kNN steps."""
        cfg = self.config
        views = {m: SampledView(cfg.n_layers) for m in self.fused_modalities}
        if 'image' not in views and cfg.amp_weight > 0:
            views['image'] = SampledView(cfg.n_layers, users=False, negatives=False)
        return views

    @property
    def sampled_features(self) -> tuple[str, ...]:
        """The file tables AAL's mixture and AMP's targets read with ``raw_from_files``."""
        return MODALITIES if self.config.raw_from_files else ()

    def forward(self, data: HeteroData) -> RecOutput:
        r"""On a sampled subgraph the gate :math:`\mathbf{X}_m` is computed only for the items
        whose row the kNN propagation reads (:func:`~anchorrec_pyg.models.base.view_input_rows`:
        the sources of the subgraph's ``m`` kNN edges); the views are exact where
        :attr:`sampled_views` asks for them and not meaningful elsewhere."""
        cfg = self.config
        view = self.collaborative(data)
        gated = []
        for m in MODALITIES:
            inputs = view_input_rows(data, m)
            gated.append(self.modality_convs[m].gated(
                view.item_emb, node_rows(self.features[m], data, 'item', inputs), inputs))
        item_adjs = [self.item_graph(data, m, self.propagation) for m in MODALITIES]
        items, users = propagate_item_views(gated, item_adjs, view.graph.user_item, cfg.n_layers)
        h_items = dict(zip(MODALITIES, items))
        h_users = dict(zip(MODALITIES, users))

        anchor = self.projection.project_anchor(h_items['mm'])
        correction = self.projection.anchor_correction(anchor)

        z_user = view.c_user + sum(h_users[m] for m in self.fused_modalities)
        z_item = (view.c_item + sum(h_items[m] for m in self.fused_modalities) +
                  cfg.recover_lambda * correction)

        views = {'C': view.c}
        views.update({f'H_{m}': h_items[m] for m in MODALITIES})
        views.update({f'H_{m}_user': h_users[m] for m in MODALITIES})
        views['h_mm'] = anchor
        views['c'] = correction
        return RecOutput(user=z_user, item=z_item, views=views)

    def project(self, data: HeteroData, out: RecOutput,
                items: Tensor | None = None) -> dict[str, Tensor]:
        r"""Projection-domain views of ``items`` (all items when ``None``): AAL's inputs and the
        analyses' spaces.

        Returns ``'h_id'`` (:math:`W_{id}(\mathbf{C}_{items})`), ``'h_mm'``
        (:math:`W_{mm}(\mathbf{H}_{mm})`), ``'h_text'`` (:math:`W_t` of the raw text rows),
        ``'h_image'`` (:math:`W_v` of the raw image rows) and ``'h_mix'`` (their AAL mixture);
        raw rows as the class docstring says (no gradient into the feature copies).
        """
        num_users = out.user.size(0)
        c_items = out.views['C'][num_users:]
        anchor = out.views['h_mm']
        if items is not None:
            c_items, anchor = rows(c_items, items), rows(anchor, items)
        text, image = (raw_rows(data, self.features[m].detach(), m, self.config.raw_from_files,
                                items)
                       for m in ('text', 'image'))
        h_text = self.projection.project_text(text.to(c_items.dtype))
        h_image = self.projection.project_image(image.to(c_items.dtype))
        return {
            'h_id': self.projection.project_id(c_items),
            'h_mm': anchor,
            'h_text': h_text,
            'h_image': h_image,
            'h_mix': self.projection.mix_image * h_image + self.projection.mix_text * h_text,
        }

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r"""SPEC §4: :math:`\mathcal{L}_{BPR} + \lambda_{reg}\mathcal{L}_{L2}
        + w_{cm}\mathcal{L}_{CM} + \lambda_1\mathcal{L}_{AAL} + \lambda_2\mathcal{L}_{AMP}
        + w_{s}\mathcal{L}_{smooth}`.

        ``users``, ``pos``, ``neg`` index the rows of ``out.user`` / ``out.item``;
        ``batch_size`` is the configured B of the L2 term (``None``: ``len(users)``).
        """
        cfg = self.config
        u, p, n = self.batch_rows(out, users, pos, neg)
        terms = dict.fromkeys(LOSS_TERMS, out.user.new_zeros(()))
        terms['bpr'] = self.bpr_loss(u, p, n)
        terms['reg'] = cfg.lambda_reg * self.l2_loss(u, p, n, batch_size)
        if cfg.cm_enabled and cfg.cm_weight > 0:
            terms['cm'] = cfg.cm_weight * self.cosine_margin(u, p, n)
        if cfg.aal_weight > 0 or cfg.amp_weight > 0:
            # both terms are sums over the positives' rows: computed once per distinct item,
            # weighted by its count (the same values as on the n rows, duplicates included)
            distinct, counts = torch.unique(pos, return_counts=True)
        if cfg.aal_weight > 0:
            projected = self.project(data, out, distinct)
            terms['aal'] = cfg.aal_weight * self.aal(projected['h_mm'], projected['h_id'],
                                                     projected['h_mix'], counts)
        if cfg.amp_weight > 0:
            cached = cached_similarities(data, MODALITIES, cfg.similarity_cache_mb,
                                         fixed_rows=cfg.raw_from_files or cfg.freeze_features)
            embeddings = {m: rows(out.views[f'H_{m}'], distinct) for m in MODALITIES}
            targets = {m: batch_similarity_target(self.graph_cache, f'similarity_{m}', data,
                                                  self.features[m], m, cfg.raw_from_files,
                                                  distinct, counts, m in cached, out.item.dtype)
                       for m in MODALITIES}
            terms['amp'] = cfg.amp_weight * self.amp(embeddings, targets)
        if cfg.smooth_weight > 0:
            terms['smooth'] = cfg.smooth_weight * self.smoothness_term(data, out.views['H_mm'])
        total = torch.stack(list(terms.values())).sum()
        return total, {key: value.detach() for key, value in terms.items()}

    def smoothness_term(self, data: HeteroData, h_mm: Tensor) -> Tensor:
        r"""SPEC §4's graph smoothness of :math:`\mathbf{H}_{mm}` (without its weight): the mean
        over every edge of the mm kNN graph on a whole graph; on a sampled subgraph the mean
        over its mm kNN edges whose both ends have the whole graph's view
        (:func:`~anchorrec_pyg.models.base.exact_view_items`: the items the batch reads, whose
        view the subgraph computes exactly), a sample of the same mean. With a kNN fan-out
        (``train.knn_fanout``) those edges are drawn, each with probability :math:`s_i/k_i`,
        and their weights carry :math:`k_i/s_i` (``edge_scale``), so the weighted sum is
        divided by the sum of the factors instead of the edge count (the ratio estimator of the
        same mean; dividing by the count would inflate the term by about :math:`k/s`)."""
        knn = data[knn_edge_type('mm')]
        exact = exact_view_items(data, 'mm')
        if exact is None:
            return self.smoothness(h_mm, knn.edge_index, knn.edge_weight,
                                   self.item_graph(data, 'mm', self.propagation))
        member = torch.zeros(h_mm.size(0), dtype=torch.bool, device=h_mm.device)
        member[exact] = True
        keep = member[knn.edge_index[0]] & member[knn.edge_index[1]]
        if not bool(keep.any()):
            return h_mm.new_zeros(())
        value = self.smoothness(h_mm, knn.edge_index[:, keep], knn.edge_weight[keep])
        if 'edge_scale' in knn:
            scale = knn.edge_scale[keep]
            value = value * (scale.numel() / scale.sum())
        return value
