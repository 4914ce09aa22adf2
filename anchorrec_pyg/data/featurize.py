r"""Bring your own catalogue: raw interactions and items -> an MMRec folder (SPEC §1).

:func:`featurize` reads an interactions file and an items file (CSV, TSV or JSON Lines, by
suffix: ``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``; columns named by the caller) and
writes ``<root>/<name>/`` exactly as ``train`` reads it:

1. Clean-up, each a one-line :class:`~anchorrec_pyg.errors.DataError` or a counted warning:
   missing columns, empty ids, non-numeric ratings or timestamps and non-UTF-8 bytes are errors
   (naming file, line and column); a repeated (user, item) pair is kept once (its earliest row;
   warning); interactions of items absent from the items file are dropped (warning, with the
   first ids), and so are listed items nobody interacted with (warning); an item id listed
   twice with different content is an error (twice identically: a warning).
2. k-core filtering: users with fewer than ``min_user`` and items with fewer than
   ``min_item`` distinct interactions are removed, repeatedly, until none is left (the fixed
   point; the paper's datasets are 5-cores).
3. Ids remapped to 0-based ints in sorted order of the original ids (numeric order when every
   id is an integer): ``user_map.csv`` / ``item_map.csv`` (``original_id,index``) beside the
   data.
4. The split, seeded: MMRec's per-user random rule of SPEC §1 (``split='mmrec'``), or
   chronological per user with the same counts (``split='time'``: the latest interactions are
   test, the ones before them validation).
5. Features, row r = item r: ``text_feat.npy`` from a sentence-transformers model on the item's
   text columns joined by a space; ``image_feat.npy`` from an image model; the fused table
   ``<root>/<name>_beit3/image_feat.npy``, from a joint encoder when one is given, else the
   derived concatenation of :func:`~anchorrec_pyg.data.mmrec.concat_anchor` (SPEC §1). An item
   with empty text gets a zero text row (warning); a missing or unreadable image is an error, or
   with ``on_missing_image='zero'`` a zero image row (warning); the kNN graphs of SPEC §2 give
   a zero row only a self loop.
6. ``manifest.json``: the inputs (paths, md5), the columns, the filtering and split parameters
   and counts, the encoders (model, library, version, dimension), the warnings, and the md5 of
   every file written.

Encoding is batched, shows progress bars and holds one chunk of items in memory at a time;
every encoded chunk is kept under ``<root>/.<name>.featurize-cache/`` (named by the hash of its
inputs and of the encoder), so an interrupted run, rerun with the same arguments, skips the
chunks it has; the cache is removed when the folder is complete. The folders are written in a
staging folder and renamed into place; one featurize at a time writes ``<root>/<name>`` (a lock
file), and it first removes the staging folders of runs killed before they could. An existing
``<root>/<name>`` is kept as it is when its manifest records the same request (the md5 of both
input files, every option, the encoders' files, and each image's path, size and modification
time), and replaced only with ``overwrite=True``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from anchorrec_pyg.data.mmrec import concat_anchor
from anchorrec_pyg.data.synthetic import mmrec_split
from anchorrec_pyg.errors import DataError
from anchorrec_pyg.io import (
    atomic_write,
    lock_file,
    make_staging_folder,
    output_error,
    remove_staging_folders,
)

logger = logging.getLogger(__name__)

MANIFEST = 'manifest.json'
FORMAT = 'anchorrec-pyg/featurize'
VERSION = 1
USER_MAP, ITEM_MAP = 'user_map.csv', 'item_map.csv'
SHOW_IDS = 5
SUFFIXES = {'.csv': 'csv', '.tsv': 'tsv', '.tab': 'tsv', '.jsonl': 'jsonl', '.ndjson': 'jsonl'}


@dataclass
class FeaturizeOptions:
    r"""Everything :func:`featurize` needs besides the output folder (each a CLI flag).

    Attributes:
        interactions, items: The two input files.
        user_col, item_col: Columns of the interactions file.
        rating_col, timestamp_col: Optional columns of the interactions file (kept in the
            ``.inter`` file; the timestamp orders the ``time`` split).
        item_id_col: The id column of the items file (default: :obj:`item_col`).
        text_cols: Text columns of the items file, joined by a space.
        image_col: Optional column of image file paths (relative to :obj:`image_root`,
            default: the items file's folder).
        min_user, min_item: The k-core thresholds.
        split: ``'mmrec'`` or ``'time'``.
        seed: Seed of the ``mmrec`` split.
        text_encoder, image_encoder, image_weights, joint_encoder: The encoders (see
            :mod:`anchorrec_pyg.data.encoders`); without any, only the interactions are written.
        on_missing_image: ``'error'`` or ``'zero'``.
        batch_size: Items per encoder forward pass.
        chunk_size: Items per cached chunk.
        device: Where the encoders run.
    """
    interactions: str
    items: str
    user_col: str = 'user_id'
    item_col: str = 'item_id'
    rating_col: Optional[str] = None
    timestamp_col: Optional[str] = None
    item_id_col: Optional[str] = None
    text_cols: List[str] = field(default_factory=list)
    image_col: Optional[str] = None
    image_root: Optional[str] = None
    min_user: int = 5
    min_item: int = 5
    split: str = 'mmrec'
    seed: int = 999
    text_encoder: Optional[str] = None
    image_encoder: Optional[str] = None
    image_weights: Optional[str] = None
    joint_encoder: Optional[str] = None
    on_missing_image: str = 'error'
    batch_size: int = 64
    chunk_size: int = 1024
    device: str = 'cpu'

    def validate(self) -> None:
        for key in ('min_user', 'min_item', 'batch_size', 'chunk_size'):
            if getattr(self, key) < 1:
                raise DataError(f'{key.replace("_", "-")} must be >= 1 '
                                f'(got {getattr(self, key)})')
        if self.split not in ('mmrec', 'time'):
            raise DataError(f"--split must be 'mmrec' or 'time' (got {self.split!r})")
        if self.split == 'time' and self.timestamp_col is None:
            raise DataError('--split time needs --timestamp-col (the column that orders each '
                            "user's interactions)")
        if self.on_missing_image not in ('error', 'zero'):
            raise DataError("--on-missing-image must be 'error' or 'zero' "
                            f'(got {self.on_missing_image!r})')
        if (self.image_encoder or self.joint_encoder) and self.image_col is None:
            raise DataError('--image-encoder/--joint-encoder need --image-col (the column of '
                            'image file paths in the items file)')
        if self.image_weights and not self.image_encoder:
            raise DataError('--image-weights needs --image-encoder (the model they belong to)')
        if self.joint_encoder and not self.text_cols:
            raise DataError('--joint-encoder needs --text-cols')
        if self.text_encoder and not self.text_cols:
            raise DataError('--text-encoder needs --text-cols (the text columns of the items '
                            'file)')


# ----------------------------------------------------------------------------- reading files

def _lines(path: Path) -> Iterator[str]:
    r"""The decoded lines of :obj:`path`; a byte sequence that is not UTF-8 is an error naming
    its line (a UTF-8 byte-order mark is accepted)."""
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode('utf-8-sig' if number == 1 else 'utf-8')
            except UnicodeDecodeError as e:
                raise DataError(f'{path}: line {number} is not valid UTF-8 (byte '
                                f'{raw[e.start]:#04x} at column {e.start + 1}); save the file '
                                'as UTF-8') from None
            yield line


def read_table(path: str | os.PathLike, required: Sequence[str]
               ) -> Tuple[Dict[str, List[str]], List[int]]:
    r"""Reads the named columns of a CSV, TSV or JSON Lines file as strings.

    Returns ``(columns, lines)``: ``columns[name]`` the values of every row (JSON numbers as
    written by :func:`str`, null as an empty string), ``lines`` the line number of each row. Raises
    :class:`DataError` for a missing file, an unknown suffix, a missing required column, a row
    with too few fields, a line that is not a JSON object, or a non-UTF-8 byte.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f'file not found: {path}')
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}: expected one of "
                        f"{', '.join(SUFFIXES)}")
    wanted = list(dict.fromkeys(required))
    columns: Dict[str, List[str]] = {c: [] for c in wanted}
    lines: List[int] = []
    if kind == 'jsonl':
        for number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f'{path}: line {number} is not valid JSON ({e.msg})') from None
            if not isinstance(row, dict):
                raise DataError(f'{path}: line {number} is not a JSON object')
            for c in wanted:
                if c not in row:
                    raise DataError(f"{path}: line {number} has no key {c!r} (keys: "
                                    f"{', '.join(repr(k) for k in row)})")
                columns[c].append('' if row[c] is None else str(row[c]))
            lines.append(number)
        if not lines:
            raise DataError(f'{path}: no rows')
        return columns, lines
    reader = csv.reader(_lines(path), delimiter=',' if kind == 'csv' else '\t')
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f'{path}: the file is empty (expected a header line)') from None
    header = [h.strip() for h in header]
    for c in wanted:
        if c not in header:
            raise DataError(f"{path}: missing column {c!r} in the header (found: "
                            f"{', '.join(repr(h) for h in header)})")
    use = {c: header.index(c) for c in wanted}
    last = max(use.values())
    for row in reader:
        if not row:
            continue
        if len(row) <= last:
            raise DataError(f'{path}: line {reader.line_num} has {len(row)} fields, expected '
                            f'{len(header)} (as the header)')
        for c, j in use.items():
            columns[c].append(row[j])
        lines.append(reader.line_num)
    if not lines:
        raise DataError(f'{path}: no rows below the header')
    return columns, lines


