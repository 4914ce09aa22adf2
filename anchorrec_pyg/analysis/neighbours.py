r"""Neighbour quality (SPEC §6, Fig. 5 of the AnchorRec paper).

For a target item :math:`t`, its :math:`n` (default 3) nearest neighbours :math:`N(t)` by cosine
similarity of the final item embeddings :math:`\mathbf Z_i` (the target excluded) are judged by

* **2-hop proximity** in the training interaction graph: with :math:`B \in \{0, 1\}^{U \times I}`
  the binary training interactions, the number of item-user-item paths
  :math:`\mathrm{paths}(t, j) = (B^\top B)_{tj} = |\mathcal U(t) \cap \mathcal U(j)|`
  (users who interacted with both), and its normalised form
  :math:`\mathrm{paths}(t, j) / \sqrt{\deg(t) \deg(j)}`, which is the cosine of the two items'
  interaction columns (0 when either item has no training interaction);
* **raw similarity**: :math:`\cos(F^m_t, F^m_j)` of the raw feature rows, for every raw table
  the dataset has (``image`` = visual, ``text`` = textual, ``mm`` = fused).

Each measure is averaged over the target's neighbours, then summarised over the targets as mean
and (population) standard deviation. The same targets are used for every run compared, and a
``random`` reference row gives the same measures for :math:`n` distinct random non-target items
per target (seeded): the level a space without any structure would reach.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from anchorrec_pyg.errors import ConfigError

DEFAULT_NEIGHBOURS = 3
DEFAULT_TARGETS = 1000
TARGET_CHUNK = 1024
RANDOM_LABEL = 'random'


def choose_targets(num_items: int, num_targets: int = DEFAULT_TARGETS,
                   items: Optional[Sequence[int]] = None, seed: int = 0) -> Tensor:
    r"""The target items: :obj:`items` when given (checked), else a seeded sample of
    :obj:`num_targets` distinct items (all items when there are fewer)."""
    if items is not None:
        bad = [i for i in items if not 0 <= i < num_items]
        if bad:
            raise ConfigError(f'--items: item id {bad[0]} is out of range (the dataset has '
                              f'{num_items} items, ids 0..{num_items - 1})')
        return torch.as_tensor(list(items), dtype=torch.long)
    if num_targets < 1:
        raise ConfigError(f'--num-targets must be >= 1 (got {num_targets})')
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=generator)[:num_targets].sort().values


def nearest_neighbours(x: Tensor, targets: Tensor, n: int = DEFAULT_NEIGHBOURS) -> Tensor:
    r"""``[T, n]`` the :obj:`n` items with the largest cosine similarity to each target in the
    rows of :obj:`x`, the target excluded (exact; ``T x I`` similarities per chunk)."""
    num_items = x.size(0)
    if not 1 <= n < num_items:
        raise ConfigError(f'--num-neighbours must be in [1, {num_items - 1}] (got {n})')
    unit = torch.nn.functional.normalize(x.float(), dim=1)
    out = []
    for start in range(0, targets.numel(), TARGET_CHUNK):
        chunk = targets[start:start + TARGET_CHUNK]
        sim = unit[chunk] @ unit.T
        sim[torch.arange(chunk.numel()), chunk] = -torch.inf
        out.append(sim.topk(n, dim=1).indices)
    return torch.cat(out)


def random_neighbours(num_items: int, targets: Tensor, n: int = DEFAULT_NEIGHBOURS,
                      seed: int = 0) -> Tensor:
    r"""``[T, n]`` distinct random items per target, the target excluded (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(targets.numel(), num_items, generator=generator)
    draws[torch.arange(targets.numel()), targets] = -1.0
    return draws.topk(n, dim=1).indices


def interaction_matrix(edge_index: Tensor, num_users: int, num_items: int) -> sp.csr_matrix:
    r"""The binary ``I x U`` matrix :math:`B^\top` of the training interactions."""
    user, item = edge_index.cpu().numpy()
    ones = np.ones(user.size, dtype=np.float64)
    matrix = sp.csr_matrix((ones, (item, user)), shape=(num_items, num_users))
    matrix.data[:] = 1.0  # repeated pairs count once
    return matrix


def two_hop(items_by_user: sp.csr_matrix, targets: Tensor,
            neighbours: Tensor) -> Dict[str, np.ndarray]:
    r"""``{'paths', 'paths_norm'}``, each ``[T, n]``: the item-user-item path counts between
    every target and each of its neighbours, and their normalised form."""
    t = np.repeat(targets.numpy(), neighbours.size(1))
    j = neighbours.reshape(-1).numpy()
    paths = np.asarray(items_by_user[t].multiply(items_by_user[j]).sum(1)).ravel()
    degree = np.asarray(items_by_user.sum(1)).ravel()
    scale = np.sqrt(degree[t] * degree[j])
    norm = np.divide(paths, scale, out=np.zeros_like(paths), where=scale > 0)
    shape = tuple(neighbours.shape)
    return {'paths': paths.reshape(shape), 'paths_norm': norm.reshape(shape)}


def raw_similarity(x: Tensor, targets: Tensor, neighbours: Tensor) -> np.ndarray:
    r"""``[T, n]`` cosine similarity of the raw rows of each target and its neighbours."""
    a = x[targets].double().unsqueeze(1).expand(-1, neighbours.size(1), -1)
    b = x[neighbours].double()
    return torch.nn.functional.cosine_similarity(a, b, dim=2).numpy()


def neighbour_quality(neighbours: Tensor, targets: Tensor, items_by_user: sp.csr_matrix,
                      raw: Dict[str, Tensor]) -> Dict[str, np.ndarray]:
    r"""Per target (``[T]`` each), the neighbour-averaged ``paths``, ``paths_norm`` and
    ``sim_<m>`` for every raw table :obj:`raw`."""
    measures = two_hop(items_by_user, targets, neighbours)
    for m, x in raw.items():
        measures[f'sim_{m}'] = raw_similarity(x, targets, neighbours)
    return {key: value.mean(1) for key, value in measures.items()}


def summarise(label: str, per_target: Dict[str, np.ndarray]) -> Dict[str, object]:
    r"""One table row: ``{'run', '<measure>_mean', '<measure>_std', ...}`` over targets."""
    row: Dict[str, object] = {'run': label}
    for key, values in per_target.items():
        row[f'{key}_mean'] = float(values.mean())
        row[f'{key}_std'] = float(values.std())
    return row


def compare_neighbours(spaces: Dict[str, Tensor], edge_index: Tensor, num_users: int,
                       raw: Dict[str, Tensor], targets: Tensor, n: int = DEFAULT_NEIGHBOURS,
                       seed: int = 0) -> Dict[str, object]:
    r"""Neighbour quality of several runs' item embeddings on the same targets.

    Args:
        spaces: Run label -> ``[I, d]`` item embeddings (e.g. each run's ``Z``).
        edge_index: The training interactions ``[2, E]`` (row 0 user, row 1 item).
        num_users: :math:`U`.
        raw: The raw feature tables of the dataset.
        targets: The target items.
        n: Neighbours per target.
        seed: Seed of the ``random`` reference.

    Returns:
        ``{'num_neighbours', 'targets', 'measures', 'rows': [summary rows, runs then
        random], 'neighbours': {label: [[...], ...]}}``.
    """
    num_items = next(iter(spaces.values())).size(0)
    items_by_user = interaction_matrix(edge_index, num_users, num_items)
    lists = {label: nearest_neighbours(x, targets, n) for label, x in spaces.items()}
    lists[RANDOM_LABEL] = random_neighbours(num_items, targets, n, seed)
    rows: List[Dict[str, object]] = []
    measures: List[str] = []
    for label, neighbours in lists.items():
        per_target = neighbour_quality(neighbours, targets, items_by_user, raw)
        measures = list(per_target)
        rows.append(summarise(label, per_target))
    return {
        'num_neighbours': n,
        'targets': targets.tolist(),
        'measures': measures,
        'rows': rows,
        'neighbours': {label: value.tolist() for label, value in lists.items()},
    }
