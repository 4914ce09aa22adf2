r"""DA-MRS's neighbour discrimination (SPEC §10, loss 2), in row chunks of the batch's items.

For three item views :math:`h_a` (``[I, d]``) and the batch's distinct items :math:`I_b`,
with :math:`\hat{h}` the L2-normalised rows:

* pseudo labels (indices only, no gradient): :math:`P_m = \mathrm{softmax}_{row}(
  \hat{h}_m[I_b]\hat{h}_m^\top)` (``|I_b| x I``); for view :math:`a` with the other two
  :math:`b, c`, :math:`M_a` = the top-:math:`k` columns of :math:`P_b + P_c + 2P_a` and
  :math:`S_a` = the top-:math:`k` columns of :math:`P_a` with :math:`M_a`'s entries zeroed
  (:func:`pseudo_neighbours`);
* with :math:`s_{ij} = \langle\hat{h}_a[i], \hat{h}_a[j]\rangle / \tau`,
  :math:`E_X(i) = \sum_{j \in X} e^{s_{ij}}` and :math:`E(i)` the sum over all :math:`I` items,

  .. math::
      \mathrm{ND}_a = \frac{1}{|I_b|}\sum_{i \in I_b}\Big[
      -\log\Big(\frac{E_{M_a}(i)}{E(i)} + \epsilon\Big)
      -\log\Big(\frac{E_{S_a}(i)}{E(i) - E_{M_a}(i)} + \epsilon\Big)\Big],
      \qquad \mathrm{ND} = \frac{1}{3}\sum_a \mathrm{ND}_a.

The ``|I_b| x I`` matrices are processed ``chunk_rows`` rows at a time (from a memory budget);
the differentiable sums :math:`E(i)` of a chunk are recomputed in the backward pass
(:func:`torch.utils.checkpoint.checkpoint`) when there is more than one chunk, so memory stays
``O(chunk_rows * I)`` instead of ``O(|I_b| * I)``. Top-k ties go to the lower item index.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from anchorrec_pyg.data.denoised_graphs import stable_topk

__all__ = ['pseudo_neighbours', 'exp_similarity_sums', 'NeighbourDiscriminationLoss']

ROW_BUFFERS = 6
r"""``[I]``-sized float32 buffers alive per chunk row (three label rows and the top-k work)."""


def pseudo_neighbours(prob_a: Tensor, prob_b: Tensor, prob_c: Tensor,
                      k: int) -> tuple[Tensor, Tensor]:
    r"""The pseudo-positive neighbours of view :math:`a`: ``(M, S)``, both ``[n, k]``.

    :math:`M` = top-:math:`k` of :math:`P_b + P_c + P_a + P_a` (summed in that order, as
    MMRec), :math:`S` = top-:math:`k` of :math:`P_a` after zeroing :math:`M`'s entries."""
    positive = prob_b + prob_c + prob_a + prob_a
    agreed = stable_topk(positive, k)[1]
    single = stable_topk(prob_a.scatter(1, agreed, 0.0), k)[1]
    return agreed, single


def _exp_sums(query: Tensor, keys: Tensor, temperature: float) -> Tensor:
    return torch.exp(query @ keys.T / temperature).sum(dim=1)


def exp_similarity_sums(query: Tensor, keys: Tensor, temperature: float,
                        chunk_rows: int) -> Tensor:
    r""":math:`\sum_j \exp(\langle q_i, k_j\rangle / \tau)` for every row :math:`q_i` of
    ``query`` (``[n, d]``) over all rows of ``keys`` (``[m, d]``), differentiable in both.

    With ``n > chunk_rows`` the rows are taken ``chunk_rows`` at a time and each chunk's
    ``[chunk_rows, m]`` matrix is recomputed in the backward pass instead of being kept."""
    if query.size(0) <= chunk_rows:
        return _exp_sums(query, keys, temperature)
    return torch.cat([
        checkpoint(_exp_sums, query[start:start + chunk_rows], keys, temperature,
                   use_reentrant=False)
        for start in range(0, query.size(0), chunk_rows)
    ])


class NeighbourDiscriminationLoss(torch.nn.Module):
    r"""SPEC §10's neighbour discrimination over three item views (see the module docstring).

    Args:
        num_neighbours: :math:`k` of :math:`M_a` and :math:`S_a` (published 10).
        temperature: :math:`\tau` (published 0.2).
        eps: :math:`\epsilon` inside the logs (published ``10e-10``, i.e. ``1e-9``).
        memory_budget_bytes: working memory of one chunk of ``|I_b| x I`` rows.
    """

    def __init__(self, num_neighbours: int = 10, temperature: float = 0.2, eps: float = 1e-9,
                 memory_budget_bytes: int = 256 * 2**20) -> None:
        super().__init__()
        self.num_neighbours = num_neighbours
        self.temperature = temperature
        self.eps = eps
        self.memory_budget_bytes = memory_budget_bytes

    def chunk_rows(self, num_items: int) -> int:
        """Rows of ``|I_b| x I`` processed at once: :data:`ROW_BUFFERS` float32 rows of ``I``
        within the memory budget."""
        return max(1, self.memory_budget_bytes // (ROW_BUFFERS * 4 * num_items))

    @torch.no_grad()
    def labels(self, views: Sequence[Tensor], items: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(M_a, S_a)`` for each view ``a`` of ``views``, the other two in their order."""
        units = [F.normalize(h.detach(), dim=1) for h in views]
        step = self.chunk_rows(units[0].size(0))
        chunks: list[list[tuple[Tensor, Tensor]]] = []
        for start in range(0, items.numel(), step):
            rows = items[start:start + step]
            probs = [torch.softmax(u.index_select(0, rows) @ u.T, dim=1) for u in units]
            chunks.append([
                pseudo_neighbours(probs[a], *(probs[b] for b in range(3) if b != a),
                                  k=self.num_neighbours)
                for a in range(3)
            ])
            del probs
        return [(torch.cat([c[a][0] for c in chunks]), torch.cat([c[a][1] for c in chunks]))
                for a in range(3)]

    def _neighbour_sums(self, query: Tensor, unit: Tensor, neighbours: Tensor) -> Tensor:
        n, k = neighbours.shape
        rows = unit.index_select(0, neighbours.reshape(-1)).view(n, k, -1)
        return torch.exp((query.unsqueeze(1) * rows).sum(dim=-1) / self.temperature).sum(dim=1)

    def forward(self, views: Sequence[Tensor], items: Tensor) -> Tensor:
        """ND of the three ``[I, d]`` item ``views`` (DA-MRS: text, image, behaviour; the
        pseudo labels of each use the other two in this order) over the distinct item ids
        ``items``."""
        if len(views) != 3:
            raise ValueError(f'neighbour discrimination needs 3 views, got {len(views)}')
        step = self.chunk_rows(views[0].size(0))
        total = views[0].new_zeros(())
        for h, (agreed, single) in zip(views, self.labels(views, items)):
            unit = F.normalize(h, dim=1)
            query = unit.index_select(0, items)
            every = exp_similarity_sums(query, unit, self.temperature, step)
            pos_agreed = self._neighbour_sums(query, unit, agreed)
            pos_single = self._neighbour_sums(query, unit, single)
            loss = (-torch.log(pos_agreed / every + self.eps)
                    - torch.log(pos_single / (every - pos_agreed) + self.eps))
            total = total + loss.mean()
        return total / 3

    def extra_repr(self) -> str:
        return (f'num_neighbours={self.num_neighbours}, temperature={self.temperature}, '
                f'eps={self.eps}')
