r"""BM3, bootstrap latent representations for multimodal recommendation (Zhou et al., WWW 2023),
as MMRec implements it (SPEC §9). Trained without negatives: batches of positive pairs.

.. math::
    \mathbf{U} = \mathbf{C}_u, \quad \mathbf{I} = \mathbf{C}_i + \mathbf{E}_i, \quad
    \mathbf{F}_t = W_t(\mathbf{T}), \quad \mathbf{F}_v = W_v(\mathbf{V}),

with :math:`\mathbf{C}` the LightGCN mean over :math:`L` layers and :math:`\mathbf{T}`,
:math:`\mathbf{V}` trainable copies of the text and image tables. A shared predictor
:math:`P` (Linear ``d -> d``) maps the online views; the targets are the views themselves under
``no_grad`` with dropout :math:`p` (:math:`\tilde{\cdot}`). With
:math:`c(\mathbf{a}, \mathbf{b}) = 1 - \overline{\cos}(\mathbf{a}, \mathbf{b})`:

.. math::
    \mathcal{L} = c(P(\mathbf{U})_u, \tilde{\mathbf{I}}_i) + c(P(\mathbf{I})_i,
    \tilde{\mathbf{U}}_u) + \lambda\,\frac{\|\mathbf{U}\|_F + \|\mathbf{I}\|_F}{I}
    + w_{cl}\sum_{m \in \{t, v\}}\big[c(P(\mathbf{F}_m)_i, \tilde{\mathbf{I}}_i)
    + c(P(\mathbf{F}_m)_i, \tilde{\mathbf{F}}_m{}_i)\big],

:math:`w_{cl} = 2`. Scores are :math:`P(\mathbf{U})_u \cdot P(\mathbf{I})^\top`, so ``forward``
returns the predicted embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import CosineDistanceLoss, EmbLoss
from anchorrec_pyg.models.base import ModelConfig, RecOutput, feature_copies, node_rows, rows
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel

__all__ = ['BM3']

FEATURE_MODALITIES = ('text', 'image')


class BM3(GraphRecModel):
    r"""BM3 (SPEC §9) on the text and image tables of Contract 1.

    ``needs_negatives = False``: the trainer hands :meth:`loss` positive pairs (``neg`` is
    ``None``). ``forward`` returns :math:`P(\mathbf{U})` and :math:`P(\mathbf{I})` (the scoring
    embeddings) with the online views ``'U'``, ``'I'`` and ``'C'``. ``loss`` returns ``ui``
    (both user-item terms), ``reg`` and ``modal`` (the weighted feature terms).
    """

    description = ('BM3: self-supervised bootstrapping (no negatives) of LightGCN and '
                   'text+image views with a shared predictor and dropout targets')

    needs_negatives = False

    @dataclass
    class Config(GraphModelConfig):
        """BM3 hyper-parameters (MMRec's defaults; ``embedding_dim``, published 64, and
        ``propagation`` as :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_layers: LightGCN layers :math:`L` (grid {1, 2}).
            dropout: :math:`p`, dropout of the targets (grid {0.3, 0.5}).
            reg_weight: :math:`\\lambda` of the ``EmbLoss`` term (grid {0.1, 0.01}).
            cl_weight: weight of the feature terms (published 2.0).
        """

        ui_layers_key: ClassVar[str] = 'n_layers'

        n_layers: int = 1
        dropout: float = 0.5
        reg_weight: float = 0.1
        cl_weight: float = 2.0

        def validate(self) -> None:
            self.require(0 <= self.dropout < 1, 'dropout', 'must be in [0, 1)')
            self.require_nonnegative('reg_weight', 'cl_weight')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return FEATURE_MODALITIES

    def __init__(self, data: HeteroData, config: BM3.Config | None = None) -> None:
        super().__init__(data, config)
        d = self.config.embedding_dim
        self.features = feature_copies(data, FEATURE_MODALITIES)
        self.feature_maps = torch.nn.ModuleDict({
            m: torch.nn.Linear(self.features[m].size(1), d)
            for m in FEATURE_MODALITIES
        })
        self.predictor = torch.nn.Linear(d, d)
        self.distance = CosineDistanceLoss()
        self.reg = EmbLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ID tables; MMRec's Xavier-normal weights for the predictor and the
        feature maps (PyTorch's default biases)."""
        super().reset_parameters()
        for linear in (self.predictor, *self.feature_maps.values()):
            linear.reset_parameters()
            torch.nn.init.xavier_normal_(linear.weight)

    def forward(self, data: HeteroData) -> RecOutput:
        view = self.collaborative(data)
        users, items = view.c_user, view.c_item + view.item_emb
        return RecOutput(user=self.predictor(users), item=self.predictor(items),
                         views={'U': users, 'I': items, 'C': view.c})

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """SPEC §9's BM3 loss on the positive pairs ``(users, pos)`` (``neg`` and ``batch_size``
        are not used).

        The user/item targets are dropped out on the full matrices; a feature target only on
        the batch's distinct items (each item one dropout mask, as rows of the full matrix
        would get), since the feature maps are applied to those rows only.
        """
        cfg = self.config
        online_u, online_i = out.views['U'], out.views['I']
        with torch.no_grad():
            target_u = F.dropout(online_u.detach(), cfg.dropout)
            target_i = F.dropout(online_i.detach(), cfg.dropout)
        ti = rows(target_i, pos)
        ui = (self.distance(rows(out.user, users), ti) +
              self.distance(rows(out.item, pos), rows(target_u, users)))
        reg = cfg.reg_weight * self.reg(online_u, online_i)
        modal = out.user.new_zeros(())
        distinct, inverse = torch.unique(pos, return_inverse=True)
        for m in FEATURE_MODALITIES:
            feats = self.feature_maps[m](rows(node_rows(self.features[m], data, 'item'), distinct))
            with torch.no_grad():
                target_f = rows(F.dropout(feats.detach(), cfg.dropout), inverse)
            predicted = rows(self.predictor(feats), inverse)
            modal = modal + self.distance(predicted, ti) + self.distance(predicted, target_f)
        modal = cfg.cl_weight * modal
        total = ui + reg + modal
        return total, {'ui': ui.detach(), 'reg': reg.detach(), 'modal': modal.detach()}
