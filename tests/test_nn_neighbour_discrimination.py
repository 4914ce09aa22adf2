"""DA-MRS's neighbour discrimination (SPEC §10 loss 2) against a dense reference, chunked or not."""
from __future__ import annotations

import pytest
import torch

from anchorrec_pyg.nn.neighbour_discrimination import (
    NeighbourDiscriminationLoss,
    exp_similarity_sums,
    pseudo_neighbours,
)


def top(values, k):
    return torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]


def dense_nd(views, items, k=10, tau=0.2):
    """SPEC §10 loss 2 written out with the full |I_b| x I matrices, as MMRec's DAMRS does."""
    units = [h / h.norm(dim=1, keepdim=True) for h in views]
    probs = [torch.softmax(u[items].detach() @ u.detach().T, dim=1) for u in units]
    total = 0
    for a in range(3):
        b, c = (m for m in range(3) if m != a)
        agreed = top(probs[b] + probs[c] + 2 * probs[a], k)
        rest = probs[a].clone()
        rest.scatter_(1, agreed, 0)
        single = top(rest, k)
        e = torch.exp(units[a][items] @ units[a].T / tau)
        every = e.sum(1)
        e_agreed = e.gather(1, agreed).sum(1)
        e_single = e.gather(1, single).sum(1)
        total = total + (-torch.log(e_agreed / every + 1e-9)
                         - torch.log(e_single / (every - e_agreed) + 1e-9)).mean()
    return total / 3


def make_views(num_items=30, dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(num_items, dim, generator=gen, dtype=torch.float64, requires_grad=True)
            for _ in range(3)]


@pytest.mark.parametrize('budget', [6 * 8 * 30 * 4, 2**28])  # 4 rows per chunk, or all at once
def test_loss_and_gradients_match_the_dense_reference(budget):
    views = make_views()
    items = torch.tensor([0, 2, 3, 7, 11, 12, 19, 25, 29])
    loss_fn = NeighbourDiscriminationLoss(memory_budget_bytes=budget // 2)  # float64 rows
    assert (loss_fn.chunk_rows(30) < items.numel()) == (budget < 2**28)
    loss = loss_fn(views, items)
    grads = torch.autograd.grad(loss, views)
    ref = dense_nd(views, items)
    ref_grads = torch.autograd.grad(ref, views)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12)


def test_pseudo_neighbours_worked_example():
    # Row 0: P_b + P_c + 2 P_a = [.4, .6, .2, .9, .4] -> M = {3, 1} (k = 2); P_a with M zeroed =
    # [.1, 0, .1, 0, .2] -> S = {4, 0} (the tie between items 0 and 2 goes to 0).
    prob_a = torch.tensor([[.1, .2, .1, .3, .2]])
    prob_b = torch.tensor([[.1, .1, 0., .2, 0.]])
    prob_c = torch.tensor([[.1, .1, 0., .1, 0.]])
    agreed, single = pseudo_neighbours(prob_a, prob_b, prob_c, k=2)
    assert agreed.tolist() == [[3, 1]]
    assert single.tolist() == [[4, 0]]


def test_chunked_exp_sums_equal_the_unchunked_ones_with_gradients():
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(17, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(11, generator=gen, dtype=torch.float64)
    whole = exp_similarity_sums(query, keys, 0.2, chunk_rows=11)
    chunked = exp_similarity_sums(query, keys, 0.2, chunk_rows=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-14, atol=0)
    torch.testing.assert_close(whole, torch.exp(query @ keys.T / 0.2).sum(1))
    g_whole = torch.autograd.grad((whole * weights).sum(), (query, keys))
    g_chunked = torch.autograd.grad((chunked * weights).sum(), (query, keys))
    for a, b in zip(g_whole, g_chunked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
