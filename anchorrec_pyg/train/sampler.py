r"""Vectorised sampler of (user, positive, negative) training triples (SPEC §4).

Every epoch the training interactions are reshuffled and cut into batches of ``B`` rows. Each
positive pair :math:`(u, p)` receives one negative item :math:`n` drawn uniformly from the items
that occur in the training split and re-drawn while :math:`(u, n)` is a training interaction
(MMRec's behaviour). Rejection sampling is done for all rows at once: only the rejected rows are
re-drawn, so the number of Python iterations is the number of rejection rounds, not the number of
rows. All randomness comes from an explicit :class:`torch.Generator`, so an epoch is reproducible
from the generator's state.
"""
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from anchorrec_pyg.errors import DataError

Batch = Tuple[Tensor, Tensor, Optional[Tensor]]


class TripletSampler:
    r"""Draws shuffled batches of (user, positive, negative) triples from the training edges.

    Args:
        edge_index (torch.Tensor): The training interactions ``[2, E]`` (row 0 users, row 1
            items), as in ``data['user', 'interacts', 'item'].edge_index``.
        num_items (int): The number of items ``I``.
        batch_size (int): The number of triples per batch ``B`` (the last batch may be smaller).
        with_negatives (bool, optional): If :obj:`False`, batches carry positive pairs only and
            the negative slot is :obj:`None` (models that declare ``needs_negatives = False``).
            (default: :obj:`True`)
    """
    def __init__(
        self,
        edge_index: Tensor,
        num_items: int,
        batch_size: int,
        with_negatives: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"'batch_size' must be positive (got {batch_size})")
        edge_index = edge_index.detach().cpu().long()
        if edge_index.numel() == 0:
            raise DataError('the training split holds no interaction; nothing to train on')
        self.users, self.items = edge_index[0].contiguous(), edge_index[1].contiguous()
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.with_negatives = with_negatives

        # Candidate negatives: the items that occur in the training split.
        self.candidates = torch.unique(self.items)
        # Sorted unique keys u * I + i of the training pairs, for vectorised membership tests.
        self.train_keys = torch.unique(self.users * self.num_items + self.items)

        if with_negatives:
            pairs_per_user = torch.bincount(self.train_keys // self.num_items)
            full = (pairs_per_user >= self.candidates.numel()).nonzero().view(-1)
            if full.numel() > 0:
                raise DataError(f'user {int(full[0])} has interacted with every item of the '
                                f'training split, so no negative item can be sampled for it')

    @property
    def num_interactions(self) -> int:
        return self.users.numel()

    def __len__(self) -> int:
        r"""The number of batches per epoch."""
        return -(-self.num_interactions // self.batch_size)

    def is_training_pair(self, users: Tensor, items: Tensor) -> Tensor:
        r"""Returns a boolean mask telling which :obj:`(users[k], items[k])` are training
        interactions."""
        query = users * self.num_items + items
        pos = torch.searchsorted(self.train_keys, query).clamp_(max=self.train_keys.numel() - 1)
        return self.train_keys[pos] == query

    def sample_negatives(self, users: Tensor, generator: torch.Generator) -> Tensor:
        r"""Draws one negative item per entry of :obj:`users` (SPEC §4)."""
        num_candidates = self.candidates.numel()
        draw = torch.randint(num_candidates, users.shape, generator=generator)
        neg = self.candidates[draw]
        rejected = self.is_training_pair(users, neg).nonzero().view(-1)
        while rejected.numel() > 0:
            draw = torch.randint(num_candidates, rejected.shape, generator=generator)
            neg[rejected] = self.candidates[draw]
            still = self.is_training_pair(users[rejected], neg[rejected])
            rejected = rejected[still]
        return neg

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        r"""Yields the batches of one epoch: a fresh permutation of the training interactions
        and fresh negatives, all drawn from :obj:`generator` before the first batch."""
        perm = torch.randperm(self.num_interactions, generator=generator)
        users, pos = self.users[perm], self.items[perm]
        neg = self.sample_negatives(users, generator) if self.with_negatives else None
        for start in range(0, self.num_interactions, self.batch_size):
            end = start + self.batch_size
            yield users[start:end], pos[start:end], None if neg is None else neg[start:end]
