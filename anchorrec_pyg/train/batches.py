r"""Batch sources: what the trainer propagates for each batch (``train.mode``).

A batch source yields ``(graph, users, positives, negatives)`` per batch, the indices local to
``graph`` (so that ``model(graph)`` gives the rows ``model.loss(graph, out, users, pos, neg)``
reads); the trainer never needs to know which source it has.

* :class:`FullBatches` (``full``, the default and the published math): the whole graph for
  every batch, the indices global.
* :class:`SampledBatches` (``sampled``): a subgraph around the batch's users, positives and
  negatives (:mod:`anchorrec_pyg.train.subgraph`), built by
  :class:`torch_geometric.loader.LinkLoader`.

Both draw the (user, positive, negative) triples of SPEC §4 from the same
:class:`~anchorrec_pyg.train.sampler.TripletSampler` and the run's generator. With several
processes (:class:`Shard`) every process draws the same global batch and keeps its own
contiguous share of the rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.models.base import SampledView
from anchorrec_pyg.schema import MODALITIES
from anchorrec_pyg.train.sampler import TripletSampler
from anchorrec_pyg.train.subgraph import (
    ITEM_USER,
    USER_ITEM,
    KnnClosure,
    RescaledWeights,
    UserItemNeighborSampler,
    knn_edge_types,
    pyg_sampling_available,
    sampling_view,
)

__all__ = ['Shard', 'FullBatches', 'SampledBatches', 'GraphBatch']

#: ``(graph, users, positives, negatives)``; ``negatives`` is ``None`` for models that declare
#: ``needs_negatives = False``.
GraphBatch = Tuple[HeteroData, Tensor, Tensor, Optional[Tensor]]


@dataclass(frozen=True)
class Shard:
    r"""This process's share of every global batch: the :obj:`rank`-th of :obj:`world`
    contiguous parts (``Tensor.tensor_split``)."""
    rank: int = 0
    world: int = 1

    def __call__(self, rows: Optional[Tensor]) -> Optional[Tensor]:
        if rows is None or self.world == 1:
            return rows
        return rows.tensor_split(self.world)[self.rank]


class FullBatches:
    r"""The whole graph :obj:`data` with every batch (``train.mode: full``)."""

    description = 'full graph per batch'

    def __init__(self, data: HeteroData, triplets: TripletSampler,
                 shard: Shard = Shard()) -> None:
        self.data, self.triplets, self.shard = data, triplets, shard

    def __len__(self) -> int:
        return len(self.triplets)

    def epoch(self, generator: torch.Generator, epoch: int) -> Iterator[GraphBatch]:
        for users, pos, neg in self.triplets.epoch(generator):
            yield self.data, self.shard(users), self.shard(pos), self.shard(neg)


class SampledBatches:
    r"""A sampled subgraph per batch (``train.mode: sampled``, see
    :mod:`anchorrec_pyg.train.subgraph`).

    The neighbour sampler has its own generator, seeded at every epoch from the run's seed,
    the epoch and the process rank: the run's generator draws exactly the triples of
    ``train.mode: full`` (with ``fanout`` all ``-1`` the two modes see the same batches), the
    processes keep drawing the same global batches, and a resumed run redraws an epoch's
    subgraphs.

    Args:
        data (HeteroData): The full graph (Contract 1), on the CPU.
        triplets (TripletSampler): The source of the (user, positive, negative) rows.
        fanout (list of int): ``train.fanout``.
        seed (int, optional): The run's seed.
        shard (Shard, optional): This process's share of each batch.
        device (torch.device, optional): Where the subgraphs go.
        views (dict, optional): The model's
            :attr:`~anchorrec_pyg.models.RecModel.sampled_views`, whose kNN edges the
            subgraphs hold (:class:`~anchorrec_pyg.train.subgraph.KnnClosure`); none by
            default.
        features (list of str, optional): The modalities whose file feature rows the
            subgraphs carry (the model's
            :attr:`~anchorrec_pyg.models.RecModel.sampled_features`); default: every table.
        knn_fanout (int, optional): ``train.knn_fanout``: the incoming kNN edges drawn per
            item and closure level (``-1``, the default: all of them), their weights scaled
            by :math:`k_i / s_i`; drawn with the neighbour sampler's generator.
    """

    def __init__(self, data: HeteroData, triplets: TripletSampler, fanout: Sequence[int],
                 seed: int = 0, shard: Shard = Shard(),
                 device: torch.device = torch.device('cpu'),
                 views: Optional[Mapping[str, SampledView]] = None,
                 features: Optional[Sequence[str]] = None, knn_fanout: int = -1) -> None:
        self.triplets, self.seed, self.shard, self.device = triplets, seed, shard, device
        self.view = sampling_view(data, MODALITIES if features is None else features)
        self.generator = torch.Generator()
        self.closure = KnnClosure(self.view, views, knn_fanout, self.generator)
        self.rescale = RescaledWeights(self.view, () if knn_fanout == -1 else list(views or {}))
        knn = ('-1 (every incoming kNN edge)' if knn_fanout == -1 else
               f'{knn_fanout} (incoming kNN edges per item and level, weights x k_i/s_i)')
        if knn_fanout != -1 and any(v.hops > 1 for v in (views or {}).values()):
            knn += (' [more than one kNN step: each item draws once, so the views keep a '
                    'self-loop bias, docs/scale.md]')
        head = f'sampled subgraphs, fan-out {list(fanout)}, kNN fan-out {knn}'
        if pyg_sampling_available():
            from torch_geometric.sampler import NeighborSampler
            hops = len(fanout)
            num_neighbors = {USER_ITEM: list(fanout), ITEM_USER: list(fanout)}
            num_neighbors.update({et: [0] * hops for et in knn_edge_types(self.view)})
            self.sampler = NeighborSampler(self.view, num_neighbors=num_neighbors,
                                           subgraph_type='directional', disjoint=False)
            self.description = (f'{head}: PyG NeighborSampler (pyg-lib/torch-sparse) via '
                                'LinkLoader')
        else:
            self.sampler = UserItemNeighborSampler(self.view, fanout, self.generator)
            self.description = (f'{head}: UserItemNeighborSampler (torch ops; pyg-lib and '
                                'torch-sparse are not installed) via LinkLoader')

    def __len__(self) -> int:
        return len(self.triplets)

    def subgraph(self, users: Tensor, pos: Tensor, neg: Optional[Tensor]) -> GraphBatch:
        r"""The subgraph of one batch and its rows in local indices."""
        from torch_geometric.loader import LinkLoader
        n = users.numel()
        seeds = torch.stack([users, pos])
        label = torch.ones(n)
        if neg is not None:
            seeds = torch.cat([seeds, torch.stack([users, neg])], dim=1)
            label = torch.cat([label, torch.zeros(n)])
        loader = LinkLoader(self.view, self.sampler, edge_label_index=(USER_ITEM, seeds),
                            edge_label=label, transform_sampler_output=self.closure,
                            transform=self.rescale)
        sub = loader(torch.arange(seeds.size(1)))
        local = sub[USER_ITEM].edge_label_index
        sub_neg = None if neg is None else local[1, n:].to(self.device)
        return sub.to(self.device), local[0, :n].to(self.device), local[1, :n].to(
            self.device), sub_neg

    def epoch(self, generator: torch.Generator, epoch: int) -> Iterator[GraphBatch]:
        self.generator.manual_seed(
            (self.seed * 1_000_003 + epoch) * 1009 + self.shard.rank)
        for users, pos, neg in self.triplets.epoch(generator):
            yield self.subgraph(self.shard(users), self.shard(pos), self.shard(neg))
