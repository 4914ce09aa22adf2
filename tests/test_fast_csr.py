"""The 'fast' propagation backend equals the PyG reference (values and gradients), on CPU and,
when available, on CUDA; its fused products equal the separate ones."""
import copy
import pickle

import pytest
import torch

from anchorrec_pyg.models import AnchorRec
from anchorrec_pyg.nn.fast_csr import CSROperator, CSRSpMM, FastCSRBackend
from anchorrec_pyg.nn.lightgcn import user_item_adjacency
from anchorrec_pyg.nn.propagation import BACKENDS, get_backend, propagate_many

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA not available')


def random_edges(num_src, num_dst, num_edges, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(num_src, (num_edges, ), generator=gen)
    dst = torch.randint(num_dst, (num_edges, ), generator=gen)
    weight = (torch.rand(num_edges, generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    return torch.stack([src, dst]), weight


def forward_and_grad(adj, x, grad_out):
    x = x.clone().requires_grad_()
    out = adj @ x
    (grad, ) = torch.autograd.grad(out, x, grad_out)
    return out, grad


def test_fast_backend_is_registered():
    assert BACKENDS['fast'] is FastCSRBackend
    assert isinstance(get_backend('fast'), FastCSRBackend)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('num_src,num_dst', [(9, 9), (11, 5), (4, 13)])
def test_fast_equals_pyg_values_and_gradients(device, dtype, num_src, num_dst):
    edge_index, edge_weight = random_edges(num_src, num_dst, 30, dtype=dtype)
    # a duplicate edge and nodes without edges behave like the dense matrix (weights add up)
    edge_index = torch.cat([edge_index, edge_index[:, :2]], dim=1).to(device)
    edge_weight = torch.cat([edge_weight, edge_weight[:2]]).to(device)
    ref = get_backend('pyg').adjacency(edge_index, edge_weight, (num_src, num_dst))
    fast = get_backend('fast').adjacency(edge_index, edge_weight, (num_src, num_dst))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(num_src, 5, generator=gen, dtype=dtype).to(device)
    grad_out = torch.randn(num_dst, 5, generator=gen, dtype=dtype).to(device)
    out_ref, grad_ref = forward_and_grad(ref, x, grad_out)
    out_fast, grad_fast = forward_and_grad(fast, x, grad_out)
    torch.testing.assert_close(out_fast, out_ref)
    torch.testing.assert_close(grad_fast, grad_ref)


def test_gradcheck_and_double_backward_free_input():
    edge_index, edge_weight = random_edges(7, 6, 20, seed=4)
    adj = get_backend('fast').adjacency(edge_index, edge_weight, (7, 6))
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: adj @ t, (x, ))
    # an input that needs no gradient gives an output without a graph
    assert not (adj @ x.detach()).requires_grad


def test_symmetric_graph_reuses_the_matrix_and_directed_graph_keeps_its_transpose():
    ui = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]])
    w = torch.tensor([0.5, 0.25, 1.0, 2.0])
    adj = user_item_adjacency(get_backend('fast'), ui, w, None, None, 3, 3)
    matrix, transpose = adj.operator.get(torch.float32)
    assert adj.operator.symmetric and matrix is transpose
    knn = torch.tensor([[1, 0, 2], [0, 0, 0]])  # neighbours 1, 0, 2 of item 0: not symmetric
    directed = get_backend('fast').adjacency(knn, torch.ones(3), (3, 3))
    matrix, transpose = directed.operator.get(torch.float32)
    assert not directed.operator.symmetric
    torch.testing.assert_close(transpose.to_dense(), matrix.to_dense().t())


def test_backward_uses_the_stored_transpose():
    """The gradient is ``transpose @ grad`` with the transpose given, not one computed per step
    (a deliberately different 'transpose' shows which matrix the backward reads)."""
    a = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[5.0, 0.0], [7.0, 11.0]], dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out = CSRSpMM.apply(x, a.to_sparse_csr(), b.to_sparse_csr())
    torch.testing.assert_close(out, a @ x)
    grad_out = torch.randn(2, 3, dtype=torch.float64)
    (grad, ) = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(grad, b @ grad_out)


def test_operator_converts_dtype_once():
    op = CSROperator.from_edges(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.ones(2), (2, 2))
    first = op.get(torch.float64)
    assert first[0].dtype == torch.float64 and op.get(torch.float64)[0] is first[0]
    assert op.get(torch.float32)[0].dtype == torch.float32


@pytest.mark.parametrize('device', DEVICES)
def test_same_operator_products_stay_separate_and_match_pyg(device, monkeypatch):
    """One operator on several inputs: one product per input (side by side was measured slower
    in benchmarks/propagation.py), values and gradients as the pyg reference."""
    backend = get_backend('fast')
    edge_index, edge_weight = random_edges(8, 5, 25, seed=2)
    adj = backend.adjacency(edge_index.to(device), edge_weight.to(device), (8, 5))
    xs = [torch.randn(8, w, dtype=torch.float64, device=device, requires_grad=True)
          for w in (3, 4, 3)]
    calls = []
    original = CSRSpMM.apply
    monkeypatch.setattr(CSRSpMM, 'apply', lambda *a: calls.append(a[0].shape) or original(*a))
    outs = propagate_many([adj] * 3, xs)
    assert calls == [torch.Size([8, 3]), torch.Size([8, 4]), torch.Size([8, 3])]
    monkeypatch.undo()
    grads = [torch.randn_like(out) for out in outs]
    fused = torch.autograd.grad(outs, xs, grads)
    for x, out, grad_out, grad in zip(xs, outs, grads, fused):
        ref_out, ref_grad = forward_and_grad(
            get_backend('pyg').adjacency(edge_index.to(device), edge_weight.to(device), (8, 5)),
            x.detach(), grad_out)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize('device', DEVICES)
