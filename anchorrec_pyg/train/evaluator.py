r"""Full-ranking evaluation (SPEC §5).

For every user with validation (or test) interactions, all ``I`` items are scored, the user's
**training** items are masked out (validation items are *not* masked at test time) and the
top-``K`` list is compared with the held-out items. With :math:`\mathrm{rel}_u` the held-out items
of user :math:`u`, :math:`\mathrm{hit}_u(r) \in \{0, 1\}` whether the item at rank :math:`r` is
relevant and :math:`n_u = \min(|\mathrm{rel}_u|, K)`:

.. math::
    \mathrm{Recall@K} &= \frac{1}{|\mathcal{U}|} \sum_u
        \frac{\sum_{r \le K} \mathrm{hit}_u(r)}{|\mathrm{rel}_u|}, \qquad
    \mathrm{Precision@K} = \frac{1}{|\mathcal{U}|} \sum_u
        \frac{\sum_{r \le K} \mathrm{hit}_u(r)}{K},

    \mathrm{NDCG@K} &= \frac{1}{|\mathcal{U}|} \sum_u
        \frac{\sum_{r \le K} \mathrm{hit}_u(r) / \log_2(r + 1)}
             {\sum_{r \le n_u} 1 / \log_2(r + 1)}, \qquad
    \mathrm{HitRate@K} = \frac{1}{|\mathcal{U}|} \sum_u \max_{r \le K} \mathrm{hit}_u(r),

    \mathrm{MAP@K} &= \frac{1}{|\mathcal{U}|} \sum_u \frac{1}{n_u} \sum_{r \le K}
        \mathrm{hit}_u(r) \, \frac{\sum_{s \le r} \mathrm{hit}_u(s)}{r}.

These are exactly the definitions of :class:`torch_geometric.metrics.LinkPredRecall`,
:class:`~torch_geometric.metrics.LinkPredNDCG`, :class:`~torch_geometric.metrics.LinkPredPrecision`,
:class:`~torch_geometric.metrics.LinkPredMAP` and :class:`~torch_geometric.metrics.LinkPredHitRatio`
(and of MMRec's ``metrics.py``), so those classes compute them here (``tests/test_metrics.py``
checks them against hand-computed examples). What this module adds is the part PyG leaves to the
caller: scoring all items, masking training items through the CSR form of the training edges and
batching users so that memory stays at ``batch_size x I`` scores whatever the number of users.

The scorer is either a :class:`~anchorrec_pyg.models.base.RecModel` (scores
``out.user[users] @ out.item.T``, Contract 2), a :class:`~anchorrec_pyg.models.base.RecOutput`, or
any function mapping a user-id tensor ``[n]`` to a score matrix ``[n, I]``, so that scorers that
are not trained (popularity, feature zero-shot) reuse the same protocol.
"""
from typing import Callable, Dict, Iterable, List, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.metrics import (
    LinkPredHitRatio,
    LinkPredMAP,
    LinkPredMetricCollection,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)
from torch_geometric.utils.sparse import index2ptr

from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models.base import RecOutput
from anchorrec_pyg.schema import USER_ITEM

ScoreFn = Callable[[Tensor], Tensor]
Scorer = Union[torch.nn.Module, RecOutput, ScoreFn]

#: Metric name (as written in result keys, e.g. ``recall@20``) -> PyG metric class.
METRICS = {
    'recall': LinkPredRecall,
    'ndcg': LinkPredNDCG,
    'precision': LinkPredPrecision,
    'map': LinkPredMAP,
    'hit': LinkPredHitRatio,
}

#: Splits of Contract 1 and the edge attribute holding their interactions.
SPLITS = {'valid': 'val_edge_index', 'test': 'test_edge_index'}


def metric_keys(ks: Iterable[int]) -> List[str]:
    r"""The result keys for cut-offs :obj:`ks`, e.g. ``['recall@20', 'ndcg@20', ...]``."""
    return [f'{name}@{k}' for name in METRICS for k in ks]


class EmbeddingScorer:
    r"""The score function of final embeddings: ``users -> user[users] @ item.T``.

    Args:
        user (Tensor): The final user embeddings ``[U, d]``.
        item (Tensor): The final item embeddings ``[I, d]``.
        reuse_buffer (bool, optional): Compute every call's scores into one buffer kept between
            calls (the evaluator consumes each batch before asking for the next): a fresh
            ``batch x I`` matrix per batch would cost page faults of the same order as the
            product itself. A returned matrix is then overwritten by the next call.
            (default: :obj:`False`)
    """
    def __init__(self, user: Tensor, item: Tensor, reuse_buffer: bool = False) -> None:
        self.user, self.item_t = user.detach(), item.detach().t()
        self.reuse_buffer = reuse_buffer
        self._buffer: Tensor = self.user.new_empty(0)

    def __call__(self, users: Tensor) -> Tensor:
        rows = self.user.index_select(0, users.to(self.user.device))
        if not self.reuse_buffer:
            return rows @ self.item_t
        size = rows.size(0) * self.item_t.size(1)
        if self._buffer.numel() < size:
            self._buffer = rows.new_empty(size)
        return torch.mm(rows, self.item_t, out=self._buffer[:size].view(rows.size(0), -1))


