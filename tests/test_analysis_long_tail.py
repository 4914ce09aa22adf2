"""Long-tail analysis: popularity buckets and per-bucket Recall/NDCG on a hand-checked example."""
import math

import pytest
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.analysis.long_tail import long_tail_metrics, popularity_buckets
from anchorrec_pyg.train.evaluator import evaluate

EDGE = ('user', 'interacts', 'item')


def toy_data():
    # 3 users, 6 items; training counts per item: 0:3, 1:2, 2:1, 3:1, 4:0, 5:0
    data = HeteroData()
    data['user'].num_nodes = 3
    data['item'].num_nodes = 6
    data[EDGE].edge_index = torch.tensor([[0, 0, 1, 1, 2, 2, 2],
                                          [0, 1, 0, 2, 0, 1, 3]])
    # held-out: user 0 -> items 2, 4; user 1 -> item 1; user 2 -> item 5
    data[EDGE].test_edge_index = torch.tensor([[0, 0, 1, 2], [2, 4, 1, 5]])
    return data


def test_buckets_split_items_by_training_count_equally():
    buckets = popularity_buckets(toy_data(), 3)
    # order by count (ties by id): 4, 5 (0) | 2, 3 (1) | 1, 0 (2)
    assert buckets.tolist() == [2, 2, 1, 1, 0, 0]
    assert popularity_buckets(toy_data(), 1).tolist() == [0] * 6


def test_per_bucket_metrics_judge_only_the_bucket_items():
    data = toy_data()
    scores = torch.tensor([[9., 8, 7, 6, 5, 4],    # user 0 top (train 0,1 masked): 2, 3, 4
                           [1., 6, 2, 3, 4, 5],    # user 1 (0, 2 masked): 1, 5, 4
                           [1., 2, 3, 4, 6, 5]])   # user 2 (0, 1, 3 masked): 4, 5, 2
    rows = long_tail_metrics(lambda users: scores[users], data, popularity_buckets(data, 3),
                             ks=(1, 2), split='test')
    by = {r['bucket']: r for r in rows}
    # bucket 0 = items {4, 5}: user 0 (item 4 at rank 3) misses at 1 and 2; user 2 (item 5 at
    # rank 2) hits at 2
    assert by['0']['users'] == 2 and by['0']['held_out'] == 2
    assert by['0']['recall@1'] == 0.0 and by['0']['recall@2'] == pytest.approx(0.5)
    assert by['0']['ndcg@2'] == pytest.approx(0.5 * (1 / math.log2(3)))
    # bucket 1 = items {2, 3}: user 0's item 2 at rank 1
    assert by['1']['recall@1'] == 1.0 and by['1']['ndcg@1'] == 1.0
    # bucket 2 = items {0, 1}: user 1's item 1 at rank 1
    assert by['2']['recall@1'] == 1.0
    assert by['2']['min_count'] == 2 and by['2']['max_count'] == 3
    assert by['2']['train_share'] == pytest.approx(5 / 7)
    overall = evaluate(lambda users: scores[users], data, 'test', ks=(1, 2))
    assert by['all']['recall@2'] == pytest.approx(overall['recall@2'])
    assert by['all']['ndcg@1'] == pytest.approx(overall['ndcg@1'])


def test_bucket_without_held_out_items_is_nan():
    data = toy_data()
    data[EDGE].test_edge_index = torch.tensor([[0], [2]])
    rows = long_tail_metrics(lambda users: torch.zeros(users.numel(), 6), data,
                             popularity_buckets(data, 3), ks=(2, ))
    assert math.isnan(rows[0]['recall@2']) and rows[0]['users'] == 0
