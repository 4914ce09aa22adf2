r"""Sampled subgraphs around a batch of (user, positive, negative) triples (``train.mode:
sampled``), in the ``HeteroData`` layout of PyG's heterogeneous link sampling.

A batch's **seed edges** are its ``(user, positive)`` pairs (``edge_label`` 1) and its ``(user,
negative)`` pairs (``edge_label`` 0). :class:`torch_geometric.loader.LinkLoader` hands them to a
:class:`torch_geometric.sampler.BaseSampler` and builds the mini-batch ``HeteroData`` from its
output (features and edge attributes sliced, ``n_id`` per node type, ``e_id`` per edge type,
``edge_label_index`` in local indices):

1. **User-item hops** (``train.fanout``, one entry per hop): starting from the seed users and
   items, every hop draws, for each node reached in the previous hop, up to ``fanout[h]`` of its
   neighbours over ``('user', 'interacts', 'item')`` (for items) and ``('item', 'rev_interacts',
   'user')`` (for users), uniformly without replacement (``-1``: all of them). Nodes are not
   duplicated (``disjoint=False``) and each node is expanded once, at the hop after it was
   reached, exactly as PyG's ``NeighborSampler`` with ``subgraph_type='directional'``.
   :class:`UserItemNeighborSampler` does this with torch operations and its own
   :class:`torch.Generator` (seeded, deterministic); with pyg-lib or torch-sparse installed,
   PyG's :class:`~torch_geometric.loader.LinkNeighborLoader` samples instead
   (:func:`pyg_sampling_available`).
2. **Modality kNN edges** (:class:`KnnClosure`): only for the views the model's losses read
   (:attr:`~anchorrec_pyg.models.RecModel.sampled_views`: per modality, which batch rows read
   it and its kNN steps ``n``): from the items whose view the batch reads (its positives,
   negatives, and the items its users aggregate at the first hop), ``n`` levels of incoming
   kNN edges (top-k, so at most ``k`` per item and level) with their source items, so that the
   view is exact there; the items the user-item hops reached only for the collaborative view
   get no kNN edges, and a model computes the view input of the edges' sources only
   (:func:`~anchorrec_pyg.models.base.view_input_rows`). With a kNN fan-out ``s``
   (``train.knn_fanout``) each item of a level keeps :math:`\min(s, k_i)` of its :math:`k_i`
   incoming edges, drawn uniformly without replacement, and only the drawn sources form the
   next level.
3. **Edge weights** (:class:`RescaledWeights`): a sampled user-item edge :math:`(j \to i)`
   keeps its full-graph SPEC §2 weight :math:`1/\sqrt{d_i d_j}` times
   :math:`d_i / s_i`, where :math:`s_i` is the number of neighbours drawn for :math:`i`. The sum
   over the drawn neighbours is then an unbiased estimate of the full graph's sum
   :math:`\sum_{j \in N(i)} x_j/\sqrt{d_i d_j}` (uniform sampling without replacement), so the
   embeddings the model trains on have the scale of the full-graph embeddings that evaluation
   ranks with. With ``-1`` (or :math:`d_i \le` fan-out) the factor is 1 and the seeds'
   embeddings equal the full graph's exactly, given as many hops as layers. The kNN edges keep
   their weights when all are kept (``train.knn_fanout: -1``, the default); with a kNN fan-out
   a drawn kNN edge into item :math:`i` is multiplied by :math:`k_i / s_i` in the same way, so
   that :math:`(\mathbf{A}_m\mathbf{X}_m)_i` on the subgraph is an unbiased estimate of the
   whole graph's at every closure level's items, and the factor is kept as the edge
   attribute ``edge_scale``. Over several levels (``n > 1``) each item draws once, at the level
   where it is first a destination, and every path through it reuses that draw: a path that
   passes an item twice (its self-loop, or a mutual pair at ``n = 3``) multiplies two
   indicators of one draw, so :math:`\mathbf{A}_m^n\mathbf{X}_m` keeps a bias there
   (docs/scale.md, "kNN fan-out"); at ``n = 1`` there is none.

Evaluation never sees a subgraph: it runs the full-graph forward once (SPEC §5).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.sampler import (
    BaseSampler,
    EdgeSamplerInput,
    HeteroSamplerOutput,
    NegativeSampling,
    NodeSamplerInput,
)
from torch_geometric.typing import EdgeType

from anchorrec_pyg.models.base import SampledView
from anchorrec_pyg.schema import ITEM_USER, MODALITIES, USER_ITEM, feature_key, knn_edge_type

logger = logging.getLogger(__name__)

__all__ = [
    'USER_ITEM',
    'ITEM_USER',
    'sampling_view',
    'pyg_sampling_available',
    'UserItemNeighborSampler',
    'KnnClosure',
    'RescaledWeights',
]

HOP_TYPES: Tuple[EdgeType, ...] = (USER_ITEM, ITEM_USER)


def pyg_sampling_available() -> bool:
    r"""Whether PyG's compiled neighbour sampling (pyg-lib or torch-sparse) is importable."""
    import torch_geometric.typing as pyg_typing
    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


