r"""Neighbourhood overlap between embedding spaces (SPEC §6, Fig. 4 of the AnchorRec paper).

For a space :math:`a` (an ``[I, d]`` table) let :math:`N_a(i)` be the :math:`k` items with the
largest cosine similarity to item :math:`i`, the item itself excluded. The overlap of two spaces
is

.. math::
    O(a, b) = \frac{1}{|\mathcal I|} \sum_{i \in \mathcal I}
        \frac{|N_a(i) \cap N_b(i)|}{k},

so two spaces that order every item's neighbours alike have overlap 1, and two unrelated spaces
have overlap about :math:`k / (I - 1)` (the chance level, reported alongside). The neighbour
lists are exact; they come from the data layer's memory-bounded
:func:`~anchorrec_pyg.data.knn.cosine_knn` (with :math:`k + 1` neighbours, the item itself then
removed), so the ``I x I`` similarity matrix is never built. An item whose row is zero has no
direction and so no neighbours: it counts as overlap 0 in every pair.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from anchorrec_pyg.analysis.spaces import Space
from anchorrec_pyg.data.knn import NO_NEIGHBOUR, cosine_knn
from anchorrec_pyg.errors import ConfigError

DEFAULT_K = 10
ROW_CHUNK = 4096


def neighbour_lists(x: Tensor, k: int = DEFAULT_K) -> Tensor:
    r"""``[I, k]`` ids of each item's :math:`k` nearest cosine neighbours, the item itself
    excluded (unused slots, only for zero rows: :data:`~anchorrec_pyg.data.knn.NO_NEIGHBOUR`).

    The item is removed from its own list wherever it appears; when it is not among the
    :math:`k + 1` candidates (ties with duplicates of the item) the last candidate is dropped.
    """
    num_items = x.size(0)
    if not 1 <= k < num_items:
        raise ConfigError(f'--k must be in [1, {num_items - 1}] for {num_items} items (got {k})')
    index, _ = cosine_knn(x, k + 1)
    is_self = index == torch.arange(num_items, device=index.device).unsqueeze(1)
    # drop the first self slot; rows without one drop their last candidate
    drop = torch.where(is_self.any(1), is_self.int().argmax(1), torch.full_like(index[:, 0], k))
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[torch.arange(num_items), drop] = False
    return index[keep].view(num_items, k)


def overlap(a: Tensor, b: Tensor) -> float:
    r"""Mean over items of :math:`|N_a(i) \cap N_b(i)| / k` for two ``[I, k]`` neighbour lists
    (from :func:`neighbour_lists`; unused slots never match)."""
    if a.shape != b.shape:
        raise ValueError(f'neighbour lists differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}')
    num_items, k = a.shape
    shared = 0
    for start in range(0, num_items, ROW_CHUNK):
        ra, rb = a[start:start + ROW_CHUNK], b[start:start + ROW_CHUNK]
        match = (ra.unsqueeze(2) == rb.unsqueeze(1)) & (ra != NO_NEIGHBOUR).unsqueeze(2)
        shared += int(match.any(2).sum())
    return shared / (num_items * k)


def overlap_matrix(spaces: Dict[str, Space], k: int = DEFAULT_K) -> Dict[str, object]:
    r"""The overlap of every pair of :obj:`spaces` (symmetric, diagonal 1 unless a space has
    zero rows).

    Returns:
        ``{'k', 'num_items', 'chance', 'spaces': [{'name', 'group', 'dim'}], 'matrix'}`` with
        ``matrix[r][c]`` = :math:`O(\text{space}_r, \text{space}_c)` and ``chance`` =
        :math:`k / (I - 1)`, the expected overlap of two unrelated spaces.
    """
    if not spaces:
        raise ConfigError('no embedding spaces to compare')
    sizes = {s.x.size(0) for s in spaces.values()}
    if len(sizes) != 1:
        raise ConfigError(f'the spaces have different numbers of items: {sorted(sizes)}')
    num_items = sizes.pop()
    lists = {name: neighbour_lists(s.x, k) for name, s in spaces.items()}
    names = list(spaces)
    matrix: List[List[Optional[float]]] = [[None] * len(names) for _ in names]
    for r, a in enumerate(names):
        for c in range(r, len(names)):
            value = overlap(lists[a], lists[names[c]])
            matrix[r][c] = matrix[c][r] = value
    return {
        'k': k,
        'num_items': num_items,
        'chance': k / (num_items - 1),
        'spaces': [{'name': s.name, 'group': s.group, 'dim': s.dim} for s in spaces.values()],
        'matrix': matrix,
    }
