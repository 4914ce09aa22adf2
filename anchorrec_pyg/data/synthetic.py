r"""The embedded default dataset: a seeded generator that writes MMRec-format folders.

Generative model (all draws from one ``numpy.random.Generator(seed)``):

- Items belong to one of ``num_categories`` categories; an item's latent taste vector is
  :math:`q_i = \mu_{c(i)} + \sigma_q \varepsilon_i \in \mathbb R^r`.
- A user's taste :math:`p_u` is a random mix of two category centres plus noise (taste vectors
  are scaled to unit length); each item has a log-normal popularity
  :math:`\exp(b_i)`, :math:`b_i \sim \mathcal N(0, \sigma_b^2)`.
- User :math:`u` has :math:`n_u = n_{min} + \mathrm{Poisson}(\mathrm{Gamma}(1, \bar n - n_{min}))`
  interactions (a geometric tail), drawn without replacement with probability
  :math:`\propto \exp(\alpha \langle p_u, q_i\rangle + b_i)` (Gumbel top-:math:`n_u`); an item
  that no user drew goes to one random user, so that every item id occurs.
- MMRec's split rule (SPEC §1), drawn per user: fewer than 10 interactions give one validation
  and one test interaction, otherwise :math:`\lfloor 0.2 n\rfloor` are held out, half (rounded
  down) for validation and the rest for test.
- Three feature views, each a different noisy non-linear function of part of :math:`q_i` and of
  view-specific nuisance factors, so that every view is informative and none is redundant:
  ``image`` (non-negative, VGG-like: ReLU of a random two-layer map) sees the first two thirds of
  the latent dimensions, ``text`` (tanh of a random two-layer map, sentence-BERT-like) the last
  two thirds, and ``mm`` (the fused BEiT-3-like anchor) all of them, with less noise.

Presets: ``tiny`` (tests), ``default`` (the main job's dataset, real feature dimensions
4096/384/768) and ``baby`` (the shape of Amazon Baby: 19,445 users, 7,050 items, ~160k
interactions, for benchmarks).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.data.mmrec import anchorrec_home
from anchorrec_pyg.errors import DataError
from anchorrec_pyg.io import (
    atomic_write,
    lock_file,
    make_staging_folder,
    remove_staging_folders,
)
from anchorrec_pyg.schema import USER_ITEM

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
MARKER_FILE = 'synthetic.json'
MMREC_SMALL_USER = 10
MMREC_HOLDOUT_FRACTION = 0.2
USER_CHUNK = 2048
TIMESTAMP_START = 1_400_000_000


@dataclass(frozen=True)
class SyntheticPreset:
    r"""Sizes and signal strengths of a generated dataset.

    Args:
        num_users, num_items: :math:`U`, :math:`I` (every id occurs in the file).
        mean_interactions: :math:`\bar n`, expected interactions per user.
        min_interactions: :math:`n_{min}` (5, as after MMRec's 5-core filtering).
        latent_dim: :math:`r`, size of the taste vectors.
        num_categories: item categories (clusters of :math:`q`).
        item_spread: :math:`\sigma_q`, spread of items around their category centre.
        user_spread: spread of a user's taste around its mix of two category centres.
        taste_scale: :math:`\alpha`, weight of the taste match in the interaction logits.
        popularity_sigma: :math:`\sigma_b`, log-normal popularity skew.
        image_dim, text_dim, mm_dim: feature dimensions (MMRec: 4096, 384; BEiT-3: 768).
        hidden_dim: width of the random non-linear feature maps.
        nuisance_dim: view-specific nuisance factors per view.
        nuisance_scale: their total norm, relative to the unit-norm taste vectors.
        image_noise, text_noise, mm_noise: relative Gaussian noise of each view.
    """
    num_users: int
    num_items: int
    mean_interactions: float
    min_interactions: int = 5
    latent_dim: int = 24
    num_categories: int = 20
    item_spread: float = 0.6
    user_spread: float = 0.5
    taste_scale: float = 6.0
    popularity_sigma: float = 0.8
    image_dim: int = 4096
    text_dim: int = 384
    mm_dim: int = 768
    hidden_dim: int = 256
    nuisance_dim: int = 8
    nuisance_scale: float = 1.0
    image_noise: float = 0.6
    text_noise: float = 0.6
    mm_noise: float = 0.3


PRESETS: dict[str, SyntheticPreset] = {
    'tiny': SyntheticPreset(num_users=60, num_items=40, mean_interactions=10.0, latent_dim=8,
                            num_categories=4, image_dim=32, text_dim=16, mm_dim=24,
                            hidden_dim=32, nuisance_dim=4),
    'default': SyntheticPreset(num_users=2000, num_items=1200, mean_interactions=15.0),
    'baby': SyntheticPreset(num_users=19_445, num_items=7_050, mean_interactions=160_792 / 19_445,
                            num_categories=60),
}


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _view(rng: np.random.Generator, latent: np.ndarray, p: SyntheticPreset, out_dim: int,
          noise: float, activation: str) -> np.ndarray:
    """One feature view: act(act([latent, nuisance] W1) W2 + noise), the nuisance factors of
    total norm about ``p.nuisance_scale`` (the latent rows have norm about 1)."""
    n, r = latent.shape
    nuisance_dim, hidden_dim = p.nuisance_dim, p.hidden_dim
    nuisance = p.nuisance_scale / np.sqrt(nuisance_dim) * rng.standard_normal((n, nuisance_dim))
    z = np.concatenate([latent, nuisance], axis=1)
    w1 = rng.standard_normal((r + nuisance_dim, hidden_dim)) / np.sqrt(r + nuisance_dim)
    w2 = rng.standard_normal((hidden_dim, out_dim)) / np.sqrt(hidden_dim)
    act = {'relu': lambda v: np.maximum(v, 0.0), 'tanh': np.tanh}[activation]
    h = act(z @ w1) @ w2
    h += noise * h.std() * rng.standard_normal(h.shape)
    return act(h).astype(np.float32)


def mmrec_split(rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
    """x_label per row by MMRec's per-user random split rule (SPEC §1)."""
    order = np.lexsort((rng.random(user.size), user))
    counts = np.bincount(user)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(user.size, dtype=np.int64)
    rank[order] = np.arange(user.size) - np.repeat(starts, counts)
    held = np.where(counts < MMREC_SMALL_USER, 2, (MMREC_HOLDOUT_FRACTION * counts).astype(int))
    n_valid = np.where(counts < MMREC_SMALL_USER, 1, held // 2)
    n_valid_u, held_u = n_valid[user], held[user]
    return np.where(rank < n_valid_u, 1, np.where(rank < held_u, 2, 0))


def _interactions(rng: np.random.Generator, p: SyntheticPreset, user_taste: np.ndarray,
                  item_taste: np.ndarray, popularity: np.ndarray) -> tuple[np.ndarray, ...]:
    """(user, item) pairs drawn without replacement by Gumbel top-n_u sampling."""
    extra = rng.poisson(rng.gamma(1.0, p.mean_interactions - p.min_interactions, p.num_users))
    n = np.minimum(p.min_interactions + extra, p.num_items // 2)
    users, items = [], []
    for start in range(0, p.num_users, USER_CHUNK):
        stop = min(start + USER_CHUNK, p.num_users)
        # float64 throughout, so that BLAS rounding cannot flip a selection between machines.
        logits = p.taste_scale * (user_taste[start:stop] @ item_taste.T) + popularity
        logits += rng.gumbel(size=logits.shape)
        n_chunk = n[start:stop]
        width = int(n_chunk.max())
        top = np.argpartition(-logits, width - 1, axis=1)[:, :width]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), 1), 1)
        keep = np.arange(top.shape[1])[None, :] < n_chunk[:, None]
        users.append(np.repeat(np.arange(start, stop), n_chunk))
        items.append(top[keep])
    # Every item occurs at least once (as after 5-core filtering), so I = max id + 1 holds.
    unused = np.setdiff1d(np.arange(p.num_items), np.concatenate(items))
    users.append(rng.integers(p.num_users, size=unused.size))
    items.append(unused)
    return np.concatenate(users), np.concatenate(items)


