r"""Modality views on item-item kNN graphs (SPEC §3.2).

For a modality :math:`m` with feature table :math:`\mathbf{F}_m` (``I x dim_m``) the gated item
view is the item ID embedding modulated elementwise by a gate computed from the projected
features,

.. math::
    \mathbf{X}_m = \mathbf{E}_i \odot \sigma\big(\mathbf{G}_m\,\mathbf{P}_m(
    \mathrm{LN}(\mathbf{F}_m))\big),

(``LN`` an optional LayerNorm, off by default), propagated ``n`` times on the modality's
normalised kNN graph, without layer averaging, and carried to the users through the user-item
block :math:`\mathbf{R}`:

.. math::
    \mathbf{H}_m = \mathbf{A}_m^{\,n}\,\mathbf{X}_m, \qquad
    \mathbf{H}^{user}_m = \mathbf{R}\,\mathbf{H}_m.

Every product goes through the propagation interface; :func:`propagate_item_views` hands all
modalities of a step to the backend at once (:func:`~anchorrec_pyg.nn.propagation.propagate_many`)
so that a backend may fuse them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from anchorrec_pyg.nn.feature_grad import GradBuffer, buffered_linear
from anchorrec_pyg.nn.propagation import Adjacency, propagate_many

__all__ = ['ModalityGate', 'ModalityConv', 'propagate_item_views']


class ModalityGate(torch.nn.Module):
    r"""The gated item view :math:`\mathbf{E}_i \odot \sigma(\mathbf{G}\,\mathbf{P}(
    \mathrm{LN}(\mathbf{F})))`.

    ``P`` (``Linear(feature_dim, d)``) and ``G`` (``Linear(d, d)``) keep PyTorch's default
    ``Linear`` initialisation, as in the published code (SPEC §3, §7).

    Args:
        feature_dim: width of the modality's feature table.
        embedding_dim: d.
        layernorm: apply a LayerNorm to the feature rows before the projection ``P``.
        grad_buffer: when the features are a trainable leaf table (and no LayerNorm), write
            their gradient into a buffer kept between steps
            (:class:`~anchorrec_pyg.nn.feature_grad.BufferedGradLinear`: same values, no
            per-step allocation of the ``I x f`` gradient).
    """

    def __init__(self, feature_dim: int, embedding_dim: int, layernorm: bool = False,
                 grad_buffer: bool = False) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(feature_dim) if layernorm else torch.nn.Identity()
        self.proj = torch.nn.Linear(feature_dim, embedding_dim)
        self.gate = torch.nn.Linear(embedding_dim, embedding_dim)
        self.grad_buffer = GradBuffer() if grad_buffer and not layernorm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default ``Linear`` initialisation of ``P`` and ``G``, as published (SPEC
        §3, §7: the published code never re-initialises them)."""
        for linear in (self.proj, self.gate):
            linear.reset_parameters()
        if isinstance(self.norm, torch.nn.LayerNorm):
            self.norm.reset_parameters()

    def forward(self, item_embedding: Tensor, features: Tensor,
                rows: Tensor | None = None) -> Tensor:
        """The gated view ``[I, d]`` of the items of ``item_embedding`` (``[I, d]``).

        With ``rows`` (distinct item indices) ``features`` holds those items' feature rows only
        (``[len(rows), dim]``): the gate is computed for them alone and the other rows of the
        view are zero (items whose view input no propagation reads, e.g. on a sampled subgraph:
        :func:`~anchorrec_pyg.models.base.view_input_rows`)."""
        if self.grad_buffer is not None:
            projected = buffered_linear(features, self.proj, self.grad_buffer)
        else:
            projected = self.proj(self.norm(features))
        if rows is None:
            return item_embedding * torch.sigmoid(self.gate(projected))
        gated = item_embedding.index_select(0, rows) * torch.sigmoid(self.gate(projected))
        return item_embedding.new_zeros(item_embedding.shape).index_copy(0, rows, gated)


def propagate_item_views(
    xs: Sequence[Tensor],
    item_adjs: Sequence[Adjacency],
    user_item: Adjacency,
    num_layers: int,
) -> tuple[list[Tensor], list[Tensor]]:
    r"""Propagates several item views, each on its own kNN graph, then to the users.

    Args:
        xs: item views :math:`\mathbf{X}_m` (``[I, d]`` each).
        item_adjs: the matching kNN operators :math:`\mathbf{A}_m` (``I x I``).
        user_item: :math:`\mathbf{R}` (``U x I``).
        num_layers: :math:`n`, the number of kNN propagation steps (no layer averaging).

    Returns:
        ``(items, users)``: the lists :math:`\mathbf{A}_m^n\mathbf{X}_m` and
        :math:`\mathbf{R}\mathbf{A}_m^n\mathbf{X}_m`.
    """
    items = list(xs)
    for _ in range(num_layers):
        items = propagate_many(item_adjs, items)
    users = propagate_many([user_item] * len(items), items)
    return items, users


class ModalityConv(torch.nn.Module):
    r"""One modality's view (SPEC §3.2): the gate, then :math:`n` kNN steps and the user view.

    Args:
        feature_dim: width of the modality's feature table.
        embedding_dim: d.
        num_layers: :math:`n`, kNN propagation steps (SPEC: 1, 2 or 3).
        layernorm: LayerNorm on the feature rows before the projection.
        grad_buffer: see :class:`ModalityGate`.
    """

    def __init__(self, feature_dim: int, embedding_dim: int, num_layers: int = 1,
                 layernorm: bool = False, grad_buffer: bool = False) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        self.num_layers = num_layers
        self.gated = ModalityGate(feature_dim, embedding_dim, layernorm, grad_buffer)

    def reset_parameters(self) -> None:
        self.gated.reset_parameters()

    def forward(
        self,
        item_embedding: Tensor,
        features: Tensor,
        item_adj: Adjacency,
        user_item: Adjacency,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(H_items [I, d], H_users [U, d])``; ``rows``: see
        :meth:`ModalityGate.forward` (``features`` then holds those items' rows only)."""
        items, users = propagate_item_views([self.gated(item_embedding, features, rows)],
                                            [item_adj], user_item, self.num_layers)
        return items[0], users[0]

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}'
