r"""Serving a trained run: export its embeddings, and top-K lists from a run or an export.

A trained model scores :math:`s(u, i) = \langle Z_u[u], Z_i[i] \rangle` (Contract 2), so serving
needs only the final embeddings and, to leave out what a user already has, the training items.
:func:`export_run` writes them to a folder that needs neither the model code's configuration
nor the dataset::

    <out>/user_emb.npy       [U, d] float32, the final user embeddings Z_u
    <out>/item_emb.npy       [I, d] float32, the final item embeddings Z_i
    <out>/train_indptr.npy   [U + 1] int64 and
    <out>/train_items.npy    [E] int64: user u's training items are
                             train_items[train_indptr[u]:train_indptr[u + 1]] (CSR)
    <out>/user_map.csv       original ids (original_id,index), when the dataset has them
    <out>/item_map.csv       (written by ``featurize``)
    <out>/items.faiss        with faiss installed: an exact inner-product index of item_emb
                             (faiss.IndexFlatIP, built by torch_geometric's MIPSKNNIndex)
    <out>/manifest.json      model, dataset, run, its metrics, sizes, how to score, md5 of files

:class:`Recommender` ranks for a run folder or an export folder: every item but the user's
training items, by score; a user with fewer candidate items than :math:`k` (the number of items
minus the user's training items) gets the shorter list of all of them. With an index the search
goes through :meth:`torch_geometric.nn.pool.MIPSKNNIndex.search` with the training items as
``exclude_links``; it is exact (a flat index), and a user for whom faiss's limit of 2048 results
cuts the list short is ranked by the dense product instead, so both paths give the same lists
(``tests/test_export.py``), except where two items' scores tie to float32 rounding (faiss and
torch sum the products in different orders; 1 of 19,445 Baby-shaped users in
``benchmarks/featurize.py``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from anchorrec_pyg.errors import CheckpointError, ConfigError
from anchorrec_pyg.io import (
    atomic_write_text,
    lock_file,
    make_staging_folder,
    remove_staging_folders,
)
from anchorrec_pyg.schema import USER_ITEM

logger = logging.getLogger(__name__)

FORMAT = 'anchorrec-pyg/export'
VERSION = 1
MANIFEST = 'manifest.json'
INDEX_FILE = 'items.faiss'
MAP_FILES = ('user_map.csv', 'item_map.csv')
FAISS_MAX_K = 2048

PathLike = Union[str, os.PathLike]


def faiss_available() -> bool:
    r"""Whether faiss (the ``serve`` extra, ``faiss-cpu``) imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _md5(path: Path) -> str:
    from anchorrec_pyg.data.encoders import md5_file
    return md5_file(path)


def _train_csr(edge_index: Tensor, num_users: int) -> Tuple[np.ndarray, np.ndarray]:
    row, col = edge_index.detach().cpu().numpy()
    perm = np.lexsort((col, row))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=num_users))])
    return indptr.astype(np.int64), col[perm].astype(np.int64)