def test_different_operators_are_fused_block_diagonally(device, monkeypatch):
    backend = get_backend('fast')
    graphs = [random_edges(6, 6, 14, seed=s) for s in range(3)]
    adjs = [backend.adjacency(ei.to(device), w.to(device), (6, 6)) for ei, w in graphs]
    xs = [torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
          for _ in graphs]
    calls = []
    original = CSRSpMM.apply
    monkeypatch.setattr(CSRSpMM, 'apply', lambda *a: calls.append(a[0].shape) or original(*a))
    outs = propagate_many(adjs, xs)
    assert calls == [torch.Size([18, 4])]  # one block-diagonal product
    monkeypatch.undo()
    block = backend._block_operator(adjs)
    assert backend._block_operator(adjs) is block  # built once
    grads = [torch.randn_like(out) for out in outs]
    fused = torch.autograd.grad(outs, xs, grads)
    for (ei, w), x, out, grad_out, grad in zip(graphs, xs, outs, grads, fused):
        ref = get_backend('pyg').adjacency(ei.to(device), w.to(device), (6, 6))
        ref_out, ref_grad = forward_and_grad(ref, x.detach(), grad_out)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(grad, ref_grad)


def test_unfusable_products_fall_back_to_separate_ones():
    backend = get_backend('fast')
    a = backend.adjacency(*random_edges(5, 5, 9, seed=0), (5, 5))
    b = backend.adjacency(*random_edges(5, 5, 9, seed=1), (5, 5))
    xs = [torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)]
    for out, adj, x in zip(propagate_many([a, b], xs), (a, b), xs):
        torch.testing.assert_close(out, adj @ x)
    xs = [xs[0], xs[0], torch.randn(5, 2, dtype=torch.float64)]  # a repeated among others
    for out, adj, x in zip(propagate_many([a, a, b], xs), (a, a, b), xs):
        torch.testing.assert_close(out, adj @ x)


def test_backend_copies_and_pickles_without_its_fused_operators():
    backend = get_backend('fast')
    adjs = [backend.adjacency(*random_edges(4, 4, 6, seed=s), (4, 4)) for s in range(2)]
    propagate_many(adjs, [torch.randn(4, 2, dtype=torch.float64)] * 2)
    assert len(backend._fused) == 1
    assert len(copy.deepcopy(backend)._fused) == 0
    assert len(pickle.loads(pickle.dumps(backend))._fused) == 0


@pytest.mark.parametrize('n_layers', [1, 2])
def test_anchorrec_fast_equals_pyg_outputs_loss_terms_and_gradients(tiny_data, n_layers):
    data = tiny_data
    torch.manual_seed(0)
    ref = AnchorRec(data, AnchorRec.Config(embedding_dim=8, n_layers=n_layers,
                                           amp_weight=0.1, aal_weight=0.1))
    fast = AnchorRec(data, AnchorRec.Config(embedding_dim=8, n_layers=n_layers, amp_weight=0.1,
                                            aal_weight=0.1, propagation='fast'))
    fast.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(3)
    users = torch.randint(data['user'].num_nodes, (16, ), generator=gen)
    pos = torch.randint(data['item'].num_nodes, (16, ), generator=gen)
    neg = torch.randint(data['item'].num_nodes, (16, ), generator=gen)
    results = []
    for model in (ref, fast):
        out = model(data)
        total, terms = model.loss(data, out, users, pos, neg, batch_size=32)
        total.backward()
        results.append((out, total, terms,
                        {k: p.grad.clone() for k, p in model.named_parameters()}))
    (out_a, total_a, terms_a, grads_a), (out_b, total_b, terms_b, grads_b) = results
    torch.testing.assert_close(out_b.user, out_a.user)
    torch.testing.assert_close(out_b.item, out_a.item)
    for key in out_a.views:
        torch.testing.assert_close(out_b.views[key], out_a.views[key])
    torch.testing.assert_close(total_b, total_a)
    assert terms_a.keys() == terms_b.keys()
    for key in terms_a:
        torch.testing.assert_close(terms_b[key], terms_a[key])
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=1e-4, atol=1e-6)


@cuda_only
def test_anchorrec_fast_on_cuda_equals_pyg_on_cpu(tiny_data):
    torch.manual_seed(0)
    ref = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8))
    fast = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8, propagation='fast'))
    fast.load_state_dict(ref.state_dict())
    out_ref = ref(tiny_data)
    out_fast = fast.cuda()(tiny_data.clone().to('cuda'))
    torch.testing.assert_close(out_fast.user.cpu(), out_ref.user, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_fast.item.cpu(), out_ref.item, rtol=1e-4, atol=1e-5)