def knn_edge_types(data: HeteroData) -> List[EdgeType]:
    r"""The ``('item', 'similar_<m>', 'item')`` edge types of :obj:`data`, in its order."""
    knn = {knn_edge_type(m) for m in MODALITIES}
    return [et for et in data.edge_types if et in knn]


def sampling_view(data: HeteroData, features: Sequence[str] = MODALITIES) -> HeteroData:
    r"""What subgraphs are cut from: :obj:`data`'s node counts, the item feature tables of the
    modalities :obj:`features` (sliced into every subgraph), its message-passing edges
    (user-item both ways, kNN graphs) with their ``edge_weight``; no validation or test edges.
    The tensors are shared, not copied."""
    view = HeteroData()
    feature_keys = {feature_key(m) for m in features}
    for node_type in ('user', 'item'):
        store = data[node_type]
        view[node_type].num_nodes = int(store.num_nodes)
        for key, value in store.items():
            if key in feature_keys and isinstance(value, Tensor):
                view[node_type][key] = value
    if USER_ITEM not in data.edge_types:
        raise ValueError(f'the data has no {USER_ITEM} edges')
    ui = data[USER_ITEM]
    view[USER_ITEM].edge_index = ui.edge_index
    view[USER_ITEM].edge_weight = ui.edge_weight
    if ITEM_USER in data.edge_types:
        view[ITEM_USER].edge_index = data[ITEM_USER].edge_index
        view[ITEM_USER].edge_weight = data[ITEM_USER].edge_weight
    else:
        view[ITEM_USER].edge_index = ui.edge_index.flip(0)
        view[ITEM_USER].edge_weight = ui.edge_weight
    for edge_type in knn_edge_types(data):
        view[edge_type].edge_index = data[edge_type].edge_index
        view[edge_type].edge_weight = data[edge_type].edge_weight
    return view


class _Incoming:
    r"""The incoming edges of every destination node of one edge type (CSC): for a set of
    destinations, all or a uniform sample of their neighbours with the edges' ids."""

    def __init__(self, edge_index: Tensor, num_dst: int) -> None:
        edge_index = edge_index.detach().cpu().long()
        order = torch.sort(edge_index[1], stable=True).indices
        self.src = edge_index[0, order]
        self.e_id = order
        self.ptr = torch.zeros(num_dst + 1, dtype=torch.long)
        self.ptr[1:] = torch.cumsum(torch.bincount(edge_index[1], minlength=num_dst), 0)

    def degree(self, dst: Tensor) -> Tensor:
        return self.ptr[dst + 1] - self.ptr[dst]

    def sample(self, dst: Tensor, fanout: int,
               generator: Optional[torch.Generator]) -> Tuple[Tensor, Tensor, Tensor]:
        r"""``(src, dst_pos, e_id)``: the drawn edges, ``dst_pos`` indexing :obj:`dst`."""
        deg = self.degree(dst)
        total = int(deg.sum())
        dst_pos = torch.repeat_interleave(torch.arange(dst.numel()), deg)
        first = torch.cumsum(deg, 0) - deg
        offset = torch.arange(total) - first[dst_pos]
        slot = self.ptr[dst][dst_pos] + offset
        if fanout != -1 and bool((deg > fanout).any()):
            # a uniform draw without replacement per destination: a random order inside each
            # destination's neighbours (sort by destination, then by a uniform key), then the
            # first `fanout` of each
            keys = torch.rand(total, generator=generator, dtype=torch.float64)
            order = torch.argsort(dst_pos.double() + keys)
            slot, dst_pos = slot[order], dst_pos[order]
            keep = offset < fanout  # offsets in destination order, unchanged by the sort
            slot, dst_pos = slot[keep], dst_pos[keep]
        return self.src[slot], dst_pos, self.e_id[slot]


