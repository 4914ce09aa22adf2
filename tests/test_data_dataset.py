"""MMRecDataset: Contract 1, caching and invalidation, safe loading, bad inputs."""
from __future__ import annotations

import logging
import math
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorrec_pyg.data import MMRecDataset, concat_anchor
from anchorrec_pyg.data import dataset as dataset_module
from anchorrec_pyg.data import generate_synthetic, load_inter, load_mmrec
from anchorrec_pyg.errors import DataError

UI = ('user', 'interacts', 'item')
IU = ('item', 'rev_interacts', 'user')


@pytest.fixture
def tiny_copy(tiny_mmrec_root, tmp_path) -> tuple[str, str]:
    """A private, writable copy of the tiny folder (tests that modify or rebuild it)."""
    root, name = tiny_mmrec_root
    for folder in (name, f'{name}_beit3'):
        shutil.copytree(Path(root) / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns('processed'))
    return str(tmp_path), name


def test_contract_1(tiny_mmrec_root, tiny_data):
    root, name = tiny_mmrec_root
    data = tiny_data
    inter = load_inter(Path(root) / name / f'{name}.inter')
    num_users, num_items = inter.num_users, inter.num_items
    assert data['user'].num_nodes == num_users == 60
    assert data['item'].num_nodes == num_items == 40
    for m, dim in (('mm', 24), ('text', 16), ('image', 32)):
        x = data['item'][f'x_{m}']
        assert x.dtype == torch.float32 and x.shape == (num_items, dim)
    folder = Path(root) / name
    np.testing.assert_array_equal(data['item'].x_image.numpy(),
                                  np.load(folder / 'image_feat.npy'))
    np.testing.assert_array_equal(data['item'].x_mm.numpy(),
                                  np.load(Path(root) / f'{name}_beit3' / 'image_feat.npy'))

    ui = data[UI]
    edge_index = ui.edge_index
    assert edge_index.dtype == torch.int64
    assert torch.equal(edge_index, torch.from_numpy(inter.train))
    key = edge_index[0] * num_items + edge_index[1]
    assert torch.equal(key, key.unique())  # sorted and unique
    deg_u = torch.bincount(edge_index[0], minlength=num_users).float()
    deg_i = torch.bincount(edge_index[1], minlength=num_items).float()
    torch.testing.assert_close(ui.edge_weight, 1 / (deg_u[edge_index[0]]
                                                    * deg_i[edge_index[1]]).sqrt())
    assert torch.equal(data[IU].edge_index, edge_index.flip(0))
    assert torch.equal(data[IU].edge_weight, ui.edge_weight)
    assert torch.equal(ui.val_edge_index, torch.from_numpy(inter.valid))
    assert torch.equal(ui.test_edge_index, torch.from_numpy(inter.test))
    # Held-out interactions never are message-passing edges.
    for held in (ui.val_edge_index, ui.test_edge_index):
        assert not torch.isin(held[0] * num_items + held[1], key).any()

    for m in ('mm', 'text', 'image'):
        store = data['item', f'similar_{m}', 'item']
        assert store.edge_index.shape == (2, num_items * 10)
        assert store.edge_weight.dtype == torch.float32
        assert torch.equal(store.edge_index[1], torch.arange(num_items).repeat_interleave(10))
        x = data['item'][f'x_{m}']
        xn = x / x.norm(dim=1, keepdim=True)
        val, idx = (xn @ xn.T).topk(10, dim=1)
        assert torch.equal(store.edge_index[0], idx.reshape(-1))
        s = val.sum(dim=1)
        torch.testing.assert_close(store.edge_weight,
                                   (val / (s.unsqueeze(1) * s[idx]).sqrt()).reshape(-1))
    assert data.mm_source == 'file' and data.knn_k == 10
    assert data.modalities == ['mm', 'text', 'image']


def test_standalone_use_and_modalities_subset(tiny_copy):
    root, name = tiny_copy
    data = load_mmrec(root, name, modalities=('image', 'text'), k=3, log=False)
    assert set(data['item'].keys()) == {'num_nodes', 'x_image', 'x_text'}
    assert ('item', 'similar_mm', 'item') not in data.edge_types
    assert data['item', 'similar_text', 'item'].edge_index.shape == (2, 40 * 3)
    assert data.modalities == ['text', 'image']