def _numbers(path: str, column: str, values: List[str], lines: List[int]) -> np.ndarray:
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError:
        for v, line in zip(values, lines):
            try:
                float(v)
            except ValueError:
                raise DataError(f'{path}: column {column!r} must hold numbers, got {v!r} on '
                                f'line {line}') from None
        raise


def _non_empty(path: str, column: str, values: List[str], lines: List[int]) -> List[str]:
    values = [v.strip() for v in values]
    for v, line in zip(values, lines):
        if not v:
            raise DataError(f'{path}: empty {column!r} on line {line}')
    return values


def _first(ids: Sequence[str]) -> str:
    shown = ', '.join(str(i) for i in list(ids)[:SHOW_IDS])
    return shown + (', ...' if len(ids) > SHOW_IDS else '')


def _sorted_ids(ids: Sequence[str]) -> List[str]:
    r"""Numeric order when every id is an integer, else lexicographic."""
    unique = sorted(set(ids))
    try:
        return sorted(unique, key=int)
    except ValueError:
        return unique


# --------------------------------------------------------------------------- interactions

@dataclass
class Catalogue:
    r"""The cleaned, filtered, remapped and split interactions and the kept items.

    Attributes:
        users, items: original ids; index = position.
        table: ``[E, 3]`` int64 ``(user, item, x_label)`` rows.
        rating, timestamp: per-row strings, or :obj:`None` without the column.
        texts: per kept item, its text (columns joined by a space).
        images: per kept item, its image path, or :obj:`None` without an image column.
        stats: counts for the manifest (and warnings).
    """
    users: List[str]
    items: List[str]
    table: np.ndarray
    rating: Optional[List[str]]
    timestamp: Optional[List[str]]
    texts: List[str]
    images: Optional[List[Optional[str]]]
    stats: Dict[str, Any]