class _Relabel:
    r"""Global -> local node ids of one node type during one batch: local ids are assigned in
    order of arrival (new nodes of one step sorted by global id); a kept map is reset after
    the batch, so a batch costs its own size, not the node count."""

    def __init__(self, num_nodes: int) -> None:
        self.map = torch.full((num_nodes, ), -1, dtype=torch.long)
        self.nodes: List[Tensor] = []
        self.count = 0

    def start(self, nodes: Tensor) -> None:
        r"""Registers distinct :obj:`nodes` as local ids ``0..n-1``, in their order."""
        self.map[nodes] = torch.arange(nodes.numel())
        self.count = nodes.numel()
        self.nodes = [nodes]

    def add(self, ids: Tensor) -> Tensor:
        r"""Registers the new ids among :obj:`ids`; returns the new ones (sorted)."""
        new = torch.unique(ids[self.map[ids] < 0])
        self.map[new] = torch.arange(self.count, self.count + new.numel())
        self.count += new.numel()
        self.nodes.append(new)
        return new

    def local(self, ids: Tensor) -> Tensor:
        return self.map[ids]

    def global_ids(self, local: Tensor) -> Tensor:
        r"""The global ids of local ids :obj:`local` (registered in this batch)."""
        return torch.cat(self.nodes)[local]

    def finish(self) -> Tensor:
        r"""All nodes in local order; resets the map."""
        nodes = torch.cat(self.nodes) if self.nodes else torch.empty(0, dtype=torch.long)
        self.map[nodes] = -1
        self.nodes, self.count = [], 0
        return nodes


class UserItemNeighborSampler(BaseSampler):
    r"""Per-hop uniform neighbour sampling on the user-item graph from seed links, with torch
    operations (PyG's :class:`~torch_geometric.sampler.NeighborSampler` needs pyg-lib or
    torch-sparse), returning PyG's :class:`~torch_geometric.sampler.HeteroSamplerOutput`.

    Args:
        view (HeteroData): The graph to sample from (:func:`sampling_view`).
        fanout (list of int): Neighbours drawn per node and hop (``-1``: all).
        generator (torch.Generator, optional): The source of randomness; reseed it (or set
            :attr:`generator`) for reproducible batches.
    """

    def __init__(self, view: HeteroData, fanout: Sequence[int],
                 generator: Optional[torch.Generator] = None) -> None:
        self.fanout = [int(f) for f in fanout]
        self.num_nodes = {t: int(view[t].num_nodes) for t in ('user', 'item')}
        self.incoming = {et: _Incoming(view[et].edge_index, self.num_nodes[et[2]])
                         for et in HOP_TYPES}
        self.relabel = {t: _Relabel(n) for t, n in self.num_nodes.items()}
        self.generator = generator

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> HeteroSamplerOutput:
        raise NotImplementedError('UserItemNeighborSampler samples from seed links only')

    def sample_from_edges(
        self,
        index: EdgeSamplerInput,
        neg_sampling: Optional[NegativeSampling] = None,
    ) -> HeteroSamplerOutput:
        if neg_sampling is not None:
            raise ValueError('UserItemNeighborSampler takes the batch\'s own negatives as seed '
                             'links (edge_label 0); it does not draw negatives')
        if tuple(index.input_type) != USER_ITEM:
            raise ValueError(f'seed links must be {USER_ITEM} edges, got {index.input_type}')
        relabel = self.relabel
        seeds = {'user': index.row.long(), 'item': index.col.long()}
        frontier = {t: relabel[t].add(ids) for t, ids in seeds.items()}
        label_index = torch.stack([relabel['user'].local(seeds['user']),
                                   relabel['item'].local(seeds['item'])])
        num_sampled_nodes = {t: [f.numel()] for t, f in frontier.items()}
        rows: Dict[EdgeType, List[Tensor]] = {et: [] for et in HOP_TYPES}
        cols: Dict[EdgeType, List[Tensor]] = {et: [] for et in HOP_TYPES}
        edges: Dict[EdgeType, List[Tensor]] = {et: [] for et in HOP_TYPES}
        num_sampled_edges: Dict[EdgeType, List[int]] = {et: [] for et in HOP_TYPES}
        for fanout in self.fanout:
            found: Dict[str, Tensor] = {}
            for edge_type in HOP_TYPES:
                src_type, _, dst_type = edge_type
                dst = frontier[dst_type]
                src, dst_pos, e_id = self.incoming[edge_type].sample(dst, fanout,
                                                                     self.generator)
                found[src_type] = relabel[src_type].add(src)
                rows[edge_type].append(relabel[src_type].local(src))
                cols[edge_type].append(relabel[dst_type].local(dst)[dst_pos])
                edges[edge_type].append(e_id)
                num_sampled_edges[edge_type].append(e_id.numel())
            frontier = found
            for node_type, new in found.items():
                num_sampled_nodes[node_type].append(new.numel())
        return HeteroSamplerOutput(
            node={t: relabel[t].finish() for t in ('user', 'item')},
            row={et: torch.cat(v) for et, v in rows.items()},
            col={et: torch.cat(v) for et, v in cols.items()},
            edge={et: torch.cat(v) for et, v in edges.items()},
            num_sampled_nodes=num_sampled_nodes,
            num_sampled_edges=num_sampled_edges,
            metadata=(index.input_id, label_index, index.label, index.time),
        )


