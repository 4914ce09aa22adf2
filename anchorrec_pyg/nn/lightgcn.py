r"""LightGCN on the user-item graph (SPEC §2, §3.1).

The user-item graph is the homogeneous graph over ``U + I`` nodes (users first, items offset by
``U``) holding every training interaction in both directions, each edge weighted

.. math::
    w(u, i) = \frac{1}{\sqrt{\deg(u)\deg(i)}},

which is LightGCN's symmetric normalisation without self loops. The weights are the ones stored
in the data (Contract 1), so one layer is :class:`torch_geometric.nn.conv.LGConv` with
``normalize=False`` on those weights, equivalently ``LGConv(normalize=True)`` on the unweighted
edges (both identities are tested); the product itself goes through the propagation interface
(:mod:`anchorrec_pyg.nn.propagation`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from anchorrec_pyg.nn.propagation import Adjacency, PropagationBackend

__all__ = ['LightGCNConv', 'LightGCNEncoder', 'user_item_edges', 'user_item_adjacency']


class LightGCNConv(torch.nn.Module):
    r"""One LightGCN layer :math:`\mathbf{E}^{(l+1)} = \hat{\mathbf{A}}\mathbf{E}^{(l)}`.

    No weights, no non-linearity, no self loop: the layer is the normalised adjacency applied
    to the previous layer's embeddings.
    """

    def forward(self, x: Tensor, adj: Adjacency) -> Tensor:
        return adj @ x


class LightGCNEncoder(torch.nn.Module):
    r"""The LightGCN encoder returning the mean of layers ``0..L`` (SPEC §3.1)

    .. math::
        \mathbf{C} = \frac{1}{L + 1}\sum_{l=0}^{L}\hat{\mathbf{A}}^{l}\mathbf{E}^{(0)},
        \qquad \mathbf{E}^{(0)} = [\mathbf{E}_u; \mathbf{E}_i].

    Args:
        num_layers: the number of propagation layers ``L`` (SPEC: 2).
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        self.num_layers = num_layers
        self.conv = LightGCNConv()

    def forward(self, x: Tensor, adj: Adjacency) -> Tensor:
        out = x
        h = x
        for _ in range(self.num_layers):
            h = self.conv(h, adj)
            out = out + h
        return out / (self.num_layers + 1)

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}'


def user_item_edges(
    ui_edge_index: Tensor,
    ui_edge_weight: Tensor,
    iu_edge_index: Tensor | None,
    iu_edge_weight: Tensor | None,
    num_users: int,
) -> tuple[Tensor, Tensor]:
    """The homogeneous symmetric user-item graph of a bipartite interaction graph.

    Args:
        ui_edge_index: ``[2, E]`` user -> item edges (row 0 user, row 1 item).
        ui_edge_weight: ``[E]`` their weights.
        iu_edge_index: ``[2, E']`` item -> user edges (row 0 item, row 1 user), or ``None`` to use
            ``ui_edge_index`` flipped.
        iu_edge_weight: ``[E']`` their weights (``None`` with ``iu_edge_index``).
        num_users: ``U``; item ``i`` becomes node ``U + i``.

    Returns:
        ``(edge_index, edge_weight)`` over ``U + I`` nodes holding both directions.
    """
    if iu_edge_index is None:
        iu_edge_index, iu_edge_weight = ui_edge_index.flip(0), ui_edge_weight
    if iu_edge_weight is None:
        raise ValueError('iu_edge_weight is required with iu_edge_index')
    to_items = torch.stack([ui_edge_index[0], ui_edge_index[1] + num_users])
    to_users = torch.stack([iu_edge_index[0] + num_users, iu_edge_index[1]])
    edge_index = torch.cat([to_items, to_users], dim=1)
    edge_weight = torch.cat([ui_edge_weight, iu_edge_weight])
    return edge_index, edge_weight


def user_item_adjacency(
    backend: PropagationBackend,
    ui_edge_index: Tensor,
    ui_edge_weight: Tensor,
    iu_edge_index: Tensor | None,
    iu_edge_weight: Tensor | None,
    num_users: int,
    num_items: int,
) -> Adjacency:
    r"""The operator :math:`\hat{\mathbf{A}}` (``(U+I) x (U+I)``) of :func:`user_item_edges`."""
    edge_index, edge_weight = user_item_edges(ui_edge_index, ui_edge_weight, iu_edge_index,
                                              iu_edge_weight, num_users)
    num_nodes = num_users + num_items
    return backend.adjacency(edge_index, edge_weight, (num_nodes, num_nodes))