def kcore(user: np.ndarray, item: np.ndarray, min_user: int, min_item: int
          ) -> Tuple[np.ndarray, int]:
    r"""The rows kept by iterated k-core filtering of distinct (user, item) pairs: every kept
    user has at least :obj:`min_user` and every kept item at least :obj:`min_item` rows among
    the kept ones. Returns the boolean row mask and the number of rounds to the fixed point."""
    keep = np.ones(user.size, dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        u_deg = np.bincount(user[keep], minlength=int(user.max(initial=-1)) + 1)
        i_deg = np.bincount(item[keep], minlength=int(item.max(initial=-1)) + 1)
        new = keep & (u_deg[user] >= min_user) & (i_deg[item] >= min_item)
        if new.sum() == keep.sum():
            return new, rounds
        keep = new


def time_split(user: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    r"""``x_label`` per row, chronological per user with MMRec's counts (SPEC §1): of a user's
    :math:`n` rows sorted by :obj:`order_key` (ties by row position), the last
    :math:`h - v` are test and the :math:`v` before them validation, where :math:`h = 2, v = 1`
    for :math:`n < 10`, else :math:`h = \lfloor 0.2 n \rfloor, v = \lfloor h / 2 \rfloor`."""
    order = np.lexsort((np.arange(user.size), order_key, user))
    counts = np.bincount(user)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(user.size, dtype=np.int64)
    rank[order] = np.arange(user.size) - np.repeat(starts, counts)
    held = np.where(counts < 10, 2, (0.2 * counts).astype(np.int64))
    n_valid = np.where(counts < 10, 1, held // 2)
    from_end = counts[user] - 1 - rank
    return np.where(from_end < held[user] - n_valid[user], 2,
                    np.where(from_end < held[user], 1, 0))


def build_catalogue(opts: FeaturizeOptions) -> Catalogue:
    r"""Reads, cleans, k-core filters, remaps and splits (steps 1-4 of the module docstring)."""
    stats: Dict[str, Any] = {}
    ipath, tpath = str(opts.interactions), str(opts.items)
    optional = [c for c in (opts.rating_col, opts.timestamp_col) if c]
    cols, lines = read_table(ipath, [opts.user_col, opts.item_col, *optional])
    user = _non_empty(ipath, opts.user_col, cols[opts.user_col], lines)
    item = _non_empty(ipath, opts.item_col, cols[opts.item_col], lines)
    rating = cols.get(opts.rating_col) if opts.rating_col else None
    if rating is not None:
        _numbers(ipath, opts.rating_col, rating, lines)
    stamp = None
    if opts.timestamp_col:
        stamp = _numbers(ipath, opts.timestamp_col, cols[opts.timestamp_col], lines)
    stats['rows_read'] = len(user)

    id_col = opts.item_id_col or opts.item_col
    wanted = [id_col, *opts.text_cols] + ([opts.image_col] if opts.image_col else [])
    item_cols, item_lines = read_table(tpath, wanted)
    item_ids = _non_empty(tpath, id_col, item_cols[id_col], item_lines)
    record: Dict[str, Tuple[int, Tuple[str, ...]]] = {}
    repeated = 0
    for row, (iid, line) in enumerate(zip(item_ids, item_lines)):
        content = tuple(item_cols[c][row] for c in wanted[1:])
        if iid in record:
            if record[iid][1] != content:
                raise DataError(f'{tpath}: item {iid!r} is listed twice with different content '
                                f'(lines {item_lines[record[iid][0]]} and {line})')
            repeated += 1
            continue
        record[iid] = (row, content)
    if repeated:
        logger.warning('%s: %d repeated item rows (identical) kept once', tpath, repeated)
    stats['items_repeated_rows'] = repeated

    # Repeated (user, item) pairs: the earliest row (by timestamp, then file order) is kept.
    order = np.lexsort((np.arange(len(user)), stamp)) if stamp is not None \
        else np.arange(len(user))
    seen, first_rows = set(), []
    for r in order.tolist():
        key = (user[r], item[r])
        if key not in seen:
            seen.add(key)
            first_rows.append(r)
    rows = np.sort(np.asarray(first_rows, dtype=np.int64))
    stats['duplicate_interactions'] = len(user) - rows.size
    if stats['duplicate_interactions']:
        logger.warning('%s: %d repeated (user, item) rows dropped (the earliest kept)', ipath,
                       stats['duplicate_interactions'])

    unknown = sorted({item[r] for r in rows.tolist() if item[r] not in record})
    if unknown:
        known = np.asarray([item[r] in record for r in rows.tolist()], dtype=bool)
        logger.warning('%s: %d interactions of %d items absent from %s dropped (first: %s)',
                       ipath, int((~known).sum()), len(unknown), tpath, _first(unknown))
        rows = rows[known]
    stats['unknown_items'] = len(unknown)
    if rows.size == 0:
        raise DataError(f'{ipath}: no interaction has an item listed in {tpath} (compare the '
                        f'columns {opts.item_col!r} and {id_col!r})')

    u_ids = _sorted_ids([user[r] for r in rows.tolist()])
    i_ids = _sorted_ids([item[r] for r in rows.tolist()])
    u_index = {u: j for j, u in enumerate(u_ids)}
    i_index = {i: j for j, i in enumerate(i_ids)}
    u_arr = np.asarray([u_index[user[r]] for r in rows.tolist()], dtype=np.int64)
    i_arr = np.asarray([i_index[item[r]] for r in rows.tolist()], dtype=np.int64)
    unused = len(record) - len(i_ids)
    if unused:
        logger.warning('%s: %d listed items have no interaction and are left out', tpath,
                       unused)
    stats['items_without_interactions'] = unused

    keep, rounds = kcore(u_arr, i_arr, opts.min_user, opts.min_item)
    stats['kcore'] = {'min_user': opts.min_user, 'min_item': opts.min_item, 'rounds': rounds,
                      'before': {'users': len(u_ids), 'items': len(i_ids),
                                 'interactions': int(rows.size)}}
    if not keep.any():
        raise DataError(f'{ipath}: no interaction is left after k-core filtering (users >= '
                        f'{opts.min_user}, items >= {opts.min_item} interactions; before: '
                        f'{len(u_ids)} users, {len(i_ids)} items, {rows.size} interactions); '
                        'lower --min-interactions')
    rows, u_arr, i_arr = rows[keep], u_arr[keep], i_arr[keep]
    kept_users, u_new = np.unique(u_arr, return_inverse=True)
    kept_items, i_new = np.unique(i_arr, return_inverse=True)
    users = [u_ids[j] for j in kept_users.tolist()]
    items = [i_ids[j] for j in kept_items.tolist()]
    stats['kcore']['after'] = {'users': len(users), 'items': len(items),
                               'interactions': int(rows.size)}

    if opts.split == 'mmrec':
        label = mmrec_split(np.random.default_rng(opts.seed), u_new)
    else:
        label = time_split(u_new, stamp[rows])
    stats['split'] = {'method': opts.split, 'seed': opts.seed if opts.split == 'mmrec' else None,
                      **{name: int((label == j).sum())
                         for j, name in enumerate(('train', 'valid', 'test'))}}
    sort_key = (i_new, stamp[rows], u_new) if stamp is not None else (i_new, u_new)
    perm = np.lexsort(sort_key)
    table = np.stack([u_new[perm], i_new[perm], label[perm]], axis=1).astype(np.int64)
    src = rows[perm].tolist()

    texts, images = [], [] if opts.image_col else None
    n_text = len(opts.text_cols)
    for iid in items:
        content = record[iid][1]
        texts.append(' '.join(t.strip() for t in content[:n_text] if t.strip()))
        if images is not None:
            images.append(content[n_text].strip() or None)
    return Catalogue(users, items, table,
                     [rating[r] for r in src] if rating is not None else None,
                     [cols[opts.timestamp_col][r].strip() for r in src] if stamp is not None
                     else None, texts, images, stats)


# -------------------------------------------------------------------------------- encoding

def _chunk_key(encoder_id: str, payload: Sequence[str]) -> str:
    digest = hashlib.sha256(encoder_id.encode())
    for p in payload:
        digest.update(b'\x00' + p.encode())
    return digest.hexdigest()[:24]


def _zero_filled(dim: int, present: List[bool], encode_rows: Callable[[List[int]], np.ndarray]
                 ) -> Callable[[int, int], np.ndarray]:
    r"""An ``encode(start, stop)`` for :func:`_encode_table`: a ``[stop - start, dim]`` block of
    zeros whose rows that :obj:`present` marks are ``encode_rows(those rows)`` (an item without
    text, or whose image could not be read, keeps a zero row)."""
    def encode(start: int, stop: int) -> np.ndarray:
        block = np.zeros((stop - start, dim), dtype=np.float32)
        rows = [r for r in range(start, stop) if present[r]]
        if rows:
            block[[r - start for r in rows]] = encode_rows(rows)
        return block
    return encode


def _encode_table(target: Path, cache: Path, kind: str, encoder_id: str, dim: int,
                  payloads: List[List[str]], encode: Callable[[int, int], np.ndarray],
                  chunk_size: int, progress: bool) -> None:
    r"""Writes the ``[n, dim]`` float32 table :obj:`target` chunk by chunk: a chunk found in
    :obj:`cache` (same encoder, same inputs) is reused, a new one is encoded with
    ``encode(start, stop)`` and kept there first."""
    from tqdm.auto import tqdm
    n = len(payloads)
    folder = cache / kind
    folder.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(target, mode='w+', dtype=np.float32, shape=(n, dim))
    reused = 0
    for start in tqdm(range(0, n, chunk_size), desc=f'encoding {kind}', unit='chunk',
                      disable=not progress, leave=False):
        stop = min(start + chunk_size, n)
        key = _chunk_key(encoder_id, [x for p in payloads[start:stop] for x in p])
        path = folder / f'{start:09d}-{key}.npy'
        if path.is_file():
            block = np.load(path, allow_pickle=False)
            reused += 1
        else:
            block = encode(start, stop)
            atomic_write(path, lambda f, b=block: np.save(f, b, allow_pickle=False))
        out[start:stop] = block
    out.flush()
    del out
    if reused:
        logger.info('%s: reused %d encoded chunks from %s', kind, reused, folder)


def _image_status(paths: List[Optional[str]],
                  root: Path) -> Tuple[List[Optional[Path]], Dict[int, str]]:
    r"""Resolves image paths and checks each one opens as an image; returns the paths and
    ``{row: reason}`` of the missing or unreadable ones."""
    from PIL import Image
    resolved, bad = [], {}
    for row, p in enumerate(paths):
        if p is None:
            resolved.append(None)
            bad[row] = 'no path'
            continue
        path = Path(p).expanduser()
        path = path if path.is_absolute() else root / path
        resolved.append(path)
        try:
            with Image.open(path) as img:
                img.verify()
        except FileNotFoundError:
            bad[row] = f'{path} not found'
        except Exception as e:  # noqa: BLE001 (PIL raises many types for broken files)
            bad[row] = f'{path} unreadable ({type(e).__name__})'
    return resolved, bad


def _load_images(paths: Sequence[Optional[Path]]) -> List[Any]:
    from PIL import Image
    out = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        with Image.open(path) as img:
            out.append(img.convert('RGB'))
    return out


# ---------------------------------------------------------------------------------- output

def _request(opts: FeaturizeOptions, encoders: Dict[str, Any]) -> Dict[str, Any]:
    r"""What identifies a featurize request: the inputs' md5, every option that changes the
    output, the encoders' fingerprints."""
    from anchorrec_pyg.data.encoders import md5_file
    params = {k: v for k, v in asdict(opts).items()
              if k not in ('interactions', 'items', 'batch_size', 'chunk_size', 'device',
                           'text_encoder', 'image_encoder', 'image_weights', 'joint_encoder')}
    return {'interactions': {'path': str(Path(opts.interactions).resolve()),
                             'md5': md5_file(opts.interactions)},
            'items': {'path': str(Path(opts.items).resolve()), 'md5': md5_file(opts.items)},
            'params': params,
            'encoders': {k: e.id for k, e in encoders.items()}}


def _request_id(request: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _existing_request(folder: Path) -> Optional[str]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return manifest.get('request_id') if isinstance(manifest, dict) else None


def _write_map(path: Path, ids: List[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['original_id', 'index'])
    writer.writerows([i, j] for j, i in enumerate(ids))
    path.write_text(buffer.getvalue(), encoding='utf-8')


def read_id_map(path: str | os.PathLike) -> List[str]:
    r"""The original ids of a ``user_map.csv``/``item_map.csv`` (``original_id,index``) in index
    order. Raises :class:`DataError` when the file is malformed."""
    path = Path(path)
    with open(path, encoding='utf-8', newline='') as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ['original_id', 'index']:
        raise DataError(f'{path}: expected the header original_id,index')
    ids = [r[0] for r in rows[1:]]
    if [r[1] for r in rows[1:]] != [str(j) for j in range(len(ids))]:
        raise DataError(f'{path}: column index must count 0, 1, 2, ... in order')
    return ids


def _write_inter(path: Path, cat: Catalogue) -> None:
    header = ['userID', 'itemID'] + (['rating'] if cat.rating is not None else []) \
        + (['timestamp'] if cat.timestamp is not None else []) + ['x_label']
    lines = ['\t'.join(header)]
    for r, (u, i, label) in enumerate(cat.table.tolist()):
        row = [str(u), str(i)]
        if cat.rating is not None:
            row.append(cat.rating[r].strip())
        if cat.timestamp is not None:
            row.append(cat.timestamp[r])
        row.append(str(label))
        lines.append('\t'.join(row))
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')


def featurize(opts: FeaturizeOptions, root: str | os.PathLike, name: str,
              overwrite: bool = False, progress: bool = True) -> Path:
    r"""Writes the MMRec folder ``<root>/<name>`` (and ``<root>/<name>_beit3`` with image and
    text features) from a raw catalogue; returns the folder. See the module docstring."""
    from anchorrec_pyg.data.encoders import ImageEncoder, JointEncoder, TextEncoder, md5_file
    opts.validate()
    if not name or '/' in name or name.startswith('.'):
        raise DataError(f'--name must be a plain folder name (got {name!r})')
    root = Path(root).expanduser()
    folder, mm_folder = root / name, root / f'{name}_beit3'
    if folder.exists() and not folder.is_dir():
        raise DataError(f'--out: {folder} exists and is not a folder')
    cat = build_catalogue(opts)

    encoders: Dict[str, Any] = {}
    if opts.text_encoder:
        encoders['text'] = TextEncoder(opts.text_encoder, opts.batch_size, opts.device)
    if opts.image_encoder:
        encoders['image'] = ImageEncoder(opts.image_encoder, opts.image_weights,
                                         opts.batch_size, opts.device)
    if opts.joint_encoder:
        encoders['mm'] = JointEncoder(opts.joint_encoder, opts.batch_size, opts.device)
    warnings: Dict[str, Any] = {k: cat.stats[k] for k in
                                ('duplicate_interactions', 'unknown_items',
                                 'items_without_interactions', 'items_repeated_rows')}
    empty = [cat.items[r] for r, t in enumerate(cat.texts) if not t]
    if empty and ('text' in encoders or 'mm' in encoders):
        logger.warning('%d items have empty text (zero text rows; first: %s)', len(empty),
                       _first(empty))
    warnings['empty_text'] = len(empty)
    image_paths: List[Optional[Path]] = []
    bad: Dict[int, str] = {}
    if 'image' in encoders or 'mm' in encoders:
        image_root = Path(opts.image_root).expanduser() if opts.image_root \
            else Path(opts.items).expanduser().resolve().parent
        image_paths, bad = _image_status(cat.images, image_root)
        if bad:
            first = '; '.join(f'{cat.items[r]} ({why})' for r, why in list(bad.items())[:3])
            if opts.on_missing_image == 'error':
                raise DataError(f'{len(bad)} of {len(cat.items)} items have a missing or '
                                f'unreadable image (first: {first}); fix them or pass '
                                '--on-missing-image zero to give them zero image rows')
            logger.warning('%d of %d items have a missing or unreadable image: zero image rows '
                           '(first: %s)', len(bad), len(cat.items), first)
    warnings['missing_images'] = len(bad)
    texts, ok = cat.texts, [r not in bad for r in range(len(cat.items))]

    def image_payload(r: int) -> List[str]:
        path = image_paths[r] if ok[r] else None
        if path is None:
            return ['']
        stat = path.stat()
        return [str(path), str(stat.st_size), str(stat.st_mtime_ns)]

    request = _request(opts, encoders)
    if image_paths:  # the images themselves: path, size and modification time of each
        request['images'] = _chunk_key('', [x for r in range(len(texts))
                                            for x in image_payload(r)])
    request_id = _request_id(request)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(root, e) from None
    with lock_file(root / f'.{name}.featurize.lock', what=f'--out {folder}'):
        existing = _existing_request(folder) if folder.exists() else None
        if folder.exists() and any(folder.iterdir()):
            if existing == request_id:
                logger.info('%s already holds this dataset (same inputs, options and encoders)',
                            folder)
                return folder
            if not overwrite:
                what = 'a different dataset' if existing else 'files not written by featurize'
                raise DataError(f'--out: {folder} already holds {what}; choose another '
                                '--name or pass --overwrite to replace it')

        cache = root / f'.{name}.featurize-cache'
        remove_staging_folders(root, name)
        staging = make_staging_folder(root, name)
        try:
            data_dir, mm_dir = staging / name, staging / f'{name}_beit3'
            data_dir.mkdir()
            _write_inter(data_dir / f'{name}.inter', cat)
            _write_map(data_dir / USER_MAP, cat.users)
            _write_map(data_dir / ITEM_MAP, cat.items)
            if 'text' in encoders:
                enc = encoders['text']
                encode_text = _zero_filled(enc.dim, [bool(t) for t in texts],
                                           lambda rows, e=enc: e.encode([texts[r] for r in rows]))
                _encode_table(data_dir / 'text_feat.npy', cache, 'text', enc.id, enc.dim,
                              [[t] for t in texts], encode_text, opts.chunk_size, progress)
            if 'image' in encoders:
                enc = encoders['image']
                encode_image = _zero_filled(
                    enc.dim, ok,
                    lambda rows, e=enc: e.encode(_load_images([image_paths[r] for r in rows])))
                _encode_table(data_dir / 'image_feat.npy', cache, 'image', enc.id, enc.dim,
                              [image_payload(r) for r in range(len(texts))], encode_image,
                              opts.chunk_size, progress)
            mm_source = None
            if 'mm' in encoders:
                enc = encoders['mm']
                mm_dir.mkdir()

                def encode_joint(start: int, stop: int) -> np.ndarray:
                    images = _load_images([image_paths[r] if ok[r] else None
                                           for r in range(start, stop)])
                    return enc.encode(texts[start:stop], images)

                _encode_table(mm_dir / 'image_feat.npy', cache, 'mm', enc.id, enc.dim,
                              [[texts[r], *image_payload(r)] for r in range(len(texts))],
                              encode_joint, opts.chunk_size, progress)
                mm_source = 'joint'
            elif 'text' in encoders and 'image' in encoders:
                mm_dir.mkdir()
                fused = concat_anchor(np.load(data_dir / 'image_feat.npy', mmap_mode='r'),
                                      np.load(data_dir / 'text_feat.npy', mmap_mode='r'))
                np.save(mm_dir / 'image_feat.npy', fused, allow_pickle=False)
                mm_source = 'concat'

            files = {}
            for base, sub in ((data_dir, ''), (mm_dir, f'../{name}_beit3/')):
                if base.is_dir():
                    files.update({f'{sub}{p.name}': md5_file(p) for p in sorted(base.iterdir())})
            manifest = {
                'format': FORMAT, 'version': VERSION, 'request_id': request_id,
                'dataset': name, 'request': request,
                'counts': {'users': len(cat.users), 'items': len(cat.items),
                           'interactions': int(cat.table.shape[0])},
                'filtering': cat.stats['kcore'], 'split': cat.stats['split'],
                'encoders': {k: e.describe() for k, e in encoders.items()},
                'mm_source': mm_source, 'warnings': warnings, 'files': files,
                'train_with': f'--set data.root={root} --set data.name={name}',
            }
            (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n',
                                             encoding='utf-8')
            for target in (folder, mm_folder):
                if target.exists():
                    shutil.rmtree(target)
            if mm_dir.is_dir():
                os.replace(mm_dir, mm_folder)
            os.replace(data_dir, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    logger.info('wrote %s: %d users, %d items, %d interactions (%s)', folder, len(cat.users),
                len(cat.items), cat.table.shape[0],
                ', '.join(f'{k} {v}' for k, v in cat.stats['split'].items() if k != 'method'
                          and k != 'seed'))
    return folder
