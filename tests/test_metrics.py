"""Full-ranking metrics (SPEC §5) against worked examples computed by hand, and against a
per-user reference implementation of the SPEC definitions on random scores."""
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.train.evaluator import Evaluator, evaluate, metric_keys

L2 = math.log2


def _data(num_users, num_items, train, valid, test=None) -> HeteroData:
    data = HeteroData()
    data['user'].num_nodes = num_users
    data['item'].num_nodes = num_items
    store = data['user', 'interacts', 'item']
    store.edge_index = torch.tensor(train, dtype=torch.long).t()
    store.val_edge_index = torch.tensor(valid, dtype=torch.long).t()
    store.test_edge_index = torch.tensor(test if test else valid, dtype=torch.long).t()
    return data


def _fixed_scores(num_items):
    """Every user scores item i as -i: after masking, the ranking is the unmasked items in id
    order."""
    return lambda users: -torch.arange(num_items, dtype=torch.float).expand(len(users), -1)


# Three users, six items. Training: u0-0, u1-1, u2-5 (u3-2 has no held-out item and is not
# evaluated). Rankings after masking: u0: 1 2 3 4 5, u1: 0 2 3 4 5, u2: 0 1 2 3 4.
# Held out: u0 {2, 5}, u1 {0}, u2 {0, 1, 3}.
TRAIN = [[0, 0], [1, 1], [2, 5], [3, 2]]
VALID = [[0, 2], [0, 5], [1, 0], [2, 0], [2, 1], [2, 3]]

# Hand computation per user at K = 2 and K = 4:
#   u0: hits@2 = [0, 1],       hits@4 = [0, 1, 0, 0]        (item 5 is at rank 5)
#   u1: hits@2 = [1, 0],       hits@4 = [1, 0, 0, 0]
#   u2: hits@2 = [1, 1],       hits@4 = [1, 1, 0, 1]
EXPECTED = {
    'recall@2': (1 / 2 + 1 + 2 / 3) / 3,
    'recall@4': (1 / 2 + 1 + 1) / 3,
    'precision@2': (1 / 2 + 1 / 2 + 1) / 3,
    'precision@4': (1 / 4 + 1 / 4 + 3 / 4) / 3,
    'hit@2': 1.0,
    'hit@4': 1.0,
    # NDCG: DCG = sum hit_r / log2(r + 1); ideal DCG over min(|rel|, K) positions.
    'ndcg@2': ((1 / L2(3)) / (1 + 1 / L2(3)) + 1 + 1) / 3,
    'ndcg@4': ((1 / L2(3)) / (1 + 1 / L2(3)) + 1
               + (1 + 1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3) + 1 / L2(4))) / 3,
    # MAP: sum over hits of precision@rank, divided by min(|rel|, K).
    'map@2': ((1 / 2) / 2 + 1 + (1 + 1) / 2) / 3,
    'map@4': ((1 / 2) / 2 + 1 + (1 + 1 + 3 / 4) / 3) / 3,
}


@pytest.mark.parametrize('batch_size', [1, 2, 100])
def test_worked_example(batch_size):
    data = _data(4, 6, TRAIN, VALID)
    out = evaluate(_fixed_scores(6), data, 'valid', ks=(2, 4), batch_size=batch_size)
    assert set(out) == set(metric_keys((2, 4)))
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key


def test_validation_items_not_masked_at_test_time():
    # u0 trains on 0, validates on 1, tests on 2. The test ranking masks only item 0, so item 1
    # (validation) stays at rank 1 and the test item is at rank 2.
    data = _data(1, 5, [[0, 0]], [[0, 1]], [[0, 2]])
    out = evaluate(_fixed_scores(5), data, 'test', ks=(1, 2))
    assert out['recall@1'] == 0.0
    assert out['recall@2'] == 1.0
    assert out['ndcg@2'] == pytest.approx(1 / L2(3))
    assert evaluate(_fixed_scores(5), data, 'valid', ks=(1, ))['recall@1'] == 1.0


def test_k_larger_than_catalogue():
    data = _data(1, 3, [[0, 0]], [[0, 2]])
    out = evaluate(_fixed_scores(3), data, 'valid', ks=(5, ))
    # Ranking: 1 2 (0 masked, last): the hit is at rank 2, precision divides by K = 5.
    assert out['recall@5'] == 1.0
    assert out['precision@5'] == pytest.approx(1 / 5)
    assert out['ndcg@5'] == pytest.approx(1 / L2(3))


def _reference(scores, train, held, ks):
    """Per-user loop over the SPEC §5 definitions (numpy, float64)."""
    num_users = scores.shape[0]
    out = {key: [] for key in metric_keys(ks)}
    for u in range(num_users):
        rel = {i for v, i in held if v == u}
        if not rel:
            continue
        s = scores[u].astype(np.float64).copy()
        s[[i for v, i in train if v == u]] = -np.inf
        order = np.argsort(-s, kind='stable')
        for k in ks:
            hits = np.array([order[r] in rel for r in range(k)], dtype=float)
            n = min(len(rel), k)
            disc = 1 / np.log2(np.arange(2, k + 2))
            out[f'recall@{k}'].append(hits.sum() / len(rel))
            out[f'precision@{k}'].append(hits.sum() / k)
            out[f'hit@{k}'].append(float(hits.any()))
            out[f'ndcg@{k}'].append((hits * disc).sum() / disc[:n].sum())
            prec = np.cumsum(hits) / np.arange(1, k + 1)
            out[f'map@{k}'].append((prec * hits).sum() / n)
    return {key: float(np.mean(v)) for key, v in out.items()}


def test_matches_reference_on_random_scores():
    rng = np.random.default_rng(0)
    num_users, num_items = 50, 30
    pairs = [(u, i) for u in range(num_users) for i in rng.choice(num_items, 8, replace=False)]
    rng.shuffle(pairs)
    train, held = pairs[:250], [p for p in pairs[250:] if p[0] < 45]
    scores = rng.standard_normal((num_users, num_items)).astype(np.float32)
    data = _data(num_users, num_items, train, held)
    table = torch.from_numpy(scores)
    ks = (1, 3, 5, 10, 20)
    out = Evaluator(data, ks, batch_size=7).evaluate(lambda users: table[users], data, 'valid')
    expected = _reference(scores, train, held, ks)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