class Recommender:
    r"""Top-K lists from final embeddings, the training items of each user excluded.

    Args:
        user_emb (Tensor): ``[U, d]`` final user embeddings.
        item_emb (Tensor): ``[I, d]`` final item embeddings.
        train_indptr, train_items (Tensor): the training items of each user (CSR).
        user_ids, item_ids (list of str, optional): the original ids (index = position).
        index (MIPSKNNIndex, optional): an inner-product index of :obj:`item_emb`.
        batch_size (int, optional): users scored at once. (default: :obj:`1024`)
    """
    def __init__(self, user_emb: Tensor, item_emb: Tensor, train_indptr: Tensor,
                 train_items: Tensor, user_ids: Optional[List[str]] = None,
                 item_ids: Optional[List[str]] = None, index: Any = None,
                 batch_size: int = 1024) -> None:
        self.user_emb, self.item_emb = user_emb.float(), item_emb.float()
        self.train_indptr, self.train_items = train_indptr.long(), train_items.long()
        self.user_ids, self.item_ids = user_ids, item_ids
        self.index = index
        self.batch_size = int(batch_size)
        self.num_users, self.num_items = self.user_emb.size(0), self.item_emb.size(0)

    @classmethod
    def from_run(cls, run: PathLike, device: Optional[str] = None) -> 'Recommender':
        r"""The recommender of a run folder or checkpoint (its best validation epoch)."""
        from anchorrec_pyg.train.runner import load_trained_model
        model, data, config = load_trained_model(run, device)
        with torch.no_grad():
            out = model(data)
        num_users = int(data['user'].num_nodes)
        indptr, items = _train_csr(data[USER_ITEM].edge_index, num_users)
        user_ids, item_ids = _dataset_maps(config)
        return cls(out.user.detach().cpu(), out.item.detach().cpu(), torch.from_numpy(indptr),
                   torch.from_numpy(items), user_ids, item_ids)

    @classmethod
    def from_export(cls, folder: PathLike, use_index: bool = True) -> 'Recommender':
        r"""The recommender of an :func:`export_run` folder; its faiss index is used when
        :obj:`use_index` and faiss is installed. Every file is checked against the md5 in the
        manifest first."""
        from anchorrec_pyg.data.featurize import read_id_map
        folder = Path(folder)
        manifest = read_manifest(folder)
        for name, digest in manifest['files'].items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f'{folder}: {name} is missing (export again)')
            if _md5(path) != digest:
                raise CheckpointError(f'{path}: content differs from the md5 in {MANIFEST} '
                                      '(corrupt or edited; export again)')
        arrays = {}
        for name in ('user_emb', 'item_emb', 'train_indptr', 'train_items'):
            arrays[name] = torch.from_numpy(np.load(folder / f'{name}.npy', allow_pickle=False))
        maps = [read_id_map(folder / f) if (folder / f).is_file() else None for f in MAP_FILES]
        index = None
        if use_index and INDEX_FILE in manifest['files'] and faiss_available():
            import faiss
            import faiss.contrib.torch_utils  # noqa: F401 (faiss calls on torch tensors)
            from torch_geometric.nn.pool import MIPSKNNIndex
            index = MIPSKNNIndex()
            index.index = faiss.read_index(str(folder / INDEX_FILE))
        return cls(arrays['user_emb'], arrays['item_emb'], arrays['train_indptr'],
                   arrays['train_items'], maps[0], maps[1], index)

    def candidates(self, users: Tensor) -> Tensor:
        r"""The number of items each of :obj:`users` can be recommended (not in training)."""
        return self.num_items - (self.train_indptr[users + 1] - self.train_indptr[users])

    def _exclude(self, users: Tensor) -> Tuple[Tensor, Tensor]:
        r"""``(local row, item)`` of the training items of :obj:`users`."""
        start = self.train_indptr[users]
        count = self.train_indptr[users + 1] - start
        rows = torch.repeat_interleave(torch.arange(users.numel()), count)
        offset = torch.repeat_interleave(start - (count.cumsum(0) - count), count)
        return rows, self.train_items[torch.arange(rows.numel()) + offset]

    def _dense(self, users: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        scores = self.user_emb[users] @ self.item_emb.t()
        rows, cols = self._exclude(users)
        scores[rows, cols] = float('-inf')
        top = scores.topk(min(k, self.num_items), dim=1)
        return top.values, top.indices

    def _indexed(self, users: Tensor, k: int) -> Tuple[Tensor, Tensor]:
        rows, cols = self._exclude(users)
        k_search = min(k, self.num_items)
        with warnings.catch_warnings():  # the 2048 cap is handled below
            warnings.simplefilter('ignore', UserWarning)
            score, index = self.index.search(self.user_emb[users], k_search,
                                             exclude_links=torch.stack([rows, cols]))
        # faiss returns at most 2048 hits: a user whose list came back short of its candidates
        # is ranked by the dense product.
        found = (index >= 0).sum(dim=1)
        short = found < torch.clamp(self.candidates(users), max=k_search)
        if short.any():
            s_dense, i_dense = self._dense(users[short], k_search)
            score, index = score.clone(), index.clone()
            score[short], index[short] = s_dense, i_dense
        return score, index

    @torch.no_grad()
    def top_k(self, users: Sequence[int] | Tensor, k: int, use_index: bool = True,
              progress: bool = False) -> List[Tuple[List[int], List[float]]]:
        r"""``[(items, scores), ...]`` per user: the :obj:`k` best items by score, training
        items never included; a user with fewer candidates gets all of them."""
        from tqdm.auto import tqdm
        if k < 1:
            raise ConfigError(f'--k must be >= 1 (got {k})')
        users = torch.as_tensor(users, dtype=torch.long).view(-1)
        out: List[Tuple[List[int], List[float]]] = []
        search = self._indexed if (use_index and self.index is not None) else self._dense
        for start in tqdm(range(0, users.numel(), self.batch_size), desc='ranking',
                          leave=False, disable=not progress):
            batch = users[start:start + self.batch_size]
            score, index = search(batch, k)
            keep = (index >= 0) & torch.isfinite(score)
            for r in range(batch.numel()):
                out.append((index[r][keep[r]].tolist(), score[r][keep[r]].tolist()))
        return out

    def user_index(self, ids: Sequence[str]) -> List[int]:
        r"""The indices of user ids as the user types them: original ids when the data has a
        user map, else 0-based ints. Raises :class:`ConfigError` naming the first unknown."""
        if self.user_ids is not None:
            lookup = {u: j for j, u in enumerate(self.user_ids)}
            for u in ids:
                if u not in lookup:
                    raise ConfigError(f'--users: unknown user id {u!r} (ids are the original '
                                      'ids of user_map.csv)')
            return [lookup[u] for u in ids]
        out = []
        for u in ids:
            if not u.isdigit() or int(u) >= self.num_users:
                raise ConfigError(f'--users: user id {u} is out of range (the dataset has '
                                  f'{self.num_users} users, ids 0..{self.num_users - 1})')
            out.append(int(u))
        return out

    def user_label(self, user: int) -> str:
        return self.user_ids[user] if self.user_ids is not None else str(user)

    def item_label(self, item: int) -> str:
        return self.item_ids[item] if self.item_ids is not None else str(item)


def _dataset_maps(config: Any) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    r"""The id maps beside a run's dataset (written by ``featurize``), if any."""
    from anchorrec_pyg.data.featurize import read_id_map
    if config.data.root is None:
        return None, None
    folder = Path(config.data.root).expanduser() / config.data.name
    maps = [folder / f for f in MAP_FILES]
    if not all(p.is_file() for p in maps):
        return None, None
    return read_id_map(maps[0]), read_id_map(maps[1])


def read_manifest(folder: PathLike) -> Dict[str, Any]:
    r"""The manifest of an export folder; :class:`CheckpointError` when it is not one."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{path}: not a readable export manifest ({e})') from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise CheckpointError(f'{path}: not an anchorrec-pyg export manifest')
    if manifest.get('version') != VERSION:
        raise CheckpointError(f"{path}: export version {manifest.get('version')!r} is not "
                              f'supported (expected {VERSION})')
    return manifest


def is_export(path: PathLike) -> bool:
    r"""Whether :obj:`path` is a folder written by :func:`export_run`."""
    try:
        read_manifest(path)
    except CheckpointError:
        return False
    return True


def _run_metrics(checkpoint: Path) -> Dict[str, Any]:
    r"""The run's validation and test metrics (its ``metrics.json``), if present."""
    from anchorrec_pyg.train.runner import METRICS_FILE
    try:
        metrics = json.loads((checkpoint.parent / METRICS_FILE).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return {}
    return {k: metrics[k] for k in ('valid', 'test', 'best_epoch', 'seed', 'params')
            if k in metrics}


def export_run(run: PathLike, out: PathLike, device: Optional[str] = None,
               index: Optional[bool] = None, overwrite: bool = False) -> Path:
    r"""Writes the export folder :obj:`out` of a run folder or checkpoint (see the module
    docstring). :obj:`index`: build the faiss index (:obj:`None`: when faiss is installed;
    :obj:`True` without faiss is an error). The folder is written beside :obj:`out` and renamed
    into place; an existing :obj:`out` is replaced only with :obj:`overwrite`."""
    from anchorrec_pyg.data.featurize import MANIFEST as DATA_MANIFEST
    from anchorrec_pyg.train.runner import resolve_checkpoint
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f'--out: {out} already exists; choose another folder or pass '
                          '--overwrite')
    if index and not faiss_available():
        raise ConfigError("--index needs faiss: pip install 'anchorrec-pyg[serve]'")
    build_index = faiss_available() if index is None else index
    checkpoint = resolve_checkpoint(run)
    from anchorrec_pyg.train.runner import load_trained_model
    model, data, config = load_trained_model(checkpoint, device)
    with torch.no_grad():
        result = model(data)
    user = result.user.detach().float().cpu().contiguous()
    item = result.item.detach().float().cpu().contiguous()
    num_users = int(data['user'].num_nodes)
    indptr, items = _train_csr(data[USER_ITEM].edge_index, num_users)

    out.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(out.parent / f'.{out.name}.export.lock', what=f'--out {out}'):
        remove_staging_folders(out.parent, out.name)
        staging = make_staging_folder(out.parent, out.name)
        try:
            for name, array in (('user_emb', user.numpy()), ('item_emb', item.numpy()),
                                ('train_indptr', indptr), ('train_items', items)):
                np.save(staging / f'{name}.npy', array, allow_pickle=False)
            data_folder = None
            if config.data.root is not None:
                data_folder = Path(config.data.root).expanduser() / config.data.name
                for f in MAP_FILES:
                    if (data_folder / f).is_file():
                        shutil.copyfile(data_folder / f, staging / f)
            index_info = None
            if build_index:
                import faiss
                from torch_geometric.nn.pool import MIPSKNNIndex
                knn = MIPSKNNIndex(item)
                faiss.write_index(knn.index, str(staging / INDEX_FILE))
                index_info = {'file': INDEX_FILE, 'type': type(knn.index).__name__,
                              'built_by': 'torch_geometric.nn.pool.MIPSKNNIndex', 'exact': True,
                              'faiss_version': faiss.__version__}
            dataset_manifest = None
            if data_folder is not None and (data_folder / DATA_MANIFEST).is_file():
                dataset_manifest = str(data_folder / DATA_MANIFEST)
            manifest = {
                'format': FORMAT, 'version': VERSION,
                'model': config.model_name, 'dataset': config.data.name,
                'data_root': config.data.root, 'dataset_manifest': dataset_manifest,
                'run': str(Path(run).resolve()), 'checkpoint': str(checkpoint.resolve()),
                'metric': config.eval.metric, 'metrics': _run_metrics(checkpoint),
                'num_users': num_users, 'num_items': int(item.size(0)), 'dim': int(item.size(1)),
                'scoring': 'score(u, i) = user_emb[u] . item_emb[i] (inner product); rank '
                           'descending, leaving out train_items[train_indptr[u]:train_indptr[u+1]]',
                'ids': 'original ids in user_map.csv / item_map.csv (original_id,index)'
                       if (staging / MAP_FILES[0]).is_file() else '0-based ids of the dataset',
                'index': index_info,
                'files': {p.name: _md5(p) for p in sorted(staging.iterdir())},
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n',
                                            encoding='utf-8')
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out


def write_recommendations(path: PathLike, rec: Recommender, users: Sequence[int],
                          lists: Sequence[Tuple[List[int], List[float]]]) -> int:
    r"""Writes ``user,rank,item,score`` rows (original ids when the data has them) atomically;
    returns the number of rows."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['user', 'rank', 'item', 'score'])
    n = 0
    for user, (items, scores) in zip(users, lists):
        for rank, (item, score) in enumerate(zip(items, scores), start=1):
            writer.writerow([rec.user_label(user), rank, rec.item_label(item), f'{score:.6g}'])
            n += 1
    atomic_write_text(path, buffer.getvalue())
    return n


def short_lists_note(rec: Recommender, users: Sequence[int], k: int) -> Optional[str]:
    r"""The note for users with fewer than :obj:`k` candidate items, or :obj:`None`."""
    candidates = rec.candidates(torch.as_tensor(users, dtype=torch.long))
    short = candidates < k
    if not short.any():
        return None
    fewest = int(candidates[short].min())
    return (f'note: --k {k} exceeds the candidate items of {int(short.sum())} of {len(users)} '
            f'users ({rec.num_items} items minus their training items; fewest: {fewest}): '
            'their lists hold all their candidates, training items are never listed')
