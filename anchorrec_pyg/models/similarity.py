r"""The targets of the similarity-preservation terms (SPEC §4 AMP, §7 AlignRec's sim), for the
models with a ``similarity_cache_mb`` budget (AnchorRec, AlignRec), and the "raw" feature rows
they (and AnchorRec's AAL mixture) read.

"Raw" rows (SPEC §4): in the published code the trainable feature copies share storage with
the tables they were made from, so the targets read the *current trained* values of the copy,
without a gradient through them (:func:`raw_rows`, the default); the file's rows are the
paper's reading (a model's ``raw_from_files`` switch). A trained copy changes every step, so
only file rows (or a frozen copy) are cached.

A target :math:`\mathbf{S}` holds the cosine similarities of a modality's feature rows for a
batch's distinct positive items; :class:`~anchorrec_pyg.losses.SimilarityPreservationLoss`
takes it with the embedding rows of those items. It is either gathered from the ``I x I`` matrix
computed once (:class:`~anchorrec_pyg.losses.PackedCosineSimilarity`, packed lower triangle) or
carried as the batch's normalised rows; the loss is the same either way, the cache trades memory
for recomputation.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.losses import PackedCosineSimilarity, SimilarityTarget
from anchorrec_pyg.models.base import node_rows
from anchorrec_pyg.nn.propagation import TensorCache
from anchorrec_pyg.schema import feature_key

__all__ = ['raw_rows', 'cached_similarities', 'similarity_target', 'batch_similarity_target']


def raw_rows(data: HeteroData, copy: Tensor, modality: str, from_files: bool,
             items: Tensor | None = None) -> Tensor:
    """The raw rows of ``modality`` for ``data``'s items (``items``: only those local items,
    distinct): the model's feature ``copy`` (its rows for a subgraph; published) or, with
    ``from_files``, the file's table ``data['item'].x_<modality>`` (the paper's reading). Not
    detached: the caller reads it without gradient."""
    if from_files:
        table = data['item'][feature_key(modality)]
        return table if items is None else table.index_select(0, items)
    return node_rows(copy, data, 'item', items)


def batch_similarity_target(cache: TensorCache, name: str, data: HeteroData, copy: Tensor,
                            modality: str, from_files: bool, distinct: Tensor, counts: Tensor,
                            cached: bool, dtype: torch.dtype | None = None) -> SimilarityTarget:
    """:func:`similarity_target` of the :func:`raw_rows` of ``modality``: from the whole table
    when ``cached``, otherwise from the rows of ``distinct`` alone (no other row is gathered)."""
    if cached:
        return similarity_target(cache, name, raw_rows(data, copy, modality, from_files),
                                 distinct, counts, True, dtype)
    return similarity_target(cache, name,
                             raw_rows(data, copy.detach(), modality, from_files, distinct),
                             None, counts, False, dtype)


def cached_similarities(data: HeteroData, modalities: tuple[str, ...], budget_mb: float,
                        fixed_rows: bool) -> tuple[str, ...]:
    """The modalities (of ``modalities``) whose ``I x I`` cosine-similarity matrix fits the
    budget of ``budget_mb`` MiB (all modalities together), spent on the tables that are the most
    expensive to recompute per batch: the widest feature table first. None unless the target
    rows are ``fixed_rows`` (the file rows, or frozen copies: a trained copy changes every
    step), and none on a sampled subgraph (``n_id`` on the items): its table is new every
    batch."""
    if not fixed_rows or 'n_id' in data['item']:
        return ()
    budget = budget_mb * 2**20
    num_items = int(data['item'].num_nodes)
    cached = []
    for m in sorted(modalities, key=lambda m: -data['item'][feature_key(m)].size(1)):
        size = PackedCosineSimilarity.nbytes(num_items,
                                             data['item'][feature_key(m)].element_size())
        if size <= budget:
            cached.append(m)
            budget -= size
    return tuple(cached)


def similarity_target(cache: TensorCache, name: str, table: Tensor, distinct: Tensor | None,
                      counts: Tensor, cached: bool,
                      dtype: torch.dtype | None = None) -> SimilarityTarget:
    """The target of the cosine similarities of ``table``'s rows ``distinct`` (a batch's sorted
    distinct items, with multiplicities ``counts``: ``torch.unique(items, return_counts=True)``).

    With ``cached`` the ``I x I`` matrix of ``table`` is computed once and kept in ``cache`` under
    ``name`` (keyed by the table's identity and in-place version), and the block of ``distinct``
    gathered from it; otherwise the target carries the distinct rows, normalised (``distinct``
    ``None``: ``table`` holds exactly those rows, in order). ``table`` is read detached.

    Raises:
        ValueError: ``cached`` for a table that requires grad (a trained feature copy changes
            at every optimiser step: only fixed rows, file rows or frozen copies, are cached).
    """
    if cached and table.requires_grad:
        raise ValueError(f'similarity target {name!r}: the I x I cache holds fixed rows only '
                         '(file rows or frozen features), not a trained feature copy')
    if cached:
        packed = cache.get(name, (table, ), lambda: PackedCosineSimilarity(table.detach()))
        block = packed.block(distinct)
        return SimilarityTarget(counts, block=block.to(dtype or block.dtype))
    picked = table.detach() if distinct is None else table.detach().index_select(0, distinct)
    unit_rows = torch.nn.functional.normalize(picked, dim=-1)
    return SimilarityTarget(counts, unit_rows=unit_rows.to(dtype or unit_rows.dtype))
