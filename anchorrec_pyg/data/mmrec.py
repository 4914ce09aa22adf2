r"""Reading the MMRec on-disk format (SPEC §1).

A dataset folder ``<root>/<name>/`` holds ``<name>.inter`` (tab-separated, one header line,
columns ``userID itemID rating timestamp x_label``; only ``userID``, ``itemID`` and ``x_label``
are read, by header name, in any order) and the per-item feature tables ``image_feat.npy``
(VGG, 4096-d) and ``text_feat.npy`` (sentence-BERT, 384-d). The fused multimodal (BEiT-3) table
lives in a sibling folder, by convention ``<root>/<name>_beit3/image_feat.npy`` (768-d).

With :math:`U = \max(\text{userID}) + 1` and :math:`I = \max(\text{itemID}) + 1` over the whole
file, ``x_label`` splits the rows into training (0), validation (1) and test (2) interactions.
Users without a training interaction are dropped from validation and test. A ``(user, item)``
pair listed more than once within one split is kept once (the count is logged); a pair that
occurs in two different splits is kept in both, as MMRec does (the count is logged as a
warning, since a training item is masked at evaluation and can never be a hit).

Every violation raises :class:`~anchorrec_pyg.errors.DataError` with a one-line message that
names the file and the column, line or key at fault.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anchorrec_pyg.errors import DataError

logger = logging.getLogger(__name__)

USER_COLUMN = 'userID'
ITEM_COLUMN = 'itemID'
LABEL_COLUMN = 'x_label'
REQUIRED_COLUMNS = (USER_COLUMN, ITEM_COLUMN, LABEL_COLUMN)
SPLITS = ('train', 'valid', 'test')
SPLIT_LABELS = {'train': 0, 'valid': 1, 'test': 2}
HOME_ENV = 'ANCHORREC_PYG_HOME'


def anchorrec_home() -> Path:
    r"""The cache folder of the package: ``$ANCHORREC_PYG_HOME`` or ``~/.cache/anchorrec-pyg``.
    Generated datasets go to ``<home>/datasets``, processed files of read-only dataset folders
    to ``<home>/processed``."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / '.cache' / 'anchorrec-pyg'


@dataclass
class Interactions:
    r"""The interactions of one ``.inter`` file after validation.

    Attributes:
        num_users: :math:`U = \max(\text{userID}) + 1` over the whole file.
        num_items: :math:`I = \max(\text{itemID}) + 1` over the whole file.
        train, valid, test: ``[2, E_split]`` int64 arrays (row 0 user, row 1 item), sorted by
            (user, item), without duplicates; ``valid`` and ``test`` hold only users that have
            at least one training interaction.
        num_duplicates: rows dropped because their (user, item) pair repeats within a split.
        num_cold_dropped: validation/test rows dropped because their user has no training row.
    """
    num_users: int
    num_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    num_duplicates: int = 0
    num_cold_dropped: int = 0

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """Reads the required columns of a ``.inter`` file as strings, by header name."""
    if not path.is_file():
        raise DataError(f'interaction file not found: {path}')
    with open(path, encoding='utf-8') as f:
        first = f.readline()
    if not first.strip():
        raise DataError(f'{path}: empty file (expected a tab-separated header line with the '
                        f"columns {', '.join(REQUIRED_COLUMNS)}, then one interaction per line)")
    header = first.rstrip('\r\n').split('\t')
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing required column {missing[0]!r} in the tab-separated "
                        f"header (found: {', '.join(repr(c) for c in header)})")
    use = tuple(header.index(c) for c in REQUIRED_COLUMNS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)  # "input contained no data"
            table = np.loadtxt(path, dtype=np.str_, delimiter='\t', skiprows=1, usecols=use,
                               ndmin=2, comments=None, encoding='utf-8')
    except ValueError as e:
        reason = str(e).splitlines()[0]
        raise DataError(f'{path}: malformed row ({reason})') from None
    return {c: table[:, j] for j, c in enumerate(REQUIRED_COLUMNS)}


def _to_int(path: Path, column: str, values: np.ndarray) -> np.ndarray:
    """Parses one column as non-negative int64, naming the first offending line."""
    try:
        out = values.astype(np.int64)
    except (ValueError, OverflowError):
        out = None
    if out is not None and (out.size == 0 or out.min() >= 0):
        return out
    for row, value in enumerate(values):
        text = value.strip()
        if not (text.isdigit() or (text.startswith('-') and text[1:].isdigit())) \
                or int(text) < 0:
            raise DataError(f'{path}: column {column!r} must hold non-negative integers, '
                            f'got {str(value)!r} on line {row + 2}')
    raise DataError(f'{path}: column {column!r} must hold non-negative integers')


