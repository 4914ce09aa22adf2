r"""Accuracy per item-popularity bucket (the long tail).

Items are ordered by their number of training interactions (ties: lower id first) and split
into :math:`B` (default 5) quantile buckets of equal item count (``numpy.array_split`` of the
order: bucket 0 holds the least popular items, bucket :math:`B-1` the most popular).

The ranking is the ordinary full ranking of SPEC §5 (every item scored, training items masked);
only the judging changes: for bucket :math:`b`, a user's relevant set is
:math:`\mathrm{rel}_u \cap b`, users without a held-out item in :math:`b` are left out, and
Recall@K and NDCG@K are those of SPEC §5 on that set (hits counted only on :math:`b`'s items,
the ideal DCG over :math:`\min(|\mathrm{rel}_u \cap b|, K)` positions). This is the
package's :class:`~anchorrec_pyg.train.evaluator.Evaluator` run on the held-out edges whose
item is in :math:`b`. A model that ranks only popular items scores 0 on the tail buckets.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.schema import USER_ITEM
from anchorrec_pyg.train.evaluator import SPLITS, Evaluator, Scorer, as_score_fn

DEFAULT_BUCKETS = 5
DEFAULT_KS = (20, )


def popularity_buckets(data: HeteroData, num_buckets: int = DEFAULT_BUCKETS) -> Tensor:
    r"""``[I]`` bucket id of every item (0 = least popular), by training interaction count."""
    num_items = int(data['item'].num_nodes)
    if not 1 <= num_buckets <= num_items:
        raise ConfigError(f'--buckets must be in [1, {num_items}] (got {num_buckets})')
    count = np.bincount(data[USER_ITEM].edge_index[1].cpu().numpy(), minlength=num_items)
    order = np.argsort(count, kind='stable')
    bucket = np.empty(num_items, dtype=np.int64)
    for b, members in enumerate(np.array_split(order, num_buckets)):
        bucket[members] = b
    return torch.from_numpy(bucket)


def bucket_data(data: HeteroData, split: str, keep_items: Tensor) -> HeteroData:
    r"""The minimal data of :class:`Evaluator` whose :obj:`split` edges are those of
    :obj:`data` with an item in :obj:`keep_items` (a boolean ``[I]`` mask)."""
    store = data[USER_ITEM]
    held = getattr(store, SPLITS[split]).cpu()
    out = HeteroData()
    out['user'].num_nodes = int(data['user'].num_nodes)
    out['item'].num_nodes = int(data['item'].num_nodes)
    out[USER_ITEM].edge_index = store.edge_index.cpu()
    setattr(out[USER_ITEM], SPLITS[split], held[:, keep_items[held[1]]])
    return out


def long_tail_metrics(scorer: Scorer, data: HeteroData, buckets: Tensor,
                      ks: Sequence[int] = DEFAULT_KS, split: str = 'test',
                      batch_size: int = 4096) -> List[Dict[str, object]]:
    r"""Recall@K and NDCG@K per popularity bucket (and ``'all'``) of one scorer.

    Returns one row per bucket: ``{'bucket', 'items', 'min_count', 'max_count', 'train_share',
    'held_out', 'users', 'recall@K', 'ndcg@K'}`` (``train_share``: the bucket's share of the
    training interactions; ``held_out``/``users``: its held-out interactions and users).
    """
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} (got {split!r})")
    score_fn = as_score_fn(scorer, data)
    count = torch.bincount(data[USER_ITEM].edge_index[1].cpu(),
                           minlength=int(data['item'].num_nodes))
    num_buckets = int(buckets.max()) + 1
    groups = [(str(b), buckets == b) for b in range(num_buckets)]
    groups.append(('all', torch.ones_like(buckets, dtype=torch.bool)))
    rows: List[Dict[str, object]] = []
    for name, keep in groups:
        subset = bucket_data(data, split, keep)
        held = getattr(subset[USER_ITEM], SPLITS[split])
        row: Dict[str, object] = {
            'bucket': name, 'items': int(keep.sum()),
            'min_count': int(count[keep].min()), 'max_count': int(count[keep].max()),
            'train_share': float(count[keep].sum() / count.sum()),
            'held_out': int(held.size(1)), 'users': int(held[0].unique().numel()),
        }
        if held.size(1) > 0:
            metrics = Evaluator(subset, ks, batch_size).evaluate(score_fn, subset, split)
            row.update({f'{m}@{k}': metrics[f'{m}@{k}'] for m in ('recall', 'ndcg') for k in ks})
        else:
            row.update({f'{m}@{k}': float('nan') for m in ('recall', 'ndcg') for k in ks})
        rows.append(row)
    return rows
