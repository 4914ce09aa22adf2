"""LightGCN, the ID-only baseline (SPEC §9; the collaborative view of SPEC §3.1 on its own)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.models.base import RecOutput
from anchorrec_pyg.models.graph import GraphModelConfig, GraphRecModel

__all__ = ['LightGCN']


class LightGCN(GraphRecModel):
    r"""LightGCN on the user-item graph of SPEC §2.

    .. math::
        \mathbf{Z} = \frac{1}{L+1}\sum_{l=0}^{L}\hat{\mathbf{A}}^l[\mathbf{E}_u; \mathbf{E}_i],
        \qquad \mathcal{L} = \mathcal{L}_{BPR} + \lambda_{reg}\,\frac{1}{2B}
        (\|\mathbf{u}\|^2 + \|\mathbf{p}\|^2 + \|\mathbf{n}\|^2),

    the L2 term on the batch rows of the final embeddings ``Z`` (the form SPEC §4/§9 writes).
    ``Eu``, ``Ei`` are Xavier-uniform initialised. Views: ``'C'`` (= ``Z``, ``[U+I, d]``).
    """

    description = 'LightGCN: ID embeddings propagated on the user-item graph (ID-only baseline)'

    @dataclass
    class Config(GraphModelConfig):
        """LightGCN hyper-parameters (and ``embedding_dim``, ``propagation`` of
        :class:`~anchorrec_pyg.models.graph.GraphModelConfig`).

        Attributes:
            n_layers: propagation layers L.
            lambda_reg: weight of the embedding L2 term.
        """

        ui_layers_key: ClassVar[str] = 'n_layers'

        n_layers: int = 2
        lambda_reg: float = 1e-3

        def validate(self) -> None:
            self.require(self.lambda_reg >= 0, 'lambda_reg', 'must be >= 0')

    def __init__(self, data: HeteroData, config: LightGCN.Config | None = None) -> None:
        super().__init__(data, config)
        self.reset_parameters()

    def forward(self, data: HeteroData) -> RecOutput:
        view = self.collaborative(data)
        return RecOutput(user=view.c_user, item=view.c_item, views={'C': view.c})

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
        bpr = self.bpr_loss(u, p, n)
        reg = self.config.lambda_reg * self.l2_loss(u, p, n, batch_size)
        return bpr + reg, {'bpr': bpr.detach(), 'reg': reg.detach()}
