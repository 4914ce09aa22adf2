"""Chunked exact cosine kNN against the dense reference, and the SPEC §2 normalisation."""
from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.nn import SimpleConv

from anchorrec_pyg.data import (
    cosine_knn,
    knn_graph_normalized,
    normalize_knn,
    normalized_ui_weights,
)
from anchorrec_pyg.errors import DataError


def dense_reference(x: torch.Tensor, k: int):
    """MMRec's construction: normalise, full similarity matrix, top-k, row-sum normalisation."""
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    val, idx = sim.topk(k, dim=1)
    s = val.sum(dim=1)
    weight = val / (s.unsqueeze(1) * s[idx]).sqrt()
    return idx, val, weight


@pytest.mark.parametrize('num_items, chunk_size', [(31, 1), (203, 7), (203, 64), (203, 500),
                                                   (203, None)])
def test_chunked_equals_dense(num_items, chunk_size):
    torch.manual_seed(0)
    x = torch.randn(num_items, 16) + 0.3
    idx, val = cosine_knn(x, 10, chunk_size=chunk_size)
    ref_idx, ref_val, ref_w = dense_reference(x, 10)
    assert idx.dtype == torch.long and val.dtype == torch.float32
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val, ref_val, atol=1e-5, rtol=0)
    assert torch.equal(idx[:, 0], torch.arange(num_items))  # the item itself, similarity 1
    torch.testing.assert_close(val[:, 0], torch.ones(num_items), atol=1e-5, rtol=0)

    edge_index, weight = knn_graph_normalized(x, 10, chunk_size=chunk_size)
    assert edge_index.shape == (2, num_items * 10) and weight.shape == (num_items * 10,)
    assert torch.equal(edge_index[1], torch.arange(num_items).repeat_interleave(10))
    assert torch.equal(edge_index[0], ref_idx.reshape(-1))
    torch.testing.assert_close(weight, ref_w.reshape(-1), atol=1e-5, rtol=0)


def test_memory_budget_picks_blocks_and_keeps_result():
    torch.manual_seed(1)
    x = torch.randn(300, 8)
    ref_idx, ref_val = cosine_knn(x, 5)
    idx, val = cosine_knn(x, 5, memory_budget_bytes=12 * 40 * 40)  # 40 x 40 blocks
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val, ref_val)


def test_hand_built_example_matches_spec():
    # Three unit vectors at 0, 30 and 90 degrees; k = 2.
    x = torch.tensor([[1.0, 0.0], [math.cos(math.pi / 6), math.sin(math.pi / 6)], [0.0, 2.0]])
    c = math.sqrt(3) / 2  # cos 30°, while cos 60° = 0.5 and cos 90° = 0
    idx, val = cosine_knn(x, 2)
    assert idx.tolist() == [[0, 1], [1, 0], [2, 1]]
    torch.testing.assert_close(val, torch.tensor([[1.0, c], [1.0, c], [1.0, 0.5]]))

    edge_index, weight = knn_graph_normalized(x, 2)
    s = [1 + c, 1 + c, 1.5]  # row sums of the kept weights
    expected = {  # (source j, target i): w(i, j) / sqrt(s_i s_j)
        (0, 0): 1 / s[0], (1, 0): c / math.sqrt(s[0] * s[1]),
        (1, 1): 1 / s[1], (0, 1): c / math.sqrt(s[1] * s[0]),
        (2, 2): 1 / s[2], (1, 2): 0.5 / math.sqrt(s[2] * s[1]),
    }
    got = {(j, i): w for (j, i), w in zip(edge_index.T.tolist(), weight.tolist())}
    assert got.keys() == expected.keys()
    for key, w in expected.items():
        assert got[key] == pytest.approx(w, abs=1e-6)

    # Not symmetrised: 2 has 1 as a neighbour but 1 does not have 2. With PyG's default
    # source_to_target flow, propagation computes H[i] = sum_j A[i, j] X[j] (SPEC's A X).
    dense = torch.zeros(3, 3)
    dense[edge_index[1], edge_index[0]] = weight
    assert dense[2, 1] > 0 and dense[1, 2] == 0
    feats = torch.randn(3, 4)
    out = SimpleConv(aggr='sum')(feats, edge_index, weight)
    torch.testing.assert_close(out, dense @ feats)


def test_zero_rows_keep_only_a_self_loop():
    torch.manual_seed(2)
    x = torch.randn(30, 6)
    x[[4, 11]] = 0
    idx, val = cosine_knn(x, 5, chunk_size=8)
    for z in (4, 11):
        assert idx[z].tolist() == [z, -1, -1, -1, -1]
        assert val[z].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    others = torch.ones(30, dtype=torch.bool)
    others[[4, 11]] = False
    assert not torch.isin(idx[others], torch.tensor([4, 11])).any()
    nonzero = torch.nonzero(others).view(-1)
    ref_idx, _, _ = dense_reference(x[others], 5)
    assert torch.equal(idx[others], nonzero[ref_idx])

    edge_index, weight = knn_graph_normalized(x, 5, chunk_size=8)
    assert edge_index.size(1) == 30 * 5 - 2 * 4
    self_loop = (edge_index[1] == 4)
    assert edge_index[:, self_loop].tolist() == [[4], [4]]
    assert weight[self_loop].tolist() == [1.0]


def test_fewer_nonzero_rows_than_k_leaves_slots_empty():
    x = torch.zeros(6, 3)
    x[0], x[1] = torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1.0, 0])
    idx, val = cosine_knn(x, 4)
    assert idx[0].tolist() == [0, 1, -1, -1]
    assert val[0, 2:].tolist() == [0.0, 0.0]


def test_invalid_k():
    x = torch.randn(5, 3)
    for k in (0, 6):
        with pytest.raises(ValueError, match='k must be in'):
            cosine_knn(x, k)
    with pytest.raises(ValueError, match='chunk_size'):
        cosine_knn(x, 2, chunk_size=0)


def test_non_positive_row_sum_is_refused():
    index = torch.tensor([[0, 1], [1, 0]])
    similarity = torch.tensor([[1.0, -1.0], [1.0, 0.5]])
    with pytest.raises(DataError, match='row sum s_0'):
        normalize_knn(index, similarity)


def test_user_item_weights():
    # users 0: items {0, 1}; user 1: item {1}; user 2 has no edge.
    edge_index = torch.tensor([[0, 0, 1], [0, 1, 1]])
    w = normalized_ui_weights(edge_index, num_users=3, num_items=2)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([1 / math.sqrt(2 * 1), 1 / math.sqrt(2 * 2),
                                                1 / math.sqrt(1 * 2)]))


def test_input_untouched_and_grad_free():
    torch.manual_seed(3)
    x = torch.randn(50, 8, requires_grad=True)
    before = x.detach().clone()
    idx, val = cosine_knn(x, 4, chunk_size=16)
    assert torch.equal(x.detach(), before)
    assert not val.requires_grad
    ref_idx, _, _ = dense_reference(before, 4)
    assert torch.equal(idx, ref_idx)