def generate_arrays(preset: str | SyntheticPreset = 'default',
                    seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    r"""Draws a dataset in memory: returns the ``.inter`` table ``[E, 5]`` (int64 columns
    ``userID itemID rating timestamp x_label``, sorted by user and time) and the feature tables
    ``{'image', 'text', 'mm'}`` (float32 ``[I, dim]``). Deterministic in ``seed``."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    rng = np.random.default_rng(seed)
    r = p.latent_dim
    centres = rng.standard_normal((p.num_categories, r))
    category = rng.integers(p.num_categories, size=p.num_items)
    item_taste = _unit_rows(centres[category]
                            + p.item_spread * rng.standard_normal((p.num_items, r)))
    pair = rng.integers(p.num_categories, size=(p.num_users, 2))
    mix = rng.random((p.num_users, 1))
    user_taste = _unit_rows(mix * centres[pair[:, 0]] + (1 - mix) * centres[pair[:, 1]]
                            + p.user_spread * rng.standard_normal((p.num_users, r)))
    popularity = p.popularity_sigma * rng.standard_normal(p.num_items)

    user, item = _interactions(rng, p, user_taste, item_taste, popularity)
    label = mmrec_split(rng, user)
    rating = rng.integers(1, 6, size=user.size)
    timestamp = TIMESTAMP_START + np.sort(rng.integers(0, 10**8, size=user.size))
    table = np.stack([user, item, rating, timestamp, label], axis=1).astype(np.int64)
    table = table[np.lexsort((table[:, 3], table[:, 0]))]

    third = r // 3
    features = {
        'image': _view(rng, item_taste[:, :r - third], p, p.image_dim, p.image_noise, 'relu'),
        'text': _view(rng, item_taste[:, third:], p, p.text_dim, p.text_noise, 'tanh'),
        'mm': _view(rng, item_taste, p, p.mm_dim, p.mm_noise, 'tanh'),
    }
    return table, features


def generate_synthetic(root: str | os.PathLike, name: str = 'default',
                       preset: str | SyntheticPreset = 'default', seed: int = 0,
                       overwrite: bool = False) -> Path:
    r"""Writes a generated dataset in the MMRec on-disk format and returns ``<root>/<name>``.

    Files: ``<root>/<name>/<name>.inter`` (tab-separated, header ``userID itemID rating
    timestamp x_label``), ``image_feat.npy``, ``text_feat.npy``, ``synthetic.json`` (preset and
    seed) and ``<root>/<name>_beit3/image_feat.npy``. Both folders are written in a temporary
    folder under ``root`` and renamed into place, so a crash never leaves a half-written
    dataset folder. Existing folders are replaced only with ``overwrite=True``. ``preset`` is a
    name of :data:`PRESETS` or a :class:`SyntheticPreset` (e.g. a scaled copy of one).
    """
    if isinstance(preset, str) and preset not in PRESETS:
        raise DataError(f'unknown synthetic preset {preset!r}: expected one of '
                        f'{", ".join(PRESETS)}')
    root = Path(root).expanduser()
    folder, mm_folder = root / name, root / f'{name}_beit3'
    existing = [f for f in (folder, mm_folder) if f.exists()]
    if existing and not overwrite:
        raise DataError(f'{existing[0]} already exists; pass overwrite=True to replace it')
    table, features = generate_arrays(preset, seed)
    root.mkdir(parents=True, exist_ok=True)
    staging = make_staging_folder(root, name)
    try:
        (staging / name).mkdir()
        (staging / f'{name}_beit3').mkdir()
        header = 'userID\titemID\trating\ttimestamp\tx_label'
        atomic_write(staging / name / f'{name}.inter', lambda f: np.savetxt(
            f, table, fmt='%d', delimiter='\t', header=header, comments=''))
        for key, target in (('image', staging / name / 'image_feat.npy'),
                            ('text', staging / name / 'text_feat.npy'),
                            ('mm', staging / f'{name}_beit3' / 'image_feat.npy')):
            atomic_write(target, lambda f, a=features[key]: np.save(f, a, allow_pickle=False))
        params = PRESETS[preset] if isinstance(preset, str) else preset
        marker = {'generator_version': GENERATOR_VERSION,
                  'preset': preset if isinstance(preset, str) else 'custom', 'seed': seed,
                  'params': dataclasses.asdict(params)}
        atomic_write(staging / name / MARKER_FILE,
                     lambda f: f.write(json.dumps(marker, indent=2).encode()))
        for target in existing:
            shutil.rmtree(target)
        os.replace(staging / f'{name}_beit3', mm_folder)
        os.replace(staging / name, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info('wrote synthetic dataset %s (preset %s, seed %d): %d interactions',
                folder, preset, seed, table.shape[0])
    return folder


def _is_complete(root: Path, name: str, preset: str, seed: int) -> bool:
    folder = root / name
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get('generator_version') == GENERATOR_VERSION
            and marker.get('preset') == preset and marker.get('seed') == seed
            and all(f.is_file() for f in (folder / f'{name}.inter', folder / 'image_feat.npy',
                                          folder / 'text_feat.npy',
                                          root / f'{name}_beit3' / 'image_feat.npy')))


def ensure_default_dataset(root: str | os.PathLike | None = None, preset: str = 'default',
                           seed: int = 0) -> tuple[str, str]:
    r"""Returns ``(root, name)`` of the generated dataset ``preset``/``seed``, generating it
    first when it is absent or incomplete. ``root`` defaults to ``<home>/datasets`` with
    ``<home>`` = ``$ANCHORREC_PYG_HOME`` or ``~/.cache/anchorrec-pyg``; the name is the preset
    (``<preset>-seed<seed>`` for a non-zero seed). Safe against concurrent callers (file lock)
    and interrupted writes (staged folder, then rename)."""
    if preset not in PRESETS:
        raise DataError(f'unknown synthetic preset {preset!r}: expected one of '
                        f'{", ".join(PRESETS)}')
    root = Path(root).expanduser() if root is not None else anchorrec_home() / 'datasets'
    name = preset if seed == 0 else f'{preset}-seed{seed}'
    root.mkdir(parents=True, exist_ok=True)
    with lock_file(root / f'.{name}.lock', blocking=True):
        remove_staging_folders(root, name)
        if not _is_complete(root, name, preset, seed):
            generate_synthetic(root, name, preset, seed, overwrite=True)
    return str(root), name


def popularity_recall(data: HeteroData, k: int = 20, split: str = 'test') -> float:
    r"""Recall@k of the popularity ranking (SPEC §5 protocol): items ranked by training count
    (ties: lower id first), the user's training items masked, full ranking; averaged over the
    users with ``split`` (``'valid'`` or ``'test'``) interactions."""
    store = data[USER_ITEM]
    held = store.val_edge_index if split == 'valid' else store.test_edge_index
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    train = store.edge_index
    count = torch.bincount(train[1], minlength=num_items).double()
    score = count - torch.arange(num_items, dtype=torch.float64) / num_items
    users = held[0].unique()
    relevant = torch.zeros(num_users, dtype=torch.long).index_add_(
        0, held[0], torch.ones_like(held[0]))
    hits = torch.zeros(num_users)
    for start in range(0, users.numel(), USER_CHUNK):
        chunk = users[start:start + USER_CHUNK]
        position = torch.full((num_users,), -1, dtype=torch.long)
        position[chunk] = torch.arange(chunk.numel())
        scores = score.expand(chunk.numel(), num_items).clone()
        in_chunk = position[train[0]] >= 0
        scores[position[train[0][in_chunk]], train[1][in_chunk]] = -torch.inf
        top = scores.topk(k, dim=1).indices
        hit = torch.zeros(chunk.numel(), num_items, dtype=torch.bool)
        in_held = position[held[0]] >= 0
        hit[position[held[0][in_held]], held[1][in_held]] = True
        hits[chunk] = hit.gather(1, top).sum(dim=1).float()
    return float((hits[users] / relevant[users].float()).mean())
