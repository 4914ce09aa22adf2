r"""LATTICE's latent item-item graph (Zhang et al., ACM MM 2021; SPEC §10), as sparse edge lists.

For each modality :math:`m` a linear map of the (trainable copy of the) feature table,
:math:`\mathbf{X}_m = \mathrm{Lin}_m(\mathbf{F}_m)`, gives a learned kNN graph

.. math::
    \mathbf{K}'_m[i, j] = \cos(\mathbf{x}_{m,i}, \mathbf{x}_{m,j})
    \quad \text{for the } k \text{ largest } j \text{ of row } i \text{ (itself included)},

whose *values* carry gradient and whose *indices* (the top-k selection) do not. With
:math:`\mathbf{w} = \mathrm{softmax}(\boldsymbol\omega)` over the modalities and the static
graphs :math:`\mathbf{S}^0_m` (SPEC §2, built once from the raw rows),

.. math::
    \mathbf{S}_{learn} = \mathbf{D}^{-1/2}\Big(\sum_m w_m \mathbf{K}'_m\Big)\mathbf{D}^{-1/2},
    \qquad \mathbf{S}_{orig} = \sum_m w_m \mathbf{S}^0_m, \qquad
    \mathbf{S} = (1 - \lambda)\,\mathbf{S}_{learn} + \lambda\,\mathbf{S}_{orig},

:math:`\mathbf{D}` the row sums of the learned mixture (a row sum that is not positive gets
:math:`D^{-1/2} = 0`, as the published code's ``inf -> 0``). The published code forms every one
of these as a dense ``I x I`` matrix; here each is an edge list (the learned mixture is the union
of the modalities' top-k edges, at most :math:`2k` per row, an edge kept by both modalities
appearing twice), and the top-k indices come from the blockwise exact kNN of
:func:`anchorrec_pyg.data.knn.cosine_knn`, so memory stays :math:`O(Ik)` besides one bounded
similarity block.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from anchorrec_pyg.data.knn import DEFAULT_MEMORY_BUDGET_BYTES, NO_NEIGHBOUR, cosine_knn

__all__ = ['learned_knn_edges', 'symmetric_row_normalize', 'propagate_edges', 'LatentItemGraph']

EdgeList = tuple[Tensor, Tensor]


def learned_knn_edges(x: Tensor, k: int,
                      memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> EdgeList:
    r"""The top-:math:`k` cosine graph of the rows of ``x`` with differentiable values.

    The neighbour sets are :func:`~anchorrec_pyg.data.knn.cosine_knn` of ``x.detach()``
    (blockwise, never ``I x I``); the weight of a kept edge :math:`(j \to i)` is
    :math:`\cos(\mathbf{x}_i, \mathbf{x}_j)` recomputed from ``x``, so the gradient reaches ``x``
    through the kept values only (that of a dense ``topk`` of the full similarity matrix).

    Returns:
        ``(edge_index [2, E], edge_weight [E])``, ``edge_index[0]`` the neighbour :math:`j`
        (source), ``edge_index[1]`` the item :math:`i` (target); ``E = I k`` unless ``x`` has
        zero rows (a zero row keeps only itself, weight 0).
    """
    index, _ = cosine_knn(x.detach(), k, memory_budget_bytes=memory_budget_bytes)
    num_items = x.size(0)
    target = torch.arange(num_items, device=x.device).repeat_interleave(index.size(1))
    source = index.reshape(-1)
    keep = source != NO_NEIGHBOUR
    source, target = source[keep], target[keep]
    unit = F.normalize(x, dim=1)
    weight = (unit.index_select(0, source) * unit.index_select(0, target)).sum(dim=1)
    return torch.stack([source, target]), weight


def symmetric_row_normalize(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> Tensor:
    r""":math:`w(i, j) / \sqrt{D_i D_j}` with :math:`D_i = \sum_j w(i, j)` the row sums (by
    target ``edge_index[1]``), duplicates summed; :math:`D^{-1/2} = 0` where
    :math:`D \le 0`. Differentiable in ``edge_weight``."""
    source, target = edge_index
    row_sum = edge_weight.new_zeros(num_nodes).index_add(0, target, edge_weight)
    positive = row_sum > 0
    inv_sqrt = torch.where(positive, row_sum.where(positive, 1.0).rsqrt(), 0.0)
    return edge_weight * inv_sqrt.index_select(0, target) * inv_sqrt.index_select(0, source)


def propagate_edges(edge_index: Tensor, edge_weight: Tensor, x: Tensor, num_dst: int) -> Tensor:
    r""":math:`\mathbf{y}_i = \sum_{(j \to i)} w_{ji}\,\mathbf{x}_j`, differentiable in both the
    edge weights and ``x`` (the propagation backends treat weights as constants). Gathers with
    ``index_select`` and sums with ``index_add``, whose CPU backward and forward sum in a fixed
    order (same seed, same bits)."""
    messages = x.index_select(0, edge_index[0]) * edge_weight.to(x.dtype).unsqueeze(1)
    return x.new_zeros(num_dst, x.size(1)).index_add(0, edge_index[1], messages)


class LatentItemGraph(torch.nn.Module):
    r"""The graph :math:`\mathbf{S}` of the module docstring, built on each call.

    Args:
        in_dims: feature width of each modality, in the order of :math:`\boldsymbol\omega`
            (the published code: image first, then text).
        out_dim: width of :math:`\mathbf{X}_m` (published 64).
        k: neighbours per item of each learned graph (published 10).
        original_weight: :math:`\lambda`, the weight of :math:`\mathbf{S}_{orig}` (published 0.9).

    ``forward(features, static)`` takes the feature tables and the static graphs
    :math:`\mathbf{S}^0_m` (edge lists) by modality and returns :math:`\mathbf{S}` as
    ``(edge_index, edge_weight)`` over ``I`` items (learned edges first), differentiable in
    :math:`\mathrm{Lin}_m`, :math:`\boldsymbol\omega` and the feature tables.
    """

    def __init__(self, in_dims: Mapping[str, int], out_dim: int, k: int,
                 original_weight: float) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError('LatentItemGraph needs at least one modality')
        self.modalities = tuple(in_dims)
        self.k = k
        self.original_weight = original_weight
        self.transforms = torch.nn.ModuleDict(
            {m: torch.nn.Linear(dim, out_dim) for m, dim in in_dims.items()})
        self.modal_weight = torch.nn.Parameter(torch.empty(len(self.modalities)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default ``Linear`` initialisation; :math:`\\boldsymbol\\omega = 0.5`."""
        for linear in self.transforms.values():
            linear.reset_parameters()
        torch.nn.init.constant_(self.modal_weight, 0.5)

    def forward(self, features: Mapping[str, Tensor], static: Mapping[str, EdgeList]) -> EdgeList:
        weight = torch.softmax(self.modal_weight, dim=0)
        num_items = features[self.modalities[0]].size(0)
        learned, original = [], []
        for slot, m in enumerate(self.modalities):
            index, value = learned_knn_edges(self.transforms[m](features[m]), self.k)
            learned.append((index, weight[slot] * value))
            index, value = static[m]
            original.append((index, weight[slot] * value.to(weight.dtype)))
        learned_index = torch.cat([index for index, _ in learned], dim=1)
        learned_weight = symmetric_row_normalize(
            learned_index, torch.cat([value for _, value in learned]), num_items)
        edge_index = torch.cat([learned_index] + [index for index, _ in original], dim=1)
        edge_weight = torch.cat([(1.0 - self.original_weight) * learned_weight] +
                                [self.original_weight * value for _, value in original])
        return edge_index, edge_weight

    def extra_repr(self) -> str:
        return (f"modalities={self.modalities}, k={self.k}, "
                f"original_weight={self.original_weight}")
