r"""Feature-quality evaluations without training a recommender (SPEC §8).

Each scorer turns one feature table :math:`F \in \mathbb R^{I \times d}` into full-ranking scores
and is evaluated by the package's :class:`~anchorrec_pyg.train.evaluator.Evaluator` (SPEC §5
metrics, training items masked), so feature sets (VGG vs CLIP vs BEiT-3, or one's own) can be
compared in seconds. With :math:`\hat F_i = F_i / \lVert F_i \rVert` (a zero row stays zero) and
:math:`\mathcal I(u)` the training items of user :math:`u`:

* **zero-shot**: :math:`p_u = \frac{1}{|\mathcal I(u)|}\sum_{j \in \mathcal I(u)} \hat F_j` and
  :math:`s(u, i) = \cos(p_u, F_i)`;
* **item-CF**: with the shrunk similarity
  :math:`\tilde s(j, i) = \langle F_j, F_i\rangle / (\lVert F_j\rVert \lVert F_i\rVert + h)`
  (:math:`h` = ``shrink``, default 0: the cosine; MMRec's ItemKNNCBF uses 10) restricted to each
  item's :math:`k` (default 10) most similar items :math:`N_k(j)` (the item itself included, as in
  SPEC §2), :math:`s(u, i) = \sum_{j \in \mathcal I(u)} \tilde s(j, i)\,[i \in N_k(j)]`.
  With ``shrink = 0`` the top-k lists come from the data layer's memory-bounded exact
  :func:`~anchorrec_pyg.data.knn.cosine_knn`.

:func:`masked_metrics` is the third evaluation, **modality masking**: the drop in a trained
model's metrics when a seeded random fraction of the items (default 0.5) has one modality's rows
replaced by zeros, for each modality in turn. Masked are, for that modality, both

* the raw table ``data['item'].x_<m>`` (what a model reads from the dataset: AnchorRec's
  projection heads ``W_t``/``W_v`` and its AMP targets), and
* the model's trainable copy used in the forward pass (AnchorRec's ``features.<m>`` parameter;
  see :func:`feature_copies`),

with the same item set for every modality. The item-item kNN graphs stay as they were built
from the unmasked files: they are part of the dataset's structure, not a feature table.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from anchorrec_pyg.data.knn import NO_NEIGHBOUR, cosine_knn
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.schema import MODALITIES, USER_ITEM, feature_key
from anchorrec_pyg.train.evaluator import Evaluator, ScoreFn

if TYPE_CHECKING:
    from anchorrec_pyg.data.mmrec import Interactions

logger = logging.getLogger(__name__)

DEFAULT_KNN_K = 10
DEFAULT_SHRINK = 0.0
DEFAULT_MASK_FRACTION = 0.5
SHRINK_ROW_CHUNK = 1024
GRAM_BUDGET_BYTES = 1 << 30
METHODS = ('zero-shot', 'item-cf')


def _training_matrix(data: HeteroData) -> sp.csr_matrix:
    """The binary ``U x I`` training interaction matrix."""
    user, item = data[USER_ITEM].edge_index.cpu().numpy()
    shape = (int(data['user'].num_nodes), int(data['item'].num_nodes))
    matrix = sp.csr_matrix((np.ones(user.size), (user, item)), shape=shape)
    matrix.data[:] = 1.0
    return matrix


def _check_table(features: Tensor, data: HeteroData) -> Tensor:
    num_items = int(data['item'].num_nodes)
    if features.dim() != 2 or features.size(0) != num_items:
        raise ConfigError(f'a feature table must be [I = {num_items}, d], got '
                          f'{list(features.shape)}')
    return features.float().cpu()


def zero_shot_scorer(features: Tensor, data: HeteroData,
                     gram_budget_bytes: int = GRAM_BUDGET_BYTES) -> ScoreFn:
    r"""The zero-shot score function ``users [n] -> [n, I]`` of :obj:`features` (see the module
    docstring).

    With :math:`M` the row-normalised training matrix (``U x I``), the profiles are
    :math:`P = M\hat F` and the scores :math:`P \hat F^\top / \lVert P_u\rVert`. When
    :math:`U > I` and the item Gram matrix :math:`G = \hat F \hat F^\top` fits in
    :obj:`gram_budget_bytes`, the scores are computed as :math:`M G / \lVert P_u\rVert` (the
    same numbers): ``I^2 d`` multiply-adds once instead of ``U I d`` for every evaluated split.
    """
    unit = torch.nn.functional.normalize(_check_table(features, data), dim=1)
    matrix = _training_matrix(data)
    degree = np.asarray(matrix.sum(1)).ravel()
    mean = sp.diags(np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)) @ matrix
    profile = torch.from_numpy(np.asarray(mean @ unit.double().numpy())).float()
    num_users, num_items = mean.shape
    if num_users > num_items and num_items * num_items * 4 <= gram_budget_bytes:
        gram = (unit @ unit.T).numpy()
        inv_norm = 1.0 / profile.norm(dim=1).clamp_min(1e-12).unsqueeze(1)
        mean = mean.astype(np.float32).tocsr()

        def score(users: Tensor) -> Tensor:
            rows = users.cpu()
            return torch.from_numpy(np.asarray(mean[rows.numpy()] @ gram)) * inv_norm[rows]
        return score

    profile = torch.nn.functional.normalize(profile, dim=1)

    def score(users: Tensor) -> Tensor:
        return profile[users.cpu()] @ unit.T
    return score


def shrunk_knn(features: Tensor, k: int = DEFAULT_KNN_K,
               shrink: float = DEFAULT_SHRINK) -> Tuple[Tensor, Tensor]:
    r"""``(index, similarity)``, ``[I, k]`` each: every item's :obj:`k` largest shrunk
    similarities :math:`\langle F_j, F_i\rangle / (\lVert F_j\rVert\lVert F_i\rVert + h)`.

    ``shrink = 0`` is the cosine kNN of the data layer; otherwise rows are processed in chunks
    (memory ``1024 x I`` similarities)."""
    if shrink < 0:
        raise ConfigError(f'--shrink must be >= 0 (got {shrink})')
    num_items = features.size(0)
    if not 1 <= k <= num_items:
        raise ConfigError(f'--knn-k must be in [1, {num_items}] (got {k})')
    if shrink == 0:
        return cosine_knn(features, k)
    x = features.float()
    norm = x.norm(dim=1)
    index, value = [], []
    for start in range(0, num_items, SHRINK_ROW_CHUNK):
        rows = slice(start, start + SHRINK_ROW_CHUNK)
        sim = (x[rows] @ x.T) / (norm[rows].unsqueeze(1) * norm + shrink)
        top = sim.topk(k, dim=1)
        index.append(top.indices)
        value.append(top.values)
    return torch.cat(index), torch.cat(value)


def item_cf_scorer(features: Tensor, data: HeteroData, k: int = DEFAULT_KNN_K,
                   shrink: float = DEFAULT_SHRINK) -> ScoreFn:
    r"""The item-CF score function ``users [n] -> [n, I]`` of :obj:`features` (see the module
    docstring)."""
    features = _check_table(features, data)
    num_items = features.size(0)
    index, value = shrunk_knn(features, k, shrink)
    keep = index != NO_NEIGHBOUR
    rows = torch.arange(num_items).unsqueeze(1).expand_as(index)[keep].numpy()
    similarity = sp.csr_matrix((value[keep].double().numpy(), (rows, index[keep].numpy())),
                               shape=(num_items, num_items))
    matrix = _training_matrix(data)

    def score(users: Tensor) -> Tensor:
        return torch.from_numpy((matrix[users.cpu().numpy()] @ similarity).toarray()).float()
    return score


def random_scorer(num_items: int, seed: int = 0) -> ScoreFn:
    r"""Uniformly random scores (seeded per call order): the chance reference."""
    generator = torch.Generator().manual_seed(seed)

    def score(users: Tensor) -> Tensor:
        return torch.rand(users.numel(), num_items, generator=generator)
    return score


def evaluate_features(tables: Dict[str, Tensor], data: HeteroData,
                      ks: Sequence[int] = (5, 10, 20, 50),
                      splits: Sequence[str] = ('valid', 'test'), knn_k: int = DEFAULT_KNN_K,
                      shrink: float = DEFAULT_SHRINK, batch_size: int = 4096,
                      progress: bool = False, seed: int = 0) -> List[Dict[str, object]]:
    r"""Zero-shot and item-CF metrics of every feature table, plus a ``random`` reference row.

    Returns one row per (table, method, split): ``{'features', 'dim', 'method', 'split',
    'recall@K', 'ndcg@K', ...}``.
    """
    evaluator = Evaluator(data, ks, batch_size, progress=progress)
    num_items = int(data['item'].num_nodes)
    rows: List[Dict[str, object]] = []
    for name, x in tables.items():
        scorers = {'zero-shot': zero_shot_scorer(x, data),
                   'item-cf': item_cf_scorer(x, data, knn_k, shrink)}
        for method, scorer in scorers.items():
            for split in splits:
                metrics = evaluator.evaluate(scorer, data, split)
                rows.append({'features': name, 'dim': int(x.size(1)), 'method': method,
                             'split': split, **metrics})
                logger.info('%s %s %s: recall@%d %.4f', name, method, split, max(ks),
                            metrics[f'recall@{max(ks)}'])
    for split in splits:
        metrics = evaluator.evaluate(random_scorer(num_items, seed), data, split)
        rows.append({'features': 'random', 'dim': 0, 'method': 'random', 'split': split,
                     **metrics})
    return rows


def interaction_data(inter: Interactions) -> HeteroData:
    r"""The minimal :class:`HeteroData` the evaluator needs (Contract 1's node counts and
    training/validation/test edges; no graphs, no features)."""
    data = HeteroData()
    data['user'].num_nodes = inter.num_users
    data['item'].num_nodes = inter.num_items
    store = data[USER_ITEM]
    store.edge_index = torch.from_numpy(inter.train).long()
    store.val_edge_index = torch.from_numpy(inter.valid).long()
    store.test_edge_index = torch.from_numpy(inter.test).long()
    return data


def parse_feature_arg(text: str) -> Tuple[str, Path]:
    r"""``NAME=PATH`` or ``PATH`` (the name is then the file name without ``.npy``)."""
    name, sep, path = text.partition('=')
    if not sep:
        return Path(text).stem, Path(text)
    if not name:
        raise ConfigError(f'--features {text!r}: the name before = is empty')
    return name, Path(path)


def load_feature_folder(
    folder: Union[str, os.PathLike],
    extra: Sequence[str] = (),
    inter_file: Optional[str] = None,
    mm_dir: Optional[str] = None,
    image_file: str = 'image_feat.npy',
    text_file: str = 'text_feat.npy',
    mm_file: str = 'image_feat.npy',
) -> Tuple[HeteroData, Dict[str, Tensor]]:
    r"""The interactions and feature tables of an MMRec folder ``<root>/<name>`` (SPEC §1).

    :obj:`folder` may also be the name of a synthetic preset (``default``, ``tiny``, ``baby``),
    generated once into the package cache. The tables are ``image`` (``image_feat.npy``),
    ``text`` (``text_feat.npy``) and ``mm`` (``<root>/<name>_beit3/image_feat.npy``), each
    skipped when absent, plus the :obj:`extra` ``[NAME=]PATH`` ``.npy`` files.

    Returns:
        ``(data, tables)``: the data of :func:`interaction_data` and ``{name: [I, d]}``.
    """
    from anchorrec_pyg.data import PRESETS, ensure_default_dataset
    from anchorrec_pyg.data.mmrec import load_features, load_inter
    folder = Path(folder).expanduser()
    if not folder.exists() and str(folder) in PRESETS:
        root, name = ensure_default_dataset(preset=str(folder))
        folder = Path(root) / name
    if not folder.is_dir():
        raise DataError(f'dataset folder not found: {folder} (expected an MMRec folder '
                        f"<root>/<name>/ or a synthetic preset: {', '.join(PRESETS)})")
    name = folder.resolve().name
    inter = load_inter(folder / (inter_file or f'{name}.inter'))
    mm_folder = Path(mm_dir).expanduser() if mm_dir else folder.parent / f'{name}_beit3'
    files = {'mm': mm_folder / mm_file, 'text': folder / text_file,
             'image': folder / image_file}
    tables: Dict[str, Tensor] = {}
    for key, path in files.items():
        if path.is_file():
            tables[key] = torch.from_numpy(load_features(path, inter.num_items))
        else:
            logger.info('no %s features in %s (looked for %s)', key, folder, path)
    for text in extra:
        key, path = parse_feature_arg(text)
        if key in tables:
            raise ConfigError(f'--features: the name {key!r} is used twice (pass NAME=PATH)')
        tables[key] = torch.from_numpy(load_features(path, inter.num_items))
    if not tables:
        looked = ', '.join(str(p) for p in files.values())
        raise DataError(f'{folder}: no feature tables found (looked for {looked}) and none '
                        'given with --features')
    return interaction_data(inter), tables


# Modality masking ##############################################################################

def mask_items(num_items: int, fraction: float = DEFAULT_MASK_FRACTION, seed: int = 0) -> Tensor:
    r"""The masked items: a seeded random ``round(fraction * I)`` of them, sorted."""
    if not 0 < fraction <= 1:
        raise ConfigError(f'--mask-fraction must be in (0, 1] (got {fraction})')
    generator = torch.Generator().manual_seed(seed)
    count = int(round(fraction * num_items))
    return torch.randperm(num_items, generator=generator)[:count].sort().values


def feature_copies(model: torch.nn.Module, modality: str,
                   shape: Optional[torch.Size] = None) -> List[Tuple[str, Tensor]]:
    r"""The model's trainable copies of the raw table of :obj:`modality`: parameters or
    buffers named ``features.<m>`` (AnchorRec's convention), or, failing that and given the raw
    table's :obj:`shape`, those of exactly that shape with ``feat`` in their name."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    exact = [(n, t) for n, t in named
             if n == f'features.{modality}' or n.endswith(f'.features.{modality}')]
    if exact or shape is None:
        return exact
    return [(n, t) for n, t in named if tuple(t.shape) == tuple(shape) and 'feat' in n]


