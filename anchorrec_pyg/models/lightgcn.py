"""LightGCN, the ID-only baseline (SPEC §9; the collaborative view of SPEC §3.1 on its own)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import BPRLoss, EmbeddingL2Loss
from anchorrec_pyg.models.base import ModelConfig, RecModel, RecOutput, node_rows, rows
from anchorrec_pyg.nn.lightgcn import LightGCNEncoder
from anchorrec_pyg.nn.propagation import get_backend

__all__ = ['LightGCN']


class LightGCN(RecModel):
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
    class Config(ModelConfig):
        """LightGCN hyper-parameters.

        Attributes:
            embedding_dim: d.
            n_layers: propagation layers L.
            lambda_reg: weight of the embedding L2 term.
            propagation: sparse backend name (:data:`anchorrec_pyg.nn.propagation.BACKENDS`).
        """

        embedding_dim: int = 64
        n_layers: int = 2
        lambda_reg: float = 1e-3
        propagation: str = 'fast'

        def validate(self) -> None:
            self.require(self.embedding_dim > 0, 'embedding_dim', 'must be > 0')
            self.require(self.n_layers >= 0, 'n_layers', 'must be >= 0')
            self.require(self.lambda_reg >= 0, 'lambda_reg', 'must be >= 0')

    def __init__(self, data: HeteroData, config: LightGCN.Config | None = None) -> None:
        super().__init__(data, config if config is not None else self.Config())
        cfg = self.config
        self.propagation = get_backend(cfg.propagation)
        self.user_embedding = torch.nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, cfg.embedding_dim)
        self.encoder = LightGCNEncoder(cfg.n_layers)
        self.bpr = BPRLoss()
        self.l2 = EmbeddingL2Loss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    def forward(self, data: HeteroData) -> RecOutput:
        graph = self.user_item_graph(data, self.propagation)
        x = torch.cat([
            node_rows(self.user_embedding.weight, data, 'user'),
            node_rows(self.item_embedding.weight, data, 'item'),
        ])
        z = self.encoder(x, graph.adj)
        num_users = data['user'].num_nodes
        return RecOutput(user=z[:num_users], item=z[num_users:], views={'C': z})

    def loss(
        self,
        data: HeteroData,
        out: RecOutput,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        batch_size: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        u, p, n = rows(out.user, users), rows(out.item, pos), rows(out.item, neg)
        bpr = self.bpr((u * p).sum(-1), (u * n).sum(-1))
        reg = self.config.lambda_reg * self.l2(
            u, p, n, batch_size=batch_size if batch_size is not None else users.numel())
        total = bpr + reg
        return total, {'bpr': bpr.detach(), 'reg': reg.detach()}
