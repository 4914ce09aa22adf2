r"""LGMRec's global hypergraph view (SPEC §10): soft hyperedge memberships and their propagation.

For one modality with raw item features :math:`\mathbf{F}` (``I x f``), a learned
:math:`\mathbf{W}_{hyp}` (``f x H``) gives item-hyperedge logits
:math:`\mathbf{L}_i = \mathbf{F}\mathbf{W}_{hyp}` and user-hyperedge logits
:math:`\mathbf{L}_u = \mathbf{R}_{01}\mathbf{L}_i` (:math:`\mathbf{R}_{01}` the 0/1 training
interactions, a sparse product). Memberships are the Gumbel-softmax of each row over the
:math:`H` hyperedges (:func:`soft_membership`),

.. math::
    \mathbf{H} = \mathrm{softmax}\big((\mathbf{L} + \mathbf{g}) / \tau\big), \qquad
    g = -\log(-\log u),\ u \sim \mathcal{U}(0, 1),

(soft: no straight-through one-hot), and :class:`HypergraphPropagation` passes the item
embeddings through the hyperedges: :math:`\mathbf{Z} = \mathbf{H}_i^\top\mathbf{E}`,
:math:`\mathbf{E}_i = \mathbf{H}_i\mathbf{Z}`, :math:`\mathbf{E}_u = \mathbf{H}_u\mathbf{Z}`.
Every matrix here is ``n x H`` or ``H x d``: nothing grows with ``U x I``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['soft_membership', 'HypergraphPropagation']


def soft_membership(logits: Tensor, tau: float, noise: bool) -> Tensor:
    r"""Row-wise (soft) Gumbel-softmax of ``logits`` (``[n, H]``) at temperature ``tau``.

    With ``noise`` the Gumbel noise :math:`-\log E`, :math:`E \sim \mathrm{Exp}(1)` is drawn from
    torch's global generator (the same draw as :func:`torch.nn.functional.gumbel_softmax`), so a
    seeded run is reproducible bit for bit; without it the result is the deterministic
    :math:`\mathrm{softmax}(\mathbf{L}/\tau)`.
    """
    if tau <= 0:
        raise ValueError(f'tau must be > 0, got {tau}')
    if noise:
        logits = logits - torch.empty_like(logits).exponential_().log()
    return F.softmax(logits / tau, dim=-1)


class HypergraphPropagation(torch.nn.Module):
    r"""``num_layers`` rounds of hyperedge message passing from item embeddings (LGMRec's
    ``HGNNLayer``)

    .. math::
        \mathbf{Z}^{(l)} = \mathbf{H}_i^\top\mathbf{E}_i^{(l)}, \quad
        \mathbf{E}_i^{(l+1)} = \mathbf{H}_i\mathbf{Z}^{(l)}, \quad
        \mathbf{E}_u^{(l+1)} = \mathbf{H}_u\mathbf{Z}^{(l)},

    starting from :math:`\mathbf{E}_i^{(0)} = \mathbf{E}`; returns the last
    :math:`(\mathbf{E}_u, \mathbf{E}_i)` (no layer mean).

    Args:
        num_layers: the rounds (published 1 on Baby and Sports).
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        self.num_layers = num_layers

    def forward(self, item_membership: Tensor, user_membership: Tensor,
                item_emb: Tensor) -> tuple[Tensor, Tensor]:
        """``item_membership`` ``[I, H]``, ``user_membership`` ``[U, H]``, ``item_emb``
        ``[I, d]`` -> ``(E_u [U, d], E_i [I, d])``."""
        items = item_emb
        for _ in range(self.num_layers):
            hyperedges = item_membership.t() @ items
            items = item_membership @ hyperedges
        return user_membership @ hyperedges, items

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}'
