"""The reusable evaluator: masking, batching, scorers (model, RecOutput, function, the
popularity reference), top-K."""
import math

import pytest
import torch

from anchorrec_pyg.data import popularity_recall
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import LightGCN, RecOutput
from anchorrec_pyg.train.evaluator import (
    Evaluator,
    PopularityScorer,
    evaluate,
    metric_keys,
    rank_topk,
)


@pytest.fixture(scope='module')
def model(tiny_data):
    torch.manual_seed(0)
    return LightGCN(tiny_data, LightGCN.Config())


def test_model_output_and_function_agree(tiny_data, model):
    with torch.no_grad():
        out = model.eval()(tiny_data)
    fn = lambda users: out.user[users] @ out.item.T  # noqa: E731
    a = evaluate(model, tiny_data, 'valid')
    b = evaluate(out, tiny_data, 'valid')
    c = evaluate(fn, tiny_data, 'valid', batch_size=7)
    assert set(a) == set(metric_keys((5, 10, 20, 50)))
    assert a == b
    for key in a:
        assert a[key] == pytest.approx(c[key], abs=1e-7)
    assert model.training is False


def test_model_training_mode_restored(tiny_data, model):
    model.train()
    evaluate(model, tiny_data, 'test')
    assert model.training


def test_memory_bounded_batches(tiny_data, model):
    with torch.no_grad():
        out = model(tiny_data)
    sizes = []

    def fn(users):
        sizes.append(users.numel())
        return out.user[users] @ out.item.T

    evaluator = Evaluator(tiny_data, (20, ), batch_size=8)
    evaluator.evaluate(fn, tiny_data, 'valid')
    assert max(sizes) <= 8
    assert sum(sizes) == evaluator.users('valid').numel()


def test_rank_topk_excludes_training_items(tiny_data, model):
    store = tiny_data['user', 'interacts', 'item']
    users = torch.arange(tiny_data['user'].num_nodes)
    items, scores = rank_topk(model, tiny_data, users, k=15, batch_size=16)
    assert items.shape == (users.numel(), 15)
    train = set(map(tuple, store.edge_index.t().tolist()))
    assert not any((u, i) in train for u, row in enumerate(items.tolist()) for i in row)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    # Without exclusion, a user's top item by raw score comes first:
    with torch.no_grad():
        out = model(tiny_data)
    raw, _ = rank_topk(out, tiny_data, users, k=1, exclude_train=False)
    assert torch.equal(raw[:, 0], (out.user @ out.item.T).argmax(dim=1))


def test_rank_topk_pads_past_the_last_candidate(tiny_data, model):
    """k = every item: a user's candidates (items outside training) come first, each once; the
    positions past them are item -1 with score -inf, never a training item."""
    store = tiny_data['user', 'interacts', 'item']
    num_items = tiny_data['item'].num_nodes
    users = torch.arange(tiny_data['user'].num_nodes)
    items, scores = rank_topk(model, tiny_data, users, k=num_items)
    train = [set() for _ in range(users.numel())]
    for u, i in store.edge_index.t().tolist():
        train[u].add(i)
    for u in users.tolist():
        n = num_items - len(train[u])
        assert set(items[u, :n].tolist()) == set(range(num_items)) - train[u]
        assert torch.isfinite(scores[u, :n]).all()
        assert items[u, n:].eq(-1).all() and scores[u, n:].eq(float('-inf')).all()


def test_users_are_those_with_held_out_items(tiny_data):
    store = tiny_data['user', 'interacts', 'item']
    evaluator = Evaluator(tiny_data)
    assert torch.equal(evaluator.users('valid'), store.val_edge_index[0].unique())
    assert torch.equal(evaluator.users('test'), store.test_edge_index[0].unique())
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        evaluator.users('train')


def test_perfect_scorer(tiny_data):
    """A scorer that knows the held-out items reaches Recall@50 = 1 and HitRate = 1."""
    store = tiny_data['user', 'interacts', 'item']
    table = torch.zeros(tiny_data['user'].num_nodes, tiny_data['item'].num_nodes)
    table[store.test_edge_index[0], store.test_edge_index[1]] = 1.0
    out = evaluate(lambda users: table[users], tiny_data, 'test', ks=(5, 50))
    assert out['recall@50'] == pytest.approx(1.0)
    assert out['hit@5'] == pytest.approx(1.0)
    assert out['ndcg@50'] == pytest.approx(1.0)


def test_recoutput_scores_are_dot_products(tiny_data):
    user = torch.randn(tiny_data['user'].num_nodes, 4)
    item = torch.randn(tiny_data['item'].num_nodes, 4)
    a = evaluate(RecOutput(user, item), tiny_data, 'valid')
    b = evaluate(lambda users: user[users] @ item.T, tiny_data, 'valid')
    assert a == b


def test_popularity_scorer_worked_example(popularity_example):
    """Items ranked by training count, ties by lower id, each user's training items masked: the
    worked example of ``popularity_recall`` (tests/test_data_synthetic.py), through the
    evaluator."""
    data = popularity_example
    scorer = PopularityScorer(data)
    assert scorer.score.tolist() == [4.0, 3.0, 2.0, 1.0]
    evaluator = Evaluator(data, ks=(1, 2))
    test = evaluator.evaluate(scorer, data, 'test')
    # user 0 (item 0 masked) ranks 1, 2, 3: test {2, 3}; user 1 (0, 1 masked) ranks 2, 3: {2}
    assert test['recall@1'] == pytest.approx((0 + 1) / 2)
    assert test['recall@2'] == pytest.approx((0.5 + 1) / 2)
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert test['ndcg@2'] == pytest.approx((ndcg_user0 + 1) / 2)
    assert evaluator.evaluate(scorer, data, 'valid')['recall@1'] == pytest.approx(1.0)


def test_popularity_scorer_matches_the_independent_popularity_recall(tiny_data):
    evaluator = Evaluator(tiny_data, ks=(5, 10, 20), batch_size=7)  # several user batches
    scorer = PopularityScorer(tiny_data)
    for split in ('valid', 'test'):
        metrics = evaluator.evaluate(scorer, tiny_data, split)
        for k in (5, 10, 20):
            assert metrics[f'recall@{k}'] == pytest.approx(
                popularity_recall(tiny_data, k=k, split=split), abs=1e-6)
