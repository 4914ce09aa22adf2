"""The gated modality view and its kNN propagation (SPEC §3.2) against dense math."""
import pytest
import torch

from anchorrec_pyg.nn.modality_conv import ModalityConv, ModalityGate, propagate_item_views
from anchorrec_pyg.nn.propagation import BACKENDS, get_backend

NUM_USERS, NUM_ITEMS, DIM, FEAT = 3, 6, 4, 5


def knn_graph(features, k):
    """SPEC §2 kNN graph, dense: top-k cosine per row, w / sqrt(s_i s_j)."""
    x = features / features.norm(dim=1, keepdim=True)
    sim = x @ x.t()
    val, idx = sim.topk(k, dim=1)
    a = torch.zeros_like(sim).scatter_(1, idx, val)
    s = a.sum(1)
    a = a / (s[:, None] * s[None, :]).sqrt()
    target, source = a.nonzero(as_tuple=True)
    return a, torch.stack([source, target]), a[target, source]


def user_item(dtype=torch.float64):
    ui = torch.tensor([[0, 0, 1, 2, 2, 2], [0, 3, 1, 2, 4, 5]])
    du = torch.bincount(ui[0], minlength=NUM_USERS).to(dtype)
    di = torch.bincount(ui[1], minlength=NUM_ITEMS).to(dtype)
    w = (du[ui[0]] * di[ui[1]]).rsqrt()
    r = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=dtype)
    r[ui[0], ui[1]] = w
    return r, ui.flip(0), w


def test_gate_is_elementwise_sigmoid_of_the_projected_features():
    torch.manual_seed(0)
    gate = ModalityGate(FEAT, DIM).double()
    e = torch.randn(NUM_ITEMS, DIM, dtype=torch.float64)
    f = torch.randn(NUM_ITEMS, FEAT, dtype=torch.float64)
    projected = f @ gate.proj.weight.t() + gate.proj.bias
    expected = e * torch.sigmoid(projected @ gate.gate.weight.t() + gate.gate.bias)
    torch.testing.assert_close(gate(e, f), expected)
    assert isinstance(gate.norm, torch.nn.Identity)


def test_gate_layernorm_normalises_feature_rows_before_the_projection():
    torch.manual_seed(0)
    gate = ModalityGate(FEAT, DIM, layernorm=True).double()
    e = torch.randn(NUM_ITEMS, DIM, dtype=torch.float64)
    f = torch.randn(NUM_ITEMS, FEAT, dtype=torch.float64)
    normed = (f - f.mean(1, keepdim=True)) / (f.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    projected = normed @ gate.proj.weight.t() + gate.proj.bias
    expected = e * torch.sigmoid(projected @ gate.gate.weight.t() + gate.gate.bias)
    torch.testing.assert_close(gate(e, f), expected)


@pytest.mark.parametrize('name', sorted(BACKENDS))
@pytest.mark.parametrize('num_layers', [1, 2, 3])
def test_modality_conv_matches_dense_propagation_and_gradients(name, num_layers):
    torch.manual_seed(num_layers)
    feats = torch.rand(NUM_ITEMS, FEAT, dtype=torch.float64) + 0.05
    a, edge_index, edge_weight = knn_graph(feats, k=3)
    r, iu_index, iu_weight = user_item()
    backend = get_backend(name)
    item_adj = backend.adjacency(edge_index, edge_weight, (NUM_ITEMS, NUM_ITEMS))
    r_adj = backend.adjacency(iu_index, iu_weight, (NUM_ITEMS, NUM_USERS))
    conv = ModalityConv(FEAT, DIM, num_layers).double()
    e = torch.randn(NUM_ITEMS, DIM, dtype=torch.float64, requires_grad=True)
    f = feats.clone().requires_grad_()

    h_items, h_users = conv(e, f, item_adj, r_adj)
    x = conv.gated(e, f)
    expected = torch.linalg.matrix_power(a, num_layers) @ x
    torch.testing.assert_close(h_items, expected)
    torch.testing.assert_close(h_users, r @ expected)
    assert torch.autograd.gradcheck(lambda e_, f_: conv(e_, f_, item_adj, r_adj), (e, f))


def test_knn_edges_are_directed_neighbour_to_target():
    """A non-symmetric kNN graph: item 0 aggregates from its neighbours, not the reverse."""
    edge_index = torch.tensor([[1, 0], [0, 0]])  # 1 -> 0 and self loop of 0
    edge_weight = torch.tensor([0.5, 0.25], dtype=torch.float64)
    adj = get_backend('pyg').adjacency(edge_index, edge_weight, (2, 2))
    x = torch.tensor([[1.0], [10.0]], dtype=torch.float64)
    items, _ = propagate_item_views([x], [adj], adj, 1)
    torch.testing.assert_close(items[0], torch.tensor([[0.25 + 5.0], [0.0]], dtype=torch.float64))


def test_propagate_item_views_handles_several_modalities_independently():
    torch.manual_seed(1)
    r, iu_index, iu_weight = user_item()
    backend = get_backend('pyg')
    r_adj = backend.adjacency(iu_index, iu_weight, (NUM_ITEMS, NUM_USERS))
    dense, adjs, xs = [], [], []
    for k in (2, 3, 4):
        a, ei, w = knn_graph(torch.rand(NUM_ITEMS, FEAT, dtype=torch.float64) + 0.05, k)
        dense.append(a)
        adjs.append(backend.adjacency(ei, w, (NUM_ITEMS, NUM_ITEMS)))
        xs.append(torch.randn(NUM_ITEMS, DIM, dtype=torch.float64))
    items, users = propagate_item_views(xs, adjs, r_adj, 2)
    for a, x, h, hu in zip(dense, xs, items, users):
        torch.testing.assert_close(h, a @ a @ x)
        torch.testing.assert_close(hu, r @ a @ a @ x)


def test_projection_and_gate_keep_pytorchs_default_linear_init():
    """SPEC §3, §7: P and G are never re-initialised in the published code."""
    gate = ModalityGate(FEAT, DIM)
    torch.manual_seed(3)
    gate.reset_parameters()
    torch.manual_seed(3)
    proj, gate_linear = torch.nn.Linear(FEAT, DIM), torch.nn.Linear(DIM, DIM)
    for got, want in ((gate.proj, proj), (gate.gate, gate_linear)):
        torch.testing.assert_close(got.weight, want.weight, rtol=0, atol=0)
        torch.testing.assert_close(got.bias, want.bias, rtol=0, atol=0)
    # ... and not Xavier-uniform (the same draws, scaled to sqrt(6 / (fan_in + fan_out)))
    torch.manual_seed(3)
    xavier = torch.nn.init.xavier_uniform_(torch.empty(DIM, FEAT))
    assert not torch.allclose(gate.proj.weight, xavier)
