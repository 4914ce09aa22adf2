r"""MMRec-format datasets as one PyG :class:`~torch_geometric.data.HeteroData` (Contract 1).

:class:`MMRecDataset` reads ``<root>/<name>/`` (SPEC §1, see :mod:`anchorrec_pyg.data.mmrec`)
and builds, once, the graphs of SPEC §2; the result is cached in a processed file whose name
holds a hash of the build parameters and of the raw files' bytes, so that changing either
rebuilds it, and nothing else does. The processed file holds only tensors and primitives and is
read with ``torch.load(weights_only=True)``; anything else is refused. Its SHA-256 is recorded
beside it (``<file>.sha256``, :func:`anchorrec_pyg.io.atomic_write`) and checked before every
load: a corrupt cache is rebuilt, with a warning. The processed folder is created only when a
build has succeeded, so a refused dataset folder is left as it was. Processes that open the same
dataset at once (``compare`` workers, the ranks of ``train --nproc``) build it once: the others
wait on a lock file under ``<home>/locks`` and then load the finished file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch_geometric.data import HeteroData, InMemoryDataset

from anchorrec_pyg.data.knn import knn_graph_normalized, normalized_ui_weights
from anchorrec_pyg.data.mmrec import anchorrec_home, concat_anchor, load_features, load_inter
from anchorrec_pyg.errors import DataError, OutputError
from anchorrec_pyg.io import (
    atomic_write,
    check_writable_folder,
    lock_file,
    remove_file,
    verify_checksum,
    zip_crc_ok,
)
from anchorrec_pyg.schema import ITEM_USER, MODALITIES, USER_ITEM, feature_key, knn_edge_type

logger = logging.getLogger(__name__)

PROCESSED_FORMAT = 'anchorrec-pyg/mmrec-heterodata'
PROCESSED_VERSION = 1
MM_SOURCES = ('file', 'concat')
HASH_CHUNK_BYTES = 16 * 2**20
MMREC_DATA_URL = 'https://github.com/enoche/MMRec/tree/master/data'
ALIGNREC_DATA_URL = 'https://github.com/sjtulyf123/AlignRec_CIKM24/tree/main/data'
KNOWN_DATASETS = {
    'baby': 'Amazon Baby',
    'sports': 'Amazon Sports and Outdoors',
    'clothing': 'Amazon Clothing, Shoes and Jewelry',
    'office': 'Amazon Office Products',
    'games': 'Amazon Video Games',
    'videogames': 'Amazon Video Games',
    'video_games': 'Amazon Video Games',
    'elec': 'Amazon Electronics',
    'electronics': 'Amazon Electronics',
}


def _file_hash(path: str, digest: 'hashlib._Hash') -> None:
    with open(path, 'rb') as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)


def _build_lock(processed_path: str) -> Path:
    r"""The lock file that serialises builds of the processed file :obj:`processed_path`: kept
    in ``<home>/locks`` (always writable, whereas the processed folder is created only when a
    build succeeds), named by a hash of the path."""
    folder = anchorrec_home() / 'locks'
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f'cannot create {folder} ({e.strerror}); set ANCHORREC_PYG_HOME to a '
                          'writable folder') from None
    digest = hashlib.sha256(osp.abspath(processed_path).encode()).hexdigest()[:16]
    return folder / f'processed-{digest}.lock'


class MMRecDataset(InMemoryDataset):
    r"""A multimodal recommendation dataset in the MMRec on-disk format (SPEC §1) as one
    :class:`~torch_geometric.data.HeteroData` with the graphs of SPEC §2.

    ``dataset[0]`` holds ``user`` and ``item`` nodes (:math:`U`, :math:`I`); the raw feature
    tables ``data['item'].x_<m>`` for the loaded modalities; the training interactions
    ``data['user', 'interacts', 'item'].edge_index`` (sorted, unique) with
    ``edge_weight`` :math:`= 1/\sqrt{\deg(u)\deg(i)}` and their reverse
    ``('item', 'rev_interacts', 'user')``; the held-out interactions in ``val_edge_index`` and
    ``test_edge_index`` of ``('user', 'interacts', 'item')`` (never message-passing edges); and
    one normalised kNN graph ``('item', 'similar_<m>', 'item')`` per modality (row 0 = neighbour
    = source, row 1 = item = target). Global attributes: ``dataset_name``, ``modalities``,
    ``knn_k``, ``mm_source``.

    Args:
        root: folder holding ``<name>/`` (and, by convention, ``<name>_beit3/``).
        name: dataset name: the folder and the ``<name>.inter`` file.
        modalities: feature tables to load, among ``'mm'``, ``'text'``, ``'image'``; empty
            loads the interactions only (ID-only models).
        k: neighbours per item in the kNN graphs (SPEC §2, default 10); ``0 < k < I``.
        mm_source: ``'file'`` reads ``<mm_dir>/<mm_file>``; ``'concat'`` derives the anchor
            from the image and text files (:func:`~anchorrec_pyg.data.mmrec.concat_anchor`).
        image_file, text_file: feature file names inside ``<root>/<name>/``.
        mm_dir: folder of the fused features (default ``<root>/<name>_beit3``).
        mm_file: fused feature file name inside ``mm_dir``.
        processed_dir: where the processed file goes; default ``<root>/<name>/processed``, or,
            when that is not writable, ``<home>/processed/<name>-<hash of the folder path>``
            with ``<home>`` = ``$ANCHORREC_PYG_HOME`` or ``~/.cache/anchorrec-pyg``.
        transform: applied to the :class:`HeteroData` on every access.
        force_reload: rebuild even when a matching processed file exists.
        log: log progress at INFO level.
        inter_file: interaction file name inside ``<root>/<name>/`` (default
            ``<name>.inter``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        modalities: Sequence[str] = MODALITIES,
        k: int = 10,
        mm_source: str = 'file',
        image_file: str = 'image_feat.npy',
        text_file: str = 'text_feat.npy',
        mm_dir: str | os.PathLike | None = None,
        mm_file: str = 'image_feat.npy',
        processed_dir: str | os.PathLike | None = None,
        transform: Callable[[HeteroData], HeteroData] | None = None,
        force_reload: bool = False,
        log: bool = True,
        inter_file: str | None = None,
    ) -> None:
        if isinstance(modalities, str):
            modalities = (modalities,)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise DataError(f'modalities must be a subset of {", ".join(MODALITIES)}, '
                            f'got {list(modalities)!r}')
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise DataError(f'k must be a positive integer (0 < k < number of items), got {k!r}')
        if mm_source not in MM_SOURCES:
            raise DataError(f"mm_source must be 'file' or 'concat', got {mm_source!r}")
        root = osp.abspath(osp.expanduser(os.fspath(root)))
        self.name = name
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.k = k
        self.mm_source = mm_source
        self.image_file, self.text_file, self.mm_file = image_file, text_file, mm_file
        self.inter_file = inter_file if inter_file is not None else f'{name}.inter'
        self.mm_dir = (osp.abspath(osp.expanduser(os.fspath(mm_dir))) if mm_dir is not None
                       else osp.join(root, f'{name}_beit3'))
        self._processed_dir_arg = processed_dir
        self._processed_dir: str | None = None
        self._cache_key: str | None = None
        super().__init__(root, transform, log=log, force_reload=force_reload)
        self.load(self.processed_paths[0])

    # -- files --------------------------------------------------------------------------------

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.name)

    def _raw_files(self) -> dict[str, str]:
        """The files this build reads, by role, as absolute paths."""
        files = {'inter': osp.join(self.raw_dir, self.inter_file)}
        needs_concat = 'mm' in self.modalities and self.mm_source == 'concat'
        if 'image' in self.modalities or needs_concat:
            files['image'] = osp.join(self.raw_dir, self.image_file)
        if 'text' in self.modalities or needs_concat:
            files['text'] = osp.join(self.raw_dir, self.text_file)
        if 'mm' in self.modalities and self.mm_source == 'file':
            files['mm'] = osp.join(self.mm_dir, self.mm_file)
        return files

    @property
    def raw_file_names(self) -> list[str]:
        """Files read by this build; the fused features may live outside ``raw_dir`` and are
        given as an absolute path."""
        return [osp.relpath(p, self.raw_dir) if osp.dirname(p) == self.raw_dir else p
                for p in self._raw_files().values()]

    @property
    def raw_paths(self) -> list[str]:
        return list(self._raw_files().values())

    @property
    def processed_dir(self) -> str:
        if self._processed_dir is None:
            self._processed_dir = self._resolve_processed_dir()
        return self._processed_dir

    def _resolve_processed_dir(self) -> str:
        if self._processed_dir_arg is not None:
            return osp.abspath(osp.expanduser(os.fspath(self._processed_dir_arg)))
        default = osp.join(self.raw_dir, 'processed')
        try:
            check_writable_folder(default)  # a read-only folder by its mode bits, even for root
        except OutputError:
            folder_hash = hashlib.blake2b(self.raw_dir.encode(), digest_size=6).hexdigest()
            fallback = str(anchorrec_home() / 'processed' / f'{self.name}-{folder_hash}')
            logger.info('%s is not writable; processed files go to %s', default, fallback)
            return fallback
        return default

    @property
    def build_params(self) -> dict[str, Any]:
        """Everything besides the raw bytes that the processed file depends on."""
        return {
            'format': PROCESSED_FORMAT, 'version': PROCESSED_VERSION, 'name': self.name,
            'modalities': list(self.modalities), 'k': self.k, 'mm_source': self.mm_source,
            'files': {role: osp.basename(p) for role, p in self._raw_files().items()},
        }

    @property
    def cache_key(self) -> str:
        """``<params hash>-<raw content hash>`` (BLAKE2b), computed once per instance."""
        if self._cache_key is None:
            params = json.dumps(self.build_params, sort_keys=True).encode()
            params_hash = hashlib.blake2b(params, digest_size=8).hexdigest()
            content = hashlib.blake2b(digest_size=16)
            for role, path in sorted(self._raw_files().items()):
                content.update(role.encode() + b'\0')
                _file_hash(path, content)
            self._cache_key = f'{params_hash}-{content.hexdigest()}'
        return self._cache_key

    @property
    def processed_file_names(self) -> list[str]:
        return [f'data-{self.cache_key}.pt']

    # -- download / process ---------------------------------------------------------------------

    def _download(self) -> None:
        if any(not osp.isfile(p) for p in self.raw_paths):
            self.download()

    def download(self) -> None:
        """The files cannot be fetched automatically (the Amazon files live on Google Drive):
        raises a :class:`DataError` listing which files to put where."""
        missing = [(role, p) for role, p in self._raw_files().items() if not osp.isfile(p)]
        by_folder: dict[str, list[str]] = {}
        for _, path in missing:
            by_folder.setdefault(osp.dirname(path), []).append(osp.basename(path))
        where = '; '.join(f'{", ".join(names)} in {folder}/'
                          for folder, names in by_folder.items())
        if osp.isdir(self.raw_dir):
            message = f'dataset {self.name!r} is incomplete: put {where}'
        else:
            message = f'dataset folder {self.raw_dir} not found: put {where}'
        title = KNOWN_DATASETS.get(self.name.lower())
        if title is not None:
            message += (f' ({title} cannot be downloaded automatically: the .inter, image and '
                        f'text files are MMRec\'s, see {MMREC_DATA_URL}')
            if any(role == 'mm' for role, _ in missing):
                message += f'; the fused BEiT-3 features are AlignRec\'s, see {ALIGNREC_DATA_URL}'
            message += ')'
        if any(role == 'mm' for role, _ in missing):
            message += ('; without fused features set data.mm_source=concat (argument '
                        'mm_source) to derive the anchor from the image and text files')
        if self.modalities != ('text',) and any(r in ('image', 'mm') for r, _ in missing) \
                and osp.isfile(osp.join(self.raw_dir, self.text_file)):
            message += ('; or load only what exists, e.g. data.modalities=[text] (argument '
                        'modalities)')
        if any(role == 'inter' for role, _ in missing) and osp.isdir(self.raw_dir):
            found = sorted(f for f in os.listdir(self.raw_dir) if f.endswith('.inter'))
            if found:
                message += (f'; found {", ".join(found)}: set data.inter_file={found[0]} '
                            f'(argument inter_file)')
        raise DataError(message)

    def _process(self) -> None:
        path = self.processed_paths[0]
        if not self.force_reload and osp.isfile(path) and self._cache_intact(path):
            return  # the common case: no lock, so openers of a built file check it in parallel
        with lock_file(_build_lock(path), blocking=True):
            if not self.force_reload and osp.isfile(path):
                if self._cache_intact(path):
                    return
                logger.warning('%s: corrupt processed file (%s); rebuilding it', path,
                               'its SHA-256 differs from the recorded one'
                               if verify_checksum(path) is False else 'its zip CRC check fails')
            start = time.perf_counter()
            self.process()
            if self.log:
                logger.info('processed %s (%s, k=%d) in %.2fs -> %s', self.name,
                            '+'.join(self.modalities), self.k, time.perf_counter() - start, path)

    def process(self) -> None:
        files = self._raw_files()
        inter = load_inter(files['inter'])
        num_users, num_items = inter.num_users, inter.num_items
        if self.modalities and self.k >= num_items:
            raise DataError(f'k = {self.k} must be smaller than the number of items I = '
                            f'{num_items} of {files["inter"]}')
        raw = {role: load_features(files[role], num_items)
               for role in ('image', 'text', 'mm') if role in files}
        if 'mm' in self.modalities and self.mm_source == 'concat':
            raw['mm'] = concat_anchor(raw['image'], raw['text'])
            files['mm'] = f'concat({files["image"]}, {files["text"]})'

        data = HeteroData()
        data['user'].num_nodes = num_users
        data['item'].num_nodes = num_items
        for m in self.modalities:
            data['item'][feature_key(m)] = torch.from_numpy(raw[m])

        train = torch.from_numpy(inter.train)
        weight = normalized_ui_weights(train, num_users, num_items)
        data[USER_ITEM].edge_index = train
        data[USER_ITEM].edge_weight = weight
        data[USER_ITEM].val_edge_index = torch.from_numpy(inter.valid)
        data[USER_ITEM].test_edge_index = torch.from_numpy(inter.test)
        data[ITEM_USER].edge_index = train.flip(0)
        data[ITEM_USER].edge_weight = weight.clone()

        for m in self.modalities:
            x = data['item'][feature_key(m)]
            num_zero = int((x.norm(dim=1) == 0).sum())
            if num_zero:
                logger.warning('%s: %d of %d feature rows are all zero; each such item keeps '
                               'only a self loop of weight 1 and is never another item\'s '
                               'neighbour', files[m], num_zero, num_items)
            try:
                edge_index, edge_weight = knn_graph_normalized(x, self.k)
            except DataError as e:
                raise DataError(f'{files[m]}: {e}') from None
            data[knn_edge_type(m)].edge_index = edge_index
            data[knn_edge_type(m)].edge_weight = edge_weight

        data.dataset_name = self.name
        data.modalities = list(self.modalities)
        data.knn_k = self.k
        data.mm_source = self.mm_source
        self.save([data], self.processed_paths[0])

    # -- safe (de)serialisation ----------------------------------------------------------------

    def save(self, data_list: Sequence[HeteroData], path: str) -> None:
        """Writes the one :class:`HeteroData` as a plain dict of tensors and primitives,
        atomically (temporary file in the same folder, then :func:`os.replace`)."""
        if len(data_list) != 1:
            raise ValueError('MMRecDataset holds exactly one HeteroData')
        payload = {'format': PROCESSED_FORMAT, 'version': PROCESSED_VERSION,
                   'key': self.cache_key, 'data': data_list[0].to_dict()}
        folder = osp.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise DataError(f'cannot create the processed folder {folder} ({e.strerror}); '
                            f'set data.processed_dir to a writable folder') from None
        atomic_write(path, lambda f: torch.save(payload, f), checksum=True)
        params_hash = self.cache_key.split('-')[0]
        for stale in Path(folder).glob(f'data-{params_hash}-*.pt'):
            if str(stale) != path:
                remove_file(stale)

    @staticmethod
    def _cache_intact(path: str) -> bool:
        """Whether the processed file has its recorded SHA-256 (or, written without one, passes
        its zip container's CRC check)."""
        recorded = verify_checksum(path)
        return zip_crc_ok(path) if recorded is None else recorded

    def load(self, path: str, data_cls: type = HeteroData) -> None:
        """Reads a processed file with ``torch.load(weights_only=True)`` only; a file that
        holds anything but tensors and primitives, or not this format, raises DataError."""
        hint = 'delete it and rerun to rebuild it'
        try:
            payload = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means the file is refused
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f'{path}: refused as a processed file ({reason[:200]}); {hint}') \
                from None
        if (not isinstance(payload, dict) or payload.get('format') != PROCESSED_FORMAT
                or payload.get('version') != PROCESSED_VERSION
                or payload.get('key') != self.cache_key
                or not isinstance(payload.get('data'), dict)):
            raise DataError(f'{path}: not a processed file of this dataset version; {hint}')
        try:
            data = data_cls.from_dict(payload['data'])
        except Exception as e:  # noqa: BLE001
            raise DataError(f'{path}: malformed processed data ({e}); {hint}') from None
        self.data, self.slices = data, None

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.name}, modalities={list(self.modalities)}, '
                f'k={self.k}, mm_source={self.mm_source!r})')


def load_mmrec(root: str | os.PathLike, name: str, **kwargs: Any) -> HeteroData:
    """The :class:`HeteroData` of :class:`MMRecDataset` ``(root, name, **kwargs)``."""
    return MMRecDataset(root, name, **kwargs)[0]
