"""LightGCN convolution and encoder against dense math and PyG's LGConv."""
import pytest
import torch
from torch_geometric.nn import LGConv

from anchorrec_pyg.nn.lightgcn import LightGCNEncoder, user_item_adjacency, user_item_edges
from anchorrec_pyg.nn.propagation import BACKENDS, get_backend

NUM_USERS, NUM_ITEMS = 4, 5
UI = torch.tensor([[0, 0, 1, 2, 3, 3, 3], [0, 1, 2, 3, 4, 0, 2]])


def spec_weights(ui, dtype=torch.float64):
    """SPEC §2: w(u, i) = 1 / sqrt(deg(u) deg(i))."""
    du = torch.bincount(ui[0], minlength=NUM_USERS).to(dtype)
    di = torch.bincount(ui[1], minlength=NUM_ITEMS).to(dtype)
    return (du[ui[0]] * di[ui[1]]).rsqrt()


def dense_norm_adj(dtype=torch.float64):
    """D^-1/2 A D^-1/2 of the symmetric (U+I) interaction graph, built independently."""
    n = NUM_USERS + NUM_ITEMS
    a = torch.zeros(n, n, dtype=dtype)
    a[UI[0], UI[1] + NUM_USERS] = 1
    a[UI[1] + NUM_USERS, UI[0]] = 1
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def test_user_item_edges_holds_both_directions_with_offsets():
    w = spec_weights(UI)
    edge_index, edge_weight = user_item_edges(UI, w, None, None, NUM_USERS)
    assert edge_index.shape == (2, 2 * UI.size(1))
    pairs = set(map(tuple, edge_index.t().tolist()))
    for u, i in UI.t().tolist():
        assert (u, i + NUM_USERS) in pairs and (i + NUM_USERS, u) in pairs
    torch.testing.assert_close(edge_weight, torch.cat([w, w]))


@pytest.mark.parametrize('name', sorted(BACKENDS))
def test_adjacency_equals_spec_normalisation_and_lgconv(name):
    w = spec_weights(UI)
    adj = user_item_adjacency(get_backend(name), UI, w, UI.flip(0), w, NUM_USERS, NUM_ITEMS)
    x = torch.randn(NUM_USERS + NUM_ITEMS, 3, dtype=torch.float64)
    torch.testing.assert_close(adj @ x, dense_norm_adj() @ x)
    # PyG's LGConv: normalize=True on the unweighted edges gives the same operator
    edge_index, _ = user_item_edges(UI, w, None, None, NUM_USERS)
    torch.testing.assert_close(adj @ x, LGConv(normalize=True)(x, edge_index))
    torch.testing.assert_close(adj @ x, LGConv(normalize=False)(x, edge_index, torch.cat([w, w])))


@pytest.mark.parametrize('name', sorted(BACKENDS))
@pytest.mark.parametrize('num_layers', [0, 1, 2, 3])
def test_encoder_is_the_layer_mean(name, num_layers):
    w = spec_weights(UI)
    adj = user_item_adjacency(get_backend(name), UI, w, None, None, NUM_USERS, NUM_ITEMS)
    a = dense_norm_adj()
    x = torch.randn(NUM_USERS + NUM_ITEMS, 3, dtype=torch.float64, requires_grad=True)
    expected = sum(torch.linalg.matrix_power(a, k) for k in range(num_layers + 1)) @ x
    expected = expected / (num_layers + 1)
    encoder = LightGCNEncoder(num_layers)
    torch.testing.assert_close(encoder(x, adj), expected)
    assert torch.autograd.gradcheck(lambda t: encoder(t, adj), (x, ))


def test_encoder_rejects_negative_layers():
    with pytest.raises(ValueError, match='num_layers'):
        LightGCNEncoder(-1)
