"""Feature-quality evaluations (SPEC §8): zero-shot and item-CF against dense references, a
known-answer check on taste vectors, modality masking, MMRec folder loading."""
import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.analysis.features import (
    evaluate_features,
    item_cf_scorer,
    load_feature_folder,
    mask_items,
    masked_metrics,
    masked_modality,
    random_scorer,
    zero_shot_scorer,
)
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models.anchorrec import AnchorRec
from anchorrec_pyg.train.evaluator import evaluate

EDGE = ('user', 'interacts', 'item')


def taste_data(num_users=150, num_items=200, dim=6, seed=0):
    """Interactions drawn from taste vectors: user u picks the 8 items of largest
    <p_u, q_i> + Gumbel noise; 2 of them are held out for test."""
    g = np.random.default_rng(seed)
    q = g.standard_normal((num_items, dim))
    p = g.standard_normal((num_users, dim))
    logits = 3 * p @ q.T + g.gumbel(size=(num_users, num_items))
    picks = np.argsort(-logits, axis=1)[:, :8]
    users = np.repeat(np.arange(num_users), 8)
    items = picks.reshape(-1)
    test = np.tile(np.arange(8) < 2, num_users)
    data = HeteroData()
    data['user'].num_nodes = num_users
    data['item'].num_nodes = num_items
    data[EDGE].edge_index = torch.tensor(np.stack([users[~test], items[~test]]))
    data[EDGE].test_edge_index = torch.tensor(np.stack([users[test], items[test]]))
    data[EDGE].val_edge_index = torch.tensor(np.stack([users[test], items[test]]))
    return data, torch.tensor(q, dtype=torch.float32)


def training_matrix(data):
    b = torch.zeros(data['user'].num_nodes, data['item'].num_nodes, dtype=torch.float64)
    b[data[EDGE].edge_index[0], data[EDGE].edge_index[1]] = 1
    return b


def test_zero_shot_on_true_taste_vectors_beats_random():
    data, q = taste_data()
    ks = (10, 20)
    taste = evaluate(zero_shot_scorer(q, data), data, 'test', ks)
    chance = evaluate(random_scorer(200, seed=0), data, 'test', ks)
    noise = evaluate(zero_shot_scorer(torch.randn(200, 6), data), data, 'test', ks)
    assert taste['recall@20'] > 3 * chance['recall@20']
    assert taste['recall@20'] > 2 * noise['recall@20']
    assert item_cf_scorer(q, data, k=10)(torch.arange(150)).shape == (150, 200)


@pytest.mark.parametrize('gram_budget_bytes', [0, 1 << 30])  # profile path, item Gram path
def test_zero_shot_matches_dense_reference(gram_budget_bytes):
    data, q = taste_data(40, 30)
    q[3] = 0  # a zero row stays zero
    b = training_matrix(data)
    unit = torch.nn.functional.normalize(q.double(), dim=1)
    profile = (b @ unit) / b.sum(1, keepdim=True)
    expected = torch.nn.functional.normalize(profile, dim=1) @ unit.T
    users = torch.tensor([0, 7, 39])
    got = zero_shot_scorer(q, data, gram_budget_bytes)(users)
    torch.testing.assert_close(got.double(), expected[users], atol=1e-5, rtol=0)
    assert (got[:, 3] == 0).all()


@pytest.mark.parametrize('shrink', [0.0, 10.0])
def test_item_cf_matches_dense_reference(shrink):
    data, q = taste_data(40, 30, seed=1)
    b = training_matrix(data)
    x = q.double()
    norm = x.norm(dim=1)
    sim = (x @ x.T) / (norm.unsqueeze(1) * norm + shrink)
    top = sim.topk(5, dim=1)
    kept = torch.zeros_like(sim).scatter_(1, top.indices, top.values)
    expected = b @ kept  # score(u, i) = sum_{j in I(u)} s(j, i) [i in N_k(j)]
    users = torch.arange(40)
    got = item_cf_scorer(q, data, k=5, shrink=shrink)(users)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_evaluate_features_rows_and_errors():
    data, q = taste_data(30, 25)
    rows = evaluate_features({'taste': q}, data, ks=(5, ), splits=('test', ), knn_k=4)
    assert [(r['features'], r['method']) for r in rows] == [
        ('taste', 'zero-shot'), ('taste', 'item-cf'), ('random', 'random')]
    assert rows[0]['dim'] == 6 and 'ndcg@5' in rows[0] and 'map@5' in rows[0]
    with pytest.raises(ConfigError, match=r'\[I = 25, d\]'):
        zero_shot_scorer(torch.randn(24, 3), data)
    with pytest.raises(ConfigError, match='--shrink'):
        item_cf_scorer(q, data, shrink=-1)
    with pytest.raises(ConfigError, match='--knn-k'):
        item_cf_scorer(q, data, k=26)


