"""The embedded synthetic datasets: format, MMRec split rule, determinism, caching, signal."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorrec_pyg.data import (
    PRESETS,
    MMRecDataset,
    ensure_default_dataset,
    generate_arrays,
    generate_synthetic,
    load_inter,
    popularity_recall,
    synthetic,
)
from anchorrec_pyg.errors import DataError
from anchorrec_pyg.io import make_staging_folder


def test_files_and_header(tiny_mmrec_root):
    root, name = tiny_mmrec_root
    folder = Path(root) / name
    header = (folder / f'{name}.inter').read_text().splitlines()[0]
    assert header == 'userID\titemID\trating\ttimestamp\tx_label'
    assert np.load(folder / 'image_feat.npy').shape == (40, 32)
    assert np.load(folder / 'text_feat.npy').shape == (40, 16)
    assert np.load(Path(root) / f'{name}_beit3' / 'image_feat.npy').shape == (40, 24)
    marker = json.loads((folder / 'synthetic.json').read_text())
    assert marker['preset'] == 'tiny' and marker['seed'] == 0
    assert not list(Path(root).glob('.*tmp*'))  # staging folder removed


@pytest.mark.parametrize('preset', ['tiny', 'default'])
def test_mmrec_split_rule_and_ids(preset):
    table, features = generate_arrays(preset, seed=0)
    p = PRESETS[preset]
    user, item, rating, _, label = table.T
    assert set(np.unique(user)) == set(range(p.num_users))
    assert set(np.unique(item)) == set(range(p.num_items))  # I = max id + 1 is exact
    assert rating.min() >= 1 and rating.max() <= 5
    pairs = user * p.num_items + item
    assert np.unique(pairs).size == pairs.size
    for u in range(p.num_users):
        labels = label[user == u]
        n = labels.size
        held = 2 if n < 10 else int(0.2 * n)
        n_valid = 1 if n < 10 else held // 2
        assert (labels == 1).sum() == n_valid and (labels == 2).sum() == held - n_valid
    for key, dim in (('image', p.image_dim), ('text', p.text_dim), ('mm', p.mm_dim)):
        assert features[key].shape == (p.num_items, dim)
        assert features[key].dtype == np.float32
    assert features['image'].min() >= 0  # VGG-like (post-ReLU) image features


def test_deterministic_in_seed(tmp_path):
    a = generate_synthetic(tmp_path / 'a', 'tiny', preset='tiny', seed=5)
    b = generate_synthetic(tmp_path / 'b', 'tiny', preset='tiny', seed=5)
    c = generate_synthetic(tmp_path / 'c', 'tiny', preset='tiny', seed=6)
    for f in ('tiny.inter', 'image_feat.npy', 'text_feat.npy'):
        assert (a / f).read_bytes() == (b / f).read_bytes()
        assert (a / f).read_bytes() != (c / f).read_bytes()


def test_refuses_to_overwrite(tmp_path):
    generate_synthetic(tmp_path, 'tiny', preset='tiny')
    with pytest.raises(DataError, match='already exists; pass overwrite=True'):
        generate_synthetic(tmp_path, 'tiny', preset='tiny')
    with pytest.raises(DataError, match='unknown synthetic preset'):
        generate_synthetic(tmp_path, 'other', preset='huge')


def test_ensure_default_dataset_generates_once_and_repairs(tmp_path, monkeypatch):
    calls = []
    original = synthetic.generate_synthetic

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, 'generate_synthetic', counting)
    root, name = ensure_default_dataset(tmp_path, preset='tiny')
    assert (root, name) == (str(tmp_path), 'tiny') and len(calls) == 1
    assert ensure_default_dataset(tmp_path, preset='tiny') == (root, name) and len(calls) == 1
    (Path(root) / f'{name}_beit3' / 'image_feat.npy').unlink()  # an interrupted copy
    ensure_default_dataset(tmp_path, preset='tiny')
    assert len(calls) == 2
    assert (Path(root) / f'{name}_beit3' / 'image_feat.npy').is_file()
    assert ensure_default_dataset(tmp_path, preset='tiny', seed=2)[1] == 'tiny-seed2'
    stale = make_staging_folder(tmp_path, 'tiny')  # left by a generator killed mid-write
    ensure_default_dataset(tmp_path, preset='tiny')
    assert not stale.exists() and len(calls) == 3


def test_ensure_default_dataset_uses_home(anchorrec_home):
    root, name = ensure_default_dataset(preset='tiny')
    assert Path(root) == anchorrec_home / 'datasets' and name == 'tiny'


def test_baby_preset_has_baby_shape():
    p = PRESETS['baby']
    assert (p.num_users, p.num_items) == (19_445, 7_050)
    assert p.num_users * p.mean_interactions == pytest.approx(160_792)
    assert (p.image_dim, p.text_dim, p.mm_dim) == (4096, 384, 768)


def test_popularity_recall_worked_example(popularity_example):
    data = popularity_example
    # user 0 (item 0 masked) ranks 1, 2, 3: test {2, 3} -> recall@1 0, @2 1/2.
    # user 1 (items 0, 1 masked) ranks 2, 3: test {2} -> recall@1 1.
    assert popularity_recall(data, k=1) == pytest.approx((0 + 1) / 2)
    assert popularity_recall(data, k=2) == pytest.approx((0.5 + 1) / 2)
    assert popularity_recall(data, k=1, split='valid') == pytest.approx(1.0)


def test_features_carry_the_taste_signal(tmp_path):
    """Zero-shot ranking by each modality's features beats popularity on the default preset,
    so the views are informative (and the fused view is the best of the three)."""
    generate_synthetic(tmp_path, 'default', preset='default')
    data = MMRecDataset(tmp_path, 'default', log=False)[0]
    store = data['user', 'interacts', 'item']
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    history = torch.zeros(num_users, num_items)
    history[store.edge_index[0], store.edge_index[1]] = 1
    test = torch.zeros(num_users, num_items, dtype=torch.bool)
    test[store.test_edge_index[0], store.test_edge_index[1]] = True
    users = test.any(dim=1)

    def zero_shot_recall(x):
        x = torch.nn.functional.normalize(x, dim=1)
        scores = (history @ x) @ x.T
        scores[history.bool()] = -torch.inf
        hits = test.gather(1, scores.topk(20, dim=1).indices).sum(dim=1)
        return float((hits[users] / test.sum(dim=1)[users]).mean())

    popularity = popularity_recall(data, k=20)
    recall = {m: zero_shot_recall(data['item'][f'x_{m}']) for m in ('mm', 'text', 'image')}
    assert all(r > 1.5 * popularity for r in recall.values()), (recall, popularity)
    assert recall['mm'] > max(recall['text'], recall['image'])
    assert load_inter(tmp_path / 'default' / 'default.inter').num_users == 2000