def as_score_fn(scorer: Scorer, data: HeteroData, reuse_buffer: bool = False) -> ScoreFn:
    r"""Turns a model, a :class:`RecOutput` or a score function into a score function.

    A model is run once, in evaluation mode and without gradients, on :obj:`data`; its training
    mode is restored afterwards. Embeddings are scored by an :class:`EmbeddingScorer` (with
    :obj:`reuse_buffer`).
    """
    if isinstance(scorer, torch.nn.Module):
        was_training = scorer.training
        scorer.eval()
        with torch.no_grad():
            out = scorer(data)
        scorer.train(was_training)
        return as_score_fn(out, data, reuse_buffer)
    if isinstance(scorer, RecOutput):
        return EmbeddingScorer(scorer.user, scorer.item, reuse_buffer)
    if callable(scorer):
        return scorer
    raise TypeError(f'cannot score with an object of type {type(scorer).__name__}')


class PopularityScorer:
    r"""The popularity reference ranking: every user is offered the items in decreasing order
    of their number of training interactions (ties: lower item id first), so that
    :class:`Evaluator` measures it under the same protocol as a trained model (full ranking,
    the user's training items masked, SPEC §5). Nothing is trained.

    The score of the item at position :math:`r` (0-based) of that order is :math:`I - r`
    (exact integers, so the ranking has no ties for ``topk`` to break).

    Args:
        data (HeteroData): The dataset (Contract 1); only its training edges are read.
    """
    def __init__(self, data: HeteroData) -> None:
        items = data[USER_ITEM].edge_index[1].detach().cpu()
        num_items = int(data['item'].num_nodes)
        count = torch.bincount(items, minlength=num_items)
        order = torch.argsort(count, descending=True, stable=True)
        self.score = torch.empty(num_items)
        self.score[order] = torch.arange(num_items, 0, -1, dtype=torch.float)

    def __call__(self, users: Tensor) -> Tensor:
        return self.score.repeat(users.numel(), 1)  # a fresh matrix: the evaluator masks it


