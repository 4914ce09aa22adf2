"""The (user, positive, negative) sampler of SPEC §4."""
import pytest
import torch

from anchorrec_pyg.errors import DataError
from anchorrec_pyg.train.sampler import TripletSampler


def _dense_edges(num_users=30, num_items=12, seed=0):
    """Heavy users: each has interacted with 6 to 11 of the 12 items (rejections are common)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(num_users):
        n = int(torch.randint(6, num_items, (1, ), generator=g))
        items = torch.randperm(num_items, generator=g)[:n]
        rows += [(u, int(i)) for i in items]
    return torch.tensor(sorted(rows)).t()


def _epoch(sampler, seed):
    batches = list(sampler.epoch(torch.Generator().manual_seed(seed)))
    return [torch.cat([b[j] for b in batches]) for j in range(3)], batches


def test_negative_never_a_training_item_and_positives_cover_each_edge_once():
    edge_index = _dense_edges()
    # Item 11 never occurs in training: it must never be drawn as a negative.
    edge_index = edge_index[:, edge_index[1] != 11]
    sampler = TripletSampler(edge_index, num_items=12, batch_size=16)
    train = {tuple(e) for e in edge_index.t().tolist()}
    for seed in range(5):
        (users, pos, neg), batches = _epoch(sampler, seed)
        assert len(batches) == len(sampler) == -(-edge_index.size(1) // 16)
        assert all(b[0].numel() == 16 for b in batches[:-1])
        assert sorted(zip(users.tolist(), pos.tolist())) == sorted(train)
        assert not any((u, n) in train for u, n in zip(users.tolist(), neg.tolist()))
        assert int(neg.max()) < 11


def test_negatives_uniform_over_allowed_items():
    # User 0 trained on items 0 and 1 of 5 -> negatives uniform over {2, 3, 4}.
    edge_index = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    sampler = TripletSampler(edge_index, num_items=5, batch_size=4)
    users = torch.zeros(30000, dtype=torch.long)
    neg = sampler.sample_negatives(users, torch.Generator().manual_seed(0))
    counts = torch.bincount(neg, minlength=5).float() / users.numel()
    assert counts[:2].sum() == 0
    assert torch.allclose(counts[2:], torch.full((3, ), 1 / 3), atol=0.01)


def test_reproducible_from_seed_and_reshuffled_each_epoch():
    sampler = TripletSampler(_dense_edges(), num_items=12, batch_size=32)
    a, _ = _epoch(sampler, 7)
    b, _ = _epoch(sampler, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    g = torch.Generator().manual_seed(7)
    first = torch.cat([u for u, _, _ in sampler.epoch(g)])
    second = torch.cat([u for u, _, _ in sampler.epoch(g)])
    assert not torch.equal(first, second)
    assert torch.equal(first, a[0])


def test_positive_pairs_only():
    sampler = TripletSampler(_dense_edges(), num_items=12, batch_size=32, with_negatives=False)
    for users, pos, neg in sampler.epoch(torch.Generator().manual_seed(0)):
        assert neg is None and users.shape == pos.shape


def test_user_with_every_item_is_an_error():
    edge_index = torch.tensor([[0, 0, 1], [0, 1, 0]])
    with pytest.raises(DataError, match='user 0 has interacted with every item'):
        TripletSampler(edge_index, num_items=2, batch_size=2)
    # Fine when negatives are not needed:
    TripletSampler(edge_index, num_items=2, batch_size=2, with_negatives=False)


def test_on_real_tiny_data(tiny_data):
    store = tiny_data['user', 'interacts', 'item']
    sampler = TripletSampler(store.edge_index, tiny_data['item'].num_nodes, batch_size=64)
    train = set(map(tuple, store.edge_index.t().tolist()))
    (users, pos, neg), _ = _epoch(sampler, 3)
    assert not any((u, n) in train for u, n in zip(users.tolist(), neg.tolist()))
    assert set(neg.tolist()) <= set(store.edge_index[1].tolist())
