r"""VBPR, visual Bayesian personalised ranking (He & McAuley, AAAI 2016), as MMRec implements
it (SPEC §9).

Matrix factorisation whose item vector is an ID part and a content part,

.. math::
    \mathbf{i}_i = [\boldsymbol{\gamma}_i \,\|\, \mathbf{W}\mathbf{x}_i + \mathbf{b}], \qquad
    \mathbf{x}_i = [\mathbf{t}_i \,\|\, \mathbf{v}_i], \qquad
    \hat{y}_{ui} = \langle\boldsymbol{\theta}_u, \mathbf{i}_i\rangle,

with :math:`\mathbf{x}_i` the raw text and image rows (text first), fixed (a buffer, not
trained), :math:`\mathbf{W}: (d_t + d_v) \to d`, :math:`\boldsymbol{\gamma}_i \in
\mathbb{R}^d`, :math:`\boldsymbol{\theta}_u \in \mathbb{R}^{2d}` and no bias terms. Loss:

.. math::
    \mathcal{L} = \mathcal{L}_{BPR} + \lambda\,\mathrm{EmbLoss}(\boldsymbol{\theta}_u,
    \mathbf{i}_p, \mathbf{i}_n),

MMRec's ``EmbLoss`` (Frobenius norms, not squared, over the batch rows). No graph is used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import BPRLoss, EmbLoss
from anchorrec_pyg.models.base import ModelConfig, RecModel, RecOutput, node_rows
from anchorrec_pyg.schema import feature_key

__all__ = ['VBPR']

#: The raw tables of the content part, in the order concatenated (text first, as MMRec).
CONTENT_MODALITIES = ('text', 'image')


class VBPR(RecModel):
    r"""VBPR (SPEC §9) on the text and image tables of Contract 1.

    A :class:`~anchorrec_pyg.models.base.RecModel`, not a graph model: it propagates nothing,
    and its ID tables differ in width (users ``2d``, items ``d``).

    ``forward`` returns users :math:`\boldsymbol{\theta}` (``[U, 2d]``) and items
    :math:`[\boldsymbol{\gamma} \| \mathbf{W}\mathbf{x} + \mathbf{b}]` (``[I, 2d]``), with the
    content part as view ``'F'``. ``loss`` returns ``bpr`` and ``reg``.
    """

    description = ('VBPR: matrix factorisation with an ID part and a linear projection of the '
                   'raw text+image features (no graph)')

    @dataclass
    class Config(ModelConfig):
        """VBPR hyper-parameters (MMRec's defaults).

        Attributes:
            embedding_dim: d; users and items are 2d wide (published 64).
            reg_weight: weight of ``EmbLoss`` (grid {2, 1, 0.1, 0.01, 1e-3, 1e-4, 1e-5}).
        """

        embedding_dim: int = 64
        reg_weight: float = 1e-3

        def validate(self) -> None:
            self.require(self.embedding_dim > 0, 'embedding_dim', 'must be > 0')
            self.require(self.reg_weight >= 0, 'reg_weight', 'must be >= 0')

    @classmethod
    def required_modalities(cls, config: ModelConfig) -> tuple[str, ...]:
        return CONTENT_MODALITIES

    def __init__(self, data: HeteroData, config: VBPR.Config | None = None) -> None:
        super().__init__(data, config)
        d = self.config.embedding_dim
        item = data['item']
        self.register_buffer('raw_features',
                             torch.cat([item[feature_key(m)] for m in CONTENT_MODALITIES],
                                       dim=-1).detach().float(),
                             persistent=False)
        self.user_embedding = torch.nn.Embedding(self.num_users, 2 * d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.projection = torch.nn.Linear(self.raw_features.size(1), d)
        self.bpr = BPRLoss()
        self.reg = EmbLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ID tables; MMRec's Xavier-normal weight and zero bias for ``W``."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        torch.nn.init.xavier_normal_(self.projection.weight)
        torch.nn.init.zeros_(self.projection.bias)

    def forward(self, data: HeteroData) -> RecOutput:
        content = self.projection(node_rows(self.raw_features, data, 'item'))
        items = torch.cat([node_rows(self.item_embedding.weight, data, 'item'), content], dim=-1)
        return RecOutput(user=node_rows(self.user_embedding.weight, data, 'user'), item=items,
                         views={'F': content})

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """BPR + ``reg_weight * EmbLoss(u, p, n)`` (``batch_size`` is not used: ``EmbLoss``
        divides by the batch's rows, as MMRec's)."""
        u, p, n = self.batch_rows(out, users, pos, neg)
        bpr = self.bpr((u * p).sum(-1), (u * n).sum(-1))
        reg = self.config.reg_weight * self.reg(u, p, n)
        return bpr + reg, {'bpr': bpr.detach(), 'reg': reg.detach()}