def test_interactions_only(tiny_copy):
    root, name = tiny_copy
    data = MMRecDataset(root, name, modalities=(), k=100, log=False)[0]
    assert data.edge_types == [UI, IU] and set(data['item'].keys()) == {'num_nodes'}
    assert data.modalities == []


def test_second_load_hits_cache_and_only_real_changes_rebuild(tiny_copy, monkeypatch):
    root, name = tiny_copy
    builds = []
    original = MMRecDataset.process

    def counting(self):
        builds.append((self.k, self.modalities))
        original(self)

    monkeypatch.setattr(MMRecDataset, 'process', counting)
    first = MMRecDataset(root, name, log=False)
    assert len(builds) == 1
    again = MMRecDataset(root, name, log=False)
    assert len(builds) == 1 and again.processed_paths == first.processed_paths
    assert torch.equal(again[0][UI].edge_index, first[0][UI].edge_index)

    inter = Path(root) / name / f'{name}.inter'
    os.utime(inter, (1, 1))  # new mtime, same bytes: still cached
    MMRecDataset(root, name, log=False)
    assert len(builds) == 1

    MMRecDataset(root, name, k=5, log=False)  # build parameter changed
    MMRecDataset(root, name, modalities=('text',), log=False)
    MMRecDataset(root, name, mm_source='concat', log=False)
    assert len(builds) == 4
    MMRecDataset(root, name, k=5, log=False)  # each parameter set keeps its own file
    assert len(builds) == 4

    feat = Path(root) / name / 'text_feat.npy'
    x = np.load(feat)
    x[0, 0] += 1.0
    np.save(feat, x)  # raw bytes changed
    changed = MMRecDataset(root, name, log=False)
    assert len(builds) == 5
    assert changed.processed_paths != first.processed_paths
    assert not os.path.exists(first.processed_paths[0])  # the stale file is replaced
    assert not os.path.exists(first.processed_paths[0] + '.sha256')
    assert changed[0]['item'].x_text[0, 0] == pytest.approx(float(x[0, 0]))

    MMRecDataset(root, name, log=False, force_reload=True)
    assert len(builds) == 6


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_datasets_opened_at_once_build_the_processed_file_once(tiny_copy, monkeypatch):
    root, name = tiny_copy
    builds, started = [], threading.Barrier(2)
    original = MMRecDataset.process

    def slow_counting(self):
        builds.append(threading.get_ident())
        time.sleep(0.5)  # the other opener arrives while this build runs
        original(self)

    monkeypatch.setattr(MMRecDataset, 'process', slow_counting)
    opened = []

    def open_dataset():
        started.wait()
        opened.append(MMRecDataset(root, name, log=False))

    threads = [threading.Thread(target=open_dataset) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(opened) == 2
    assert torch.equal(opened[0][0][UI].edge_index, opened[1][0][UI].edge_index)


def test_hostile_processed_file_is_refused(tiny_copy, tmp_path, caplog):
    root, name = tiny_copy
    path = MMRecDataset(root, name, log=False).processed_paths[0]
    marker = tmp_path / 'pwned'
    torch.save({'format': dataset_module.PROCESSED_FORMAT, 'data': _Payload(marker)}, path)
    # its SHA-256 differs from the recorded one: rebuilt, never read
    with caplog.at_level(logging.WARNING, logger='anchorrec_pyg.data.dataset'):
        rebuilt = MMRecDataset(root, name, log=False)
    assert rebuilt[0]['user'].num_nodes == 60 and not marker.exists()
    assert 'corrupt processed file' in caplog.text

    # without a recorded checksum (a file written before checksums): refused by the loader
    torch.save({'format': dataset_module.PROCESSED_FORMAT, 'data': _Payload(marker)}, path)
    os.unlink(path + '.sha256')
    with pytest.raises(DataError, match='refused as a processed file') as e:
        MMRecDataset(root, name, log=False)
    assert not marker.exists()
    assert path in str(e.value) and 'delete it and rerun to rebuild it' in str(e.value)
    assert 'force_reload' not in str(e.value)  # the command line cannot pass it

    Path(path).write_bytes(b'\x00garbage')
    with pytest.raises(DataError, match='refused as a processed file'):
        MMRecDataset(root, name, log=False)
    torch.save({'format': 'something else'}, path)
    with pytest.raises(DataError, match='not a processed file of this dataset version'):
        MMRecDataset(root, name, log=False)
    assert MMRecDataset(root, name, log=False, force_reload=True)[0]['user'].num_nodes == 60


def _flip_bytes_of(path: str, tensor: torch.Tensor) -> None:
    """Flips one bit in the middle of :obj:`tensor`'s bytes inside the file :obj:`path`."""
    raw = bytearray(Path(path).read_bytes())
    start = raw.find(tensor.numpy().tobytes())
    assert start >= 0
    raw[start + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    Path(path).write_bytes(bytes(raw))


@pytest.mark.parametrize('recorded', [True, False])
def test_corrupt_cache_is_rebuilt_with_a_warning(tiny_copy, caplog, recorded):
    """A flipped bit in the cached kNN weights is caught (by the recorded SHA-256, or without
    one by the zip CRC) and the cache rebuilt, instead of training on wrong weights."""
    root, name = tiny_copy
    first = MMRecDataset(root, name, log=False)
    path = first.processed_paths[0]
    weight = first[0]['item', 'similar_text', 'item'].edge_weight
    _flip_bytes_of(path, weight)
    if not recorded:
        os.unlink(path + '.sha256')
    with caplog.at_level(logging.WARNING, logger='anchorrec_pyg.data.dataset'):
        again = MMRecDataset(root, name, log=False)
    assert f'{path}: corrupt processed file' in caplog.text and 'rebuilding it' in caplog.text
    assert torch.equal(again[0]['item', 'similar_text', 'item'].edge_weight, weight)
    assert os.path.isfile(path + '.sha256')


def test_mm_source_concat(tiny_copy):
    root, name = tiny_copy
    shutil.rmtree(Path(root) / f'{name}_beit3')
    with pytest.raises(DataError, match=r'image_feat.npy in .*tiny_beit3/.*set '
                       r'data.mm_source=concat \(argument mm_source\)'):
        MMRecDataset(root, name, log=False)
    data = MMRecDataset(root, name, mm_source='concat', log=False)[0]
    assert data.mm_source == 'concat'
    folder = Path(root) / name
    expected = concat_anchor(np.load(folder / 'image_feat.npy'), np.load(folder / 'text_feat.npy'))
    np.testing.assert_allclose(data['item'].x_mm.numpy(), expected)


def test_custom_file_names_and_folders(tiny_copy, tmp_path):
    root, name = tiny_copy
    folder = Path(root) / name
    os.rename(folder / 'text_feat.npy', folder / 'sbert.npy')
    mm_dir = tmp_path / 'fused'
    os.rename(Path(root) / f'{name}_beit3', mm_dir)
    os.rename(mm_dir / 'image_feat.npy', mm_dir / 'beit3.npy')
    os.rename(folder / f'{name}.inter', folder / 'interactions.inter')
    with pytest.raises(DataError, match=r'found interactions.inter: set '
                       r'data.inter_file=interactions.inter \(argument inter_file\)'):
        MMRecDataset(root, name, log=False)
    ds = MMRecDataset(root, name, text_file='sbert.npy', mm_dir=mm_dir, mm_file='beit3.npy',
                      inter_file='interactions.inter', processed_dir=tmp_path / 'proc',
                      log=False)
    assert Path(ds.processed_paths[0]).parent == tmp_path / 'proc'
    assert ds[0]['item'].x_text.shape == (40, 16)


@pytest.mark.parametrize('name, mentions', [
    ('baby', ['baby.inter, image_feat.npy, text_feat.npy in ', 'baby_beit3/',
              'github.com/enoche/MMRec', 'AlignRec']),
    ('videogames', ['videogames.inter', 'Amazon Video Games', 'MMRec']),
    ('my_data', ['my_data.inter, image_feat.npy, text_feat.npy in ', 'my_data_beit3/']),
])
def test_download_explains_where_files_go(tmp_path, name, mentions):
    with pytest.raises(DataError) as e:
        MMRecDataset(tmp_path, name, log=False)
    message = str(e.value)
    assert '\n' not in message
    for text in mentions:
        assert text in message
    assert f'dataset folder {tmp_path / name} not found' in message
    assert not (tmp_path / name).exists()  # nothing created


def test_hints_name_the_config_keys_a_user_types(tiny_copy):
    root, name = tiny_copy
    os.unlink(Path(root) / name / 'image_feat.npy')
    with pytest.raises(DataError) as e:
        MMRecDataset(root, name, log=False)
    assert 'data.modalities=[text] (argument modalities)' in str(e.value)
    assert "('text',)" not in str(e.value)  # no Python syntax where the user types a key
    assert not (Path(root) / name / 'processed').exists()


def test_read_only_folder_falls_back_to_home(tiny_copy, anchorrec_home, caplog):
    root, name = tiny_copy
    folder = Path(root) / name
    mode = folder.stat().st_mode
    folder.chmod(stat.S_IREAD | stat.S_IEXEC)
    try:
        with caplog.at_level(logging.INFO, logger='anchorrec_pyg.data.dataset'):
            ds = MMRecDataset(root, name, log=False)
    finally:
        folder.chmod(mode)
    assert Path(ds.processed_dir).parent == anchorrec_home / 'processed'
    assert Path(ds.processed_dir).name.startswith(f'{name}-')
    assert not (folder / 'processed').exists()
    assert 'is not writable' in caplog.text


def replace_features(root, name, array, file='text_feat.npy'):
    np.save(Path(root) / name / file, array)


@pytest.mark.parametrize('kwargs, match', [
    (dict(k=0), 'k must be a positive integer'),
    (dict(k=-3), 'k must be a positive integer'),
    (dict(k=40), r'k = 40 must be smaller than the number of items I = 40'),
    (dict(k=2.5), 'k must be a positive integer'),
    (dict(modalities=('audio',)), 'modalities must be a subset'),
    (dict(mm_source='beit'), "mm_source must be 'file' or 'concat'"),
])
def test_bad_parameters(tiny_copy, kwargs, match):
    root, name = tiny_copy
    with pytest.raises(DataError, match=match):
        MMRecDataset(root, name, log=False, **kwargs)


def test_bad_feature_file_fails_cleanly(tiny_copy):
    root, name = tiny_copy
    replace_features(root, name, np.ones((39, 16), np.float32))
    with pytest.raises(DataError, match=r'text_feat.npy: has 39 rows but .* I = 40'):
        MMRecDataset(root, name, log=False)
    assert not (Path(root) / name / 'processed').exists()  # a refused folder is left as it was


def test_zero_feature_rows_warn_and_keep_self_loops(tiny_copy, caplog):
    root, name = tiny_copy
    x = np.load(Path(root) / name / 'text_feat.npy')
    x[[3, 7, 8]] = 0
    replace_features(root, name, x)
    with caplog.at_level(logging.WARNING, logger='anchorrec_pyg.data.dataset'):
        data = MMRecDataset(root, name, modalities=('text',), log=False)[0]
    assert '3 of 40 feature rows are all zero' in caplog.text
    store = data['item', 'similar_text', 'item']
    assert store.edge_index.size(1) == 40 * 10 - 3 * 9
    for z in (3, 7, 8):
        assert store.edge_index[:, store.edge_index[1] == z].tolist() == [[z], [z]]
        assert not ((store.edge_index[0] == z) & (store.edge_index[1] != z)).any()


def test_duplicates_and_cold_users_in_dataset(tmp_path):
    folder = tmp_path / 'hand'
    folder.mkdir()
    rows = ['0\t0\t0', '0\t0\t0', '0\t1\t0', '1\t1\t0', '1\t2\t0', '1\t3\t1', '2\t2\t0',
            '2\t3\t2', '3\t0\t1', '3\t1\t2']
    (folder / 'hand.inter').write_text('userID\titemID\tx_label\n' + '\n'.join(rows) + '\n')
    np.save(folder / 'text_feat.npy', np.eye(4, 3, dtype=np.float32) + 0.1)
    data = MMRecDataset(tmp_path, 'hand', modalities=('text',), k=2, log=False)[0]
    ui = data[UI]
    assert data['user'].num_nodes == 4 and data['item'].num_nodes == 4
    assert ui.edge_index.tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 2, 2]]
    assert ui.val_edge_index.tolist() == [[1], [3]]
    assert ui.test_edge_index.tolist() == [[2], [3]]
    torch.testing.assert_close(ui.edge_weight, torch.tensor(
        [1 / math.sqrt(2 * 1), 1 / math.sqrt(2 * 2), 1 / math.sqrt(2 * 2),
         1 / math.sqrt(2 * 2), 1 / math.sqrt(1 * 2)]))


def test_generated_default_is_loadable(tmp_path):
    generate_synthetic(tmp_path, 'tiny2', preset='tiny', seed=3)
    data = MMRecDataset(tmp_path, 'tiny2', log=False)[0]
    assert data['item'].x_image.shape[0] == data['item'].num_nodes == 40