class Evaluator:
    r"""Full-ranking evaluator bound to one dataset (SPEC §5).

    It caches the CSR form of the training edges (the mask) and the held-out edges of each
    split, so that evaluating after every epoch costs only the scoring itself.

    Args:
        data (HeteroData): The dataset (Contract 1).
        ks (Sequence[int], optional): The cut-offs :math:`K`. (default: :obj:`(5, 10, 20, 50)`)
        batch_size (int, optional): The number of users scored at once; memory is bounded by
            ``batch_size x I`` scores. (default: :obj:`1024`)
        progress (bool, optional): Show a progress bar over user batches. (default: :obj:`False`)
    """
    def __init__(
        self,
        data: HeteroData,
        ks: Sequence[int] = (5, 10, 20, 50),
        batch_size: int = 1024,
        progress: bool = False,
    ) -> None:
        if len(ks) == 0 or min(ks) <= 0:
            raise ConfigError(f'eval.ks must be a non-empty list of positive ints (got {ks})')
        self.ks = tuple(int(k) for k in ks)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.num_users = int(data['user'].num_nodes)
        self.num_items = int(data['item'].num_nodes)

        store = data[USER_ITEM]
        row, col = store.edge_index.detach().cpu()
        perm = row.argsort(stable=True)
        self.train_rowptr = index2ptr(row[perm], self.num_users)
        self.train_col = col[perm]
        self.labels = {
            split: self._sort_by_user(getattr(store, attr, None))
            for split, attr in SPLITS.items()
        }

    @staticmethod
    def _sort_by_user(edge_index: Union[Tensor, None]) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Returns ``(users, counts, items)``: the unique users of a split, their number of
        held-out items and the items, grouped by user in the order of ``users``."""
        if edge_index is None:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty, empty
        row, col = edge_index.detach().cpu()
        perm = row.argsort(stable=True)
        users, counts = torch.unique_consecutive(row[perm], return_counts=True)
        return users, counts, col[perm]

    def users(self, split: str) -> Tensor:
        r"""The users evaluated on :obj:`split`: those with at least one held-out item."""
        return self._labels(split)[0]

    def _labels(self, split: str) -> Tuple[Tensor, Tensor, Tensor]:
        if split not in self.labels:
            raise ConfigError(f"unknown split '{split}' (expected one of {sorted(SPLITS)})")
        return self.labels[split]

    def mask_training_items(self, scores: Tensor, users: Tensor) -> Tensor:
        r"""Sets the scores of each user's training items to :math:`-\infty` (in place)."""
        users = users.cpu()
        start = self.train_rowptr[users]
        count = self.train_rowptr[users + 1] - start
        rows = torch.repeat_interleave(torch.arange(users.numel()), count)
        offset = torch.repeat_interleave(start - (count.cumsum(0) - count), count)
        cols = self.train_col[torch.arange(rows.numel()) + offset]
        scores[rows.to(scores.device), cols.to(scores.device)] = float('-inf')
        return scores

    def _batches(self, num: int, desc: str) -> Iterable[int]:
        from tqdm.auto import tqdm
        starts = range(0, num, self.batch_size)
        return tqdm(starts, desc=desc, leave=False, disable=not self.progress)

    @torch.no_grad()
    def rank(
        self,
        scorer: Scorer,
        data: HeteroData,
        users: Tensor,
        k: int,
        exclude_train: bool = True,
    ) -> Tuple[Tensor, Tensor]:
        r"""Returns the top-:obj:`k` items ``[n, k]`` of every user in :obj:`users` and their
        scores, training items excluded unless :obj:`exclude_train` is :obj:`False`. :obj:`k` is
        capped at the number of items; a user with fewer than :obj:`k` items outside training
        gets item ``-1`` with score ``-inf`` in the positions past them (as faiss pads)."""
        score_fn = as_score_fn(scorer, data, reuse_buffer=True)
        users = torch.as_tensor(users, dtype=torch.long).view(-1).cpu()
        k = min(int(k), self.num_items)
        items, values = [], []
        for start in self._batches(users.numel(), 'ranking'):
            batch = users[start:start + self.batch_size]
            scores = score_fn(batch).float()
            if exclude_train:
                scores = self.mask_training_items(scores, batch)
            top = scores.topk(k, dim=-1)
            indices = top.indices.masked_fill(top.values == float('-inf'), -1)
            items.append(indices.cpu())
            values.append(top.values.cpu())
        if not items:
            return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
        return torch.cat(items), torch.cat(values)

    @torch.no_grad()
    def evaluate(self, scorer: Scorer, data: HeteroData, split: str = 'valid') -> Dict[str, float]:
        r"""Returns ``{'recall@K': ..., 'ndcg@K': ..., 'precision@K': ..., 'map@K': ...,
        'hit@K': ...}`` for every configured :math:`K`, averaged over the users of
        :obj:`split`."""
        users, counts, items = self._labels(split)
        score_fn = as_score_fn(scorer, data, reuse_buffer=True)
        metrics = LinkPredMetricCollection({
            f'{name}@{k}': cls(k)
            for name, cls in METRICS.items() for k in self.ks
        }).double()  # accumulate the per-user values in float64
        max_k = min(metrics.max_k, self.num_items)
        ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        for start in self._batches(users.numel(), f'evaluating {split}'):
            end = min(start + self.batch_size, users.numel())
            batch = users[start:end]
            scores = self.mask_training_items(score_fn(batch).float(), batch)
            top = scores.topk(max_k, dim=-1).indices.cpu()
            local_row = torch.repeat_interleave(torch.arange(end - start), counts[start:end])
            label_items = items[ptr[start]:ptr[end]]
            metrics.update(top, (local_row, label_items))
        return {key: float(value) for key, value in metrics.compute().items()}


def evaluate(
    scorer: Scorer,
    data: HeteroData,
    split: str = 'valid',
    ks: Sequence[int] = (5, 10, 20, 50),
    batch_size: int = 1024,
) -> Dict[str, float]:
    r"""Full-ranking metrics of :obj:`scorer` on :obj:`split` (``'valid'`` or ``'test'``).

    :obj:`scorer` is a model, a :class:`RecOutput` or a function ``users [n] -> scores [n, I]``.
    See :class:`Evaluator`.
    """
    return Evaluator(data, ks, batch_size).evaluate(scorer, data, split)


def rank_topk(
    scorer: Scorer,
    data: HeteroData,
    users: Union[Tensor, Sequence[int]],
    k: int = 20,
    batch_size: int = 1024,
    exclude_train: bool = True,
) -> Tuple[Tensor, Tensor]:
    r"""The top-:obj:`k` recommendations ``(items [n, k], scores [n, k])`` of :obj:`users`,
    training items excluded (item ``-1``, score ``-inf`` past a user's last candidate). See
    :meth:`Evaluator.rank`."""
    users = torch.as_tensor(users, dtype=torch.long).view(-1)
    evaluator = Evaluator(data, (max(int(k), 1), ), batch_size)
    return evaluator.rank(scorer, data, users, k, exclude_train)