def _raw_shape(data: HeteroData, modality: str) -> Optional[torch.Size]:
    key = feature_key(modality)
    return data['item'][key].shape if key in data['item'] else None


@contextlib.contextmanager
def masked_modality(model: torch.nn.Module, data: HeteroData, modality: str,
                    items: Tensor) -> Iterator[HeteroData]:
    r"""Within the block, :obj:`modality`'s rows of :obj:`items` are zero in the model's
    trainable copies (:func:`feature_copies`; in place, restored afterwards) and in the raw
    table of the yielded shallow copy of :obj:`data` (:obj:`data` itself is not modified)."""
    masked = copy.copy(data)
    key = feature_key(modality)
    if key in data['item']:
        table = data['item'][key].clone()
        table[items.to(table.device)] = 0
        masked['item'][key] = table
    copies = [t for _, t in feature_copies(model, modality, _raw_shape(data, modality))]
    saved = [t.detach()[items.to(t.device)].clone() for t in copies]
    try:
        with torch.no_grad():
            for t in copies:
                t[items.to(t.device)] = 0
        yield masked
    finally:
        with torch.no_grad():
            for t, rows in zip(copies, saved):
                t[items.to(t.device)] = rows


def model_modalities(model: torch.nn.Module, data: HeteroData) -> List[str]:
    r"""The modalities a model can be masked in: those whose raw table is in :obj:`data` or of
    which the model holds a trainable copy."""
    return [m for m in MODALITIES
            if feature_key(m) in data['item'] or feature_copies(model, m)]