def test_load_feature_folder(tiny_mmrec_root, tmp_path):
    root, name = tiny_mmrec_root
    extra = tmp_path / 'mine.npy'
    np.save(extra, np.ones((40, 3), dtype=np.float32))
    data, tables = load_feature_folder(f'{root}/{name}', [str(extra), f'other={extra}'])
    assert list(tables) == ['mm', 'text', 'image', 'mine', 'other']
    assert tables['text'].shape == (40, 16) and tables['mm'].shape == (40, 24)
    assert data['item'].num_nodes == 40 and data[EDGE].test_edge_index.size(0) == 2
    with pytest.raises(ConfigError, match="'mine' is used twice"):
        load_feature_folder(f'{root}/{name}', [str(extra), str(extra)])
    bad = tmp_path / 'bad.npy'
    np.save(bad, np.ones((39, 3), dtype=np.float32))
    with pytest.raises(DataError, match='39 rows'):
        load_feature_folder(f'{root}/{name}', [str(bad)])
    with pytest.raises(DataError, match='dataset folder not found'):
        load_feature_folder(tmp_path / 'nothing')


def test_mask_items_is_seeded_fraction():
    items = mask_items(40, 0.5, seed=3)
    assert items.numel() == 20 and items.tolist() == mask_items(40, 0.5, seed=3).tolist()
    assert items.tolist() != mask_items(40, 0.5, seed=4).tolist()
    with pytest.raises(ConfigError, match='--mask-fraction'):
        mask_items(40, 0.0)


def test_masked_modality_masks_copies_and_raw_table_then_restores(tiny_data):
    torch.manual_seed(0)
    model = AnchorRec(tiny_data).eval()
    before = {m: p.detach().clone() for m, p in model.features.items()}
    raw_before = tiny_data['item'].x_mm.clone()
    items = torch.tensor([1, 5, 7])
    with masked_modality(model, tiny_data, 'mm', items) as masked:
        assert (model.features['mm'][items] == 0).all()
        assert torch.equal(model.features['mm'][0], before['mm'][0])
        assert (masked['item'].x_mm[items] == 0).all()
        assert torch.equal(masked['item'].x_text, tiny_data['item'].x_text)
        assert torch.equal(model.features['text'], before['text'])
    assert torch.equal(tiny_data['item'].x_mm, raw_before)
    for m in before:
        assert torch.equal(model.features[m], before[m])


def test_masked_metrics_drops(tiny_data):
    torch.manual_seed(0)
    model = AnchorRec(tiny_data).eval()
    result = masked_metrics(model, tiny_data, ks=(10, ), fraction=0.5, seed=0)
    assert result['modalities'] == ['mm', 'text', 'image'] and result['num_masked'] == 20
    rows = {(r['masked'], r['split']): r for r in result['rows']}
    base = rows[('none', 'test')]
    for m in ('mm', 'text', 'image'):
        row = rows[(m, 'test')]
        assert row['drop_recall@10'] == pytest.approx(base['recall@10'] - row['recall@10'])
    # the published model leaves the image view out of the ranking (SPEC §3.4): no drop
    assert rows[('image', 'test')]['recall@10'] == base['recall@10']
    with torch.no_grad():
        plain = model(tiny_data).item
        with masked_modality(model, tiny_data, 'mm', mask_items(40, 0.5, 0)) as masked:
            assert not torch.allclose(model(masked).item, plain)
    with pytest.raises(ConfigError, match="--modalities: the run has no 'mm'"):
        masked_metrics(torch.nn.Linear(2, 2), HeteroData({'item': {'num_nodes': 3}}), (5, ),
                       modalities=['mm'])