def _unique_pairs(pairs: np.ndarray, num_items: int) -> tuple[np.ndarray, int]:
    """Sorts ``[2, E]`` (user, item) pairs and drops repeats; returns them and the repeat count."""
    key = np.unique(pairs[0] * num_items + pairs[1])
    return np.stack([key // num_items, key % num_items]), pairs.shape[1] - key.size


def load_inter(path: str | os.PathLike) -> Interactions:
    r"""Reads and validates a ``.inter`` file (SPEC §1).

    Raises :class:`DataError` for a missing file, a missing ``userID``/``itemID``/``x_label``
    column, non-integer or negative ids, an ``x_label`` outside {0, 1, 2} or an empty
    training split.
    """
    path = Path(path)
    cols = _read_columns(path)
    if cols[USER_COLUMN].size == 0:
        raise DataError(f'{path}: no interactions below the header')
    user = _to_int(path, USER_COLUMN, cols[USER_COLUMN])
    item = _to_int(path, ITEM_COLUMN, cols[ITEM_COLUMN])
    label = _to_int(path, LABEL_COLUMN, cols[LABEL_COLUMN])
    bad = np.flatnonzero(label > 2)
    if bad.size:
        raise DataError(f"{path}: column {LABEL_COLUMN!r} must be 0 (train), 1 (validation) "
                        f"or 2 (test), got {label[bad[0]]} on line {bad[0] + 2}")
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    if num_users * num_items >= 2**62:
        raise DataError(f'{path}: ids up to {num_users - 1} (userID) and {num_items - 1} '
                        '(itemID) are too large: ids must be 0-based and contiguous')

    splits, num_duplicates = {}, 0
    for name in SPLITS:
        mask = label == SPLIT_LABELS[name]
        splits[name], dup = _unique_pairs(np.stack([user[mask], item[mask]]), num_items)
        num_duplicates += dup
    if splits['train'].shape[1] == 0:
        raise DataError(f'{path}: the training split is empty (no row has {LABEL_COLUMN} = 0)')
    if num_duplicates:
        logger.info('%s: collapsed %d repeated (user, item) rows within their split',
                    path, num_duplicates)

    has_train = np.zeros(num_users, dtype=bool)
    has_train[splits['train'][0]] = True
    num_cold = 0
    for name in ('valid', 'test'):
        keep = has_train[splits[name][0]]
        num_cold += int((~keep).sum())
        splits[name] = splits[name][:, keep]
    if num_cold:
        logger.info('%s: dropped %d validation/test rows of users without training rows',
                    path, num_cold)

    train_keys = splits['train'][0] * num_items + splits['train'][1]
    overlap = sum(int(np.isin(splits[n][0] * num_items + splits[n][1], train_keys).sum())
                  for n in ('valid', 'test'))
    if overlap:
        logger.warning('%s: %d validation/test pairs also occur in the training split; they '
                       'are kept (MMRec behaviour) but can never be ranked', path, overlap)

    return Interactions(num_users, num_items, splits['train'], splits['valid'], splits['test'],
                        num_duplicates, num_cold)


def load_features(path: str | os.PathLike, num_items: int | None = None) -> np.ndarray:
    r"""Reads one item feature table (``.npy``, row r = item r) as a C-contiguous float32 array.

    Pickled data (including object arrays) is never loaded (``allow_pickle=False``). Raises
    :class:`DataError` when the file is missing or unreadable, is not a 2-D floating-point
    array, has a row count other than ``num_items``, or holds NaN/inf (also after the cast to
    float32). Zero rows are allowed: the kNN graph gives such an item only a self loop
    (see :func:`anchorrec_pyg.data.knn.cosine_knn`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f'feature file not found: {path}')
    with open(path, 'rb') as f:
        magic = f.read(len(np.lib.format.MAGIC_PREFIX))
    if magic.startswith(b'\x80'):
        raise DataError(f'{path}: refusing to load pickled data (a pickle, not a .npy array)')
    if magic != np.lib.format.MAGIC_PREFIX:
        found = 'an empty file' if not magic else 'no .npy header: text or another format'
        raise DataError(f'{path}: not a .npy file ({found}); save the features with numpy.save')
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if 'pickle' in str(e):
            raise DataError(f'{path}: refusing to load pickled data (an object array; save '
                            'the features as a float array)') from None
        raise DataError(f'{path}: not a readable .npy array ({e})') from None
    except (OSError, EOFError) as e:
        raise DataError(f'{path}: not a readable .npy array ({e})') from None
    if not isinstance(array, np.ndarray):
        raise DataError(f'{path}: expected a single .npy array, got a {type(array).__name__}')
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(f'{path}: expected a 2-D float array [items, dim], got dtype '
                        f'{array.dtype} with shape {tuple(array.shape)}')
    if num_items is not None and array.shape[0] != num_items:
        raise DataError(f'{path}: has {array.shape[0]} rows but the interaction file has '
                        f'I = {num_items} items (row r must be item r)')
    if array.shape[1] == 0:
        raise DataError(f'{path}: feature dimension is 0')
    with np.errstate(over='ignore'):
        array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DataError(f'{path}: {int((~finite).sum())} rows hold NaN or inf values (first: '
                        f'row {row}, after conversion to float32)')
    return array


def concat_anchor(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    r"""The derived multimodal anchor used when no fused feature file exists (``mm_source =
    'concat'``): :math:`[\hat v \,\|\, \hat t] / \sqrt 2` with :math:`\hat v, \hat t` the
    L2-normalised image and text rows (a zero row stays zero). A row whose two parts are both
    non-zero has unit norm, and its cosine similarity to another such row is the mean of the
    two modalities' cosine similarities."""
    def unit(a: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)

    return (np.concatenate([unit(image), unit(text)], axis=1) / np.sqrt(2.0)).astype(np.float32)