class KnnClosure:
    r"""Adds, to a sampler's output, the modality kNN edges a model's views need (a
    ``transform_sampler_output`` of :class:`~torch_geometric.loader.LinkLoader`).

    For each modality ``m`` of :obj:`views` (:attr:`~anchorrec_pyg.models.RecModel.sampled_views`)
    its *level 0* is the batch's items whose view the losses read: the positives and/or the
    negatives (the seed links labelled 1 / 0) and/or, for the users' view
    :math:`\mathbf{R}\mathbf{H}_m`, the items the seed users aggregate (the sources of the first
    hop's item-to-user edges). Then, ``hops`` times, every incoming edge of the level's items in
    ``('item', 'similar_<m>', 'item')`` is added and its new source items form the next level.
    So :math:`\mathbf{A}_m^{hops}\mathbf{X}_m` on the subgraph equals the whole graph's at
    level 0, given :math:`\mathbf{X}_m` at the edges' sources; no other kNN edge is added (the
    other modalities' edge types stay empty). ``num_sampled_edges[<m edge type>]`` counts the
    edges per level (level 0 first: :func:`~anchorrec_pyg.models.base.exact_view_items`), and
    ``num_sampled_nodes['item']`` gets one entry, the items the closure added.

    With :obj:`fanout` ``s`` (``train.knn_fanout``, ``-1``: every edge) each item of a level
    keeps :math:`\min(s, k_i)` of its :math:`k_i` incoming edges, drawn uniformly without
    replacement with :obj:`generator`, and only their sources form the next level; each item
    is a destination once per modality (at the first level it is in), so
    :class:`RescaledWeights` reads :math:`s_i` off the subgraph. The draw consumes no random
    numbers when no item of a level has more than ``s`` incoming edges (``-1``: never).
    """

    def __init__(self, view: HeteroData, views: Optional[Mapping[str, SampledView]] = None,
                 fanout: int = -1, generator: Optional[torch.Generator] = None) -> None:
        self.fanout, self.generator = int(fanout), generator
        self.num_items = int(view['item'].num_nodes)
        present = set(knn_edge_types(view))
        self.views = dict(views or {})
        for m in self.views:
            if knn_edge_type(m) not in present:
                raise ValueError(f'the data has no {knn_edge_type(m)} edges for the {m} view')
        self.incoming = {m: _Incoming(view[knn_edge_type(m)].edge_index, self.num_items)
                         for m in self.views}
        self.empty = [et for et in knn_edge_types(view)
                      if et not in {knn_edge_type(m) for m in self.views}]
        self.relabel = _Relabel(self.num_items)

    def level_zero(self, out: HeteroSamplerOutput, needs: SampledView) -> Tensor:
        r"""The local items whose view the batch reads (see the class docstring), distinct."""
        _, label_index, label = out.metadata[:3]
        parts = []
        if needs.positives:
            parts.append(label_index[1][label == 1])
        if needs.negatives:
            parts.append(label_index[1][label == 0])
        if needs.users:
            first = int(out.num_sampled_edges[ITEM_USER][0])
            parts.append(out.row[ITEM_USER][:first])
        if not parts:
            return torch.empty(0, dtype=torch.long)
        return torch.unique(torch.cat(parts).long())

    def __call__(self, out: HeteroSamplerOutput) -> HeteroSamplerOutput:
        relabel = self.relabel
        relabel.start(out.node['item'])
        added = 0
        for m, needs in self.views.items():
            edge_type = knn_edge_type(m)
            incoming = self.incoming[m]
            level = self.level_zero(out, needs)  # local ids
            closed = level
            rows, cols, edges, counts = [], [], [], []
            for _ in range(needs.hops):
                dst = relabel.global_ids(level)
                src, dst_pos, e_id = incoming.sample(dst, self.fanout, self.generator)
                new = relabel.add(src)
                added += new.numel()
                local = relabel.local(src)
                rows.append(local)
                cols.append(level[dst_pos])
                edges.append(e_id)
                counts.append(e_id.numel())
                level = torch.unique(local)
                level = level[~torch.isin(level, closed)]
                closed = torch.cat([closed, level])
            out.row[edge_type] = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
            out.col[edge_type] = torch.cat(cols) if cols else torch.empty(0, dtype=torch.long)
            out.edge[edge_type] = torch.cat(edges) if edges else torch.empty(0, dtype=torch.long)
            if out.num_sampled_edges is not None:
                out.num_sampled_edges[edge_type] = counts
        for edge_type in self.empty:
            out.row[edge_type] = out.col[edge_type] = out.edge[edge_type] = torch.empty(
                0, dtype=torch.long)
            if out.num_sampled_edges is not None:
                out.num_sampled_edges[edge_type] = [0]
        out.node['item'] = relabel.finish()
        if out.num_sampled_nodes is not None:
            out.num_sampled_nodes['item'] = list(out.num_sampled_nodes['item']) + [added]
        return out


