"""DA-MRS's sparse item graphs (SPEC §10) against dense re-implementations of MMRec's code."""
from __future__ import annotations

import pytest
import torch

from anchorrec_pyg.data.denoised_graphs import (
    co_interaction_graph,
    denoised_modality_graphs,
    mean_cosine,
    stable_topk,
)
from anchorrec_pyg.errors import DataError


def to_dense(edge_index, edge_weight, num_items):
    """A[i, j] = w(j -> i) (row = target item, column = neighbour)."""
    a = torch.zeros(num_items, num_items, dtype=torch.float64)
    a[edge_index[1], edge_index[0]] = edge_weight.double()
    return a


def normalised(adj):
    """MMRec's compute_normalized_laplacian on a 0/1 matrix: 1 / sqrt(r_i r_j), r = row count."""
    r = adj.sum(1) + 1e-7
    return adj * (r[:, None] * r[None, :]).rsqrt()


def first_k_stable(row, k):
    """Column ids of the k largest entries, ties to the lower column (a stable sort)."""
    return torch.sort(row, descending=True, stable=True).indices[:k]


def dense_denoised(image, text, k):
    """SPEC §10: full cosine matrices, zero below either mean, top min(k, nnz) per row."""
    sims = []
    for x in (image, text):
        x = x.double()
        norm = x.norm(dim=1, keepdim=True)
        xn = x / torch.where(norm > 0, norm, torch.ones_like(norm))
        sims.append(xn @ xn.T)
    sv, st = sims
    drop = (sv < sv.mean()) | (st < st.mean())
    sv[drop] = 0
    st[drop] = 0
    adj = {'image': torch.zeros_like(sv), 'text': torch.zeros_like(st)}
    for i in range(sv.size(0)):
        kk = min(k, int((st[i] != 0).sum()))
        adj['image'][i, first_k_stable(sv[i], kk)] = 1
        adj['text'][i, first_k_stable(st[i], kk)] = 1
    return {m: normalised(a) for m, a in adj.items()}


def test_stable_topk_breaks_ties_towards_the_lower_index():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (50, 30), generator=gen).float()
    value, index = stable_topk(values, 7)
    for row in range(50):
        expected = first_k_stable(values[row], 7)
        assert index[row].tolist() == expected.tolist()
        assert torch.equal(value[row], values[row, expected])


def test_mean_cosine_equals_the_mean_of_the_full_matrix():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(37, 9, generator=gen, dtype=torch.float64)
    x[5] = 0
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    assert mean_cosine(x) == pytest.approx(float((xn @ xn.T).mean()), rel=1e-6)


@pytest.mark.parametrize("budget", [16, 4 * 4 * 10 * 10, 4 * 4 * 20 * 20, 2**28])
def test_denoised_graphs_equal_the_dense_reference(budget):
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(45, 12, generator=gen)
    text = torch.rand(45, 8, generator=gen) - 0.3
    image[7] = image[3]  # duplicate rows: tied similarities
    text[7] = text[3]
    graphs = denoised_modality_graphs(image, text, k=5, memory_budget_bytes=budget)
    reference = dense_denoised(image, text, 5)
    for m in ('image', 'text'):
        edge_index, weight = graphs[m]
        assert weight.dtype == torch.float32
        torch.testing.assert_close(to_dense(edge_index, weight, 45), reference[m], rtol=1e-6,
                                   atol=0)
    counts = [torch.bincount(graphs[m][0][1], minlength=45) for m in ('image', 'text')]
    assert torch.equal(counts[0], counts[1])
    assert counts[0].max() == 5 and counts[0].min() < 5  # some rows have fewer than k kept


def test_denoised_graphs_refuse_tables_of_different_items():
    with pytest.raises(DataError, match='image table has 4 rows but the text table has 3'):
        denoised_modality_graphs(torch.rand(4, 2), torch.rand(3, 2), k=2)


def dense_co_interaction(edge_index, num_users, num_items, min_count, k):
    """SPEC §10's G_s with a dense R^T R and a per-item loop."""
    r = torch.zeros(num_users, num_items, dtype=torch.float64)
    r[edge_index[0], edge_index[1]] = 1
    c = r.T @ r
    adj = torch.eye(num_items, dtype=torch.float64)
    for i in range(num_items):
        row = c[i].clone()
        row[i] = 0
        row[row < min_count] = 0
        kk = min(k, int((row > 0).sum()))
        adj[i, first_k_stable(row, kk)] = 1
    return normalised(adj)


@pytest.mark.parametrize('chunk_items', [1, 7, 4096])
def test_co_interaction_graph_equals_the_dense_reference(chunk_items):
    gen = torch.Generator().manual_seed(3)
    num_users, num_items = 40, 25
    user = torch.randint(0, num_users, (300, ), generator=gen)
    item = torch.randint(0, num_items, (300, ), generator=gen)
    edge_index = torch.stack([user, item])  # duplicates count once
    edge_index_out, weight = co_interaction_graph(edge_index, num_users, num_items,
                                                  chunk_items=chunk_items)
    reference = dense_co_interaction(edge_index, num_users, num_items, 2, 2)
    torch.testing.assert_close(to_dense(edge_index_out, weight, num_items), reference,
                               rtol=1e-6, atol=0)


def test_co_interaction_graph_worked_example():
    # Items 0 and 1 share users 0 and 1 (c = 2); item 2 shares one user with each (c = 1).
    edge_index = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 2, 0, 1, 2]])
    edge_index_out, weight = co_interaction_graph(edge_index, 3, 3)
    assert edge_index_out.tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 1, 2]]
    half = 0.5 / (1 + 1e-7 / 2)
    torch.testing.assert_close(weight, torch.tensor([half, half, half, half, 1.0]))