def masked_metrics(model: torch.nn.Module, data: HeteroData, ks: Sequence[int],
                   modalities: Optional[Sequence[str]] = None,
                   fraction: float = DEFAULT_MASK_FRACTION, seed: int = 0,
                   splits: Sequence[str] = ('valid', 'test'), batch_size: int = 4096,
                   progress: bool = False) -> Dict[str, object]:
    r"""The modality-masking evaluation of a trained model (see the module docstring).

    Returns ``{'fraction', 'seed', 'num_masked', 'modalities', 'rows'}`` with one row per
    (masking, split): ``{'masked': 'none' | m, 'split', 'metric@K': ..., 'drop_metric@K':
    unmasked - masked, 'rel_drop_metric@K': drop / unmasked}``.
    """
    available = model_modalities(model, data)
    if modalities is None:
        modalities = available
    missing = [m for m in modalities if m not in available]
    if missing:
        raise ConfigError(f"--modalities: the run has no {missing[0]!r} features (it has: "
                          f"{', '.join(available) or 'none'})")
    evaluator = Evaluator(data, ks, batch_size, progress=progress)
    items = mask_items(int(data['item'].num_nodes), fraction, seed)
    base = {split: evaluator.evaluate(model, data, split) for split in splits}
    rows: List[Dict[str, object]] = [{'masked': 'none', 'split': split, **base[split]}
                                     for split in splits]
    for m in modalities:
        copies = feature_copies(model, m, _raw_shape(data, m))
        logger.info('masking %s in %d items: raw table %s, model copies %s', m, items.numel(),
                    feature_key(m) if feature_key(m) in data['item'] else '-',
                    ', '.join(n for n, _ in copies) or '-')
        with masked_modality(model, data, m, items) as masked:
            for split in splits:
                metrics = evaluator.evaluate(model, masked, split)
                row: Dict[str, object] = {'masked': m, 'split': split, **metrics}
                for key, value in metrics.items():
                    drop = base[split][key] - value
                    row[f'drop_{key}'] = drop
                    row[f'rel_drop_{key}'] = drop / base[split][key] \
                        if base[split][key] > 0 else math.nan
                rows.append(row)
    return {'fraction': fraction, 'seed': seed, 'num_masked': int(items.numel()),
            'modalities': list(modalities), 'rows': rows}