class RescaledWeights:
    r"""Rescales the sampled user-item edges' weights by :math:`d_i / s_i` (full degree over
    drawn neighbours of the destination, see the module docstring), and, for the modalities
    :obj:`knn` whose closure drew a kNN fan-out, the kNN edges' weights by :math:`k_i / s_i`
    (full in-degree in that kNN graph over edges drawn), that factor kept per edge in
    ``edge_scale``; a ``transform`` of :class:`~torch_geometric.loader.LinkLoader`. The kNN edge
    types of the other modalities are left as sliced (every incoming edge kept: factor 1)."""

    def __init__(self, view: HeteroData, knn: Sequence[str] = ()) -> None:
        self.degree = {
            et: torch.bincount(view[et].edge_index[1], minlength=int(view[et[2]].num_nodes))
            for et in HOP_TYPES
        }
        num_items = int(view['item'].num_nodes)
        self.knn_degree = {
            knn_edge_type(m): torch.bincount(view[knn_edge_type(m)].edge_index[1],
                                             minlength=num_items)
            for m in knn
        }

    def __call__(self, sub: HeteroData) -> HeteroData:
        for edge_type in HOP_TYPES:
            store = sub[edge_type]
            store.edge_weight = store.edge_weight * self._scale(sub, edge_type,
                                                                self.degree[edge_type])
        for edge_type, degree in self.knn_degree.items():
            store = sub[edge_type]
            store.edge_scale = self._scale(sub, edge_type, degree)
            store.edge_weight = store.edge_weight * store.edge_scale
        return sub

    @staticmethod
    def _scale(sub: HeteroData, edge_type: EdgeType, degree: Tensor) -> Tensor:
        r"""Per edge of :obj:`sub`'s :obj:`edge_type`: the full in-degree of its destination
        over the edges the subgraph holds into it."""
        store = sub[edge_type]
        dst_type = edge_type[2]
        dst = store.edge_index[1]
        drawn = torch.bincount(dst, minlength=int(sub[dst_type].num_nodes))
        full = degree[sub[dst_type].n_id]
        scale = full.to(store.edge_weight.dtype) / drawn.clamp(min=1)
        return scale[dst]
