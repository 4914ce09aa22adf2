"""LATTICE's latent item graph (SPEC §10) as sparse edge lists, against the published code's dense
I x I matrices: values and gradients of the learned top-k graph and of the mixed graph S."""
import torch
from test_anchorrec import NUM_ITEMS, tiny_data

from anchorrec_pyg.nn.latent_graph import LatentItemGraph, learned_knn_edges, propagate_edges

K = 3  # the kNN size of test_anchorrec's hand-built data


def dense(edge_index, edge_weight, n):
    """The dense matrix of an edge list (row = target), duplicates summed, differentiable."""
    flat = edge_index[1] * n + edge_index[0]
    return torch.zeros(n * n, dtype=edge_weight.dtype).index_add(0, flat, edge_weight).view(n, n)


def published_item_graph(features, transforms, omega, static, k, lambda_coeff):
    """MMRec's LATTICE.forward(build_item_graph=True), dense I x I (image first)."""
    weight = torch.softmax(omega, dim=0)
    learned, original = 0, 0
    for slot, m in enumerate(('image', 'text')):
        x = transforms[m](features[m])
        x = x / x.norm(p=2, dim=-1, keepdim=True)
        sim = x @ x.t()
        val, ind = sim.topk(k, dim=-1)
        learned = learned + weight[slot] * torch.zeros_like(sim).scatter(-1, ind, val)
        original = original + weight[slot] * static[m]
    d = learned.sum(-1).pow(-0.5)
    return (1 - lambda_coeff) * d[:, None] * learned * d[None, :] + lambda_coeff * original


def static_dense(data):
    return {m: dense(data['item', f'similar_{m}', 'item'].edge_index,
                     data['item', f'similar_{m}', 'item'].edge_weight.double(), NUM_ITEMS)
            for m in ('image', 'text')}


def grads(value, params):
    return torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)


def test_learned_knn_edges_match_dense_topk_in_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    index, weight = learned_knn_edges(x, 4, memory_budget_bytes=12 * 13 * 13 * 4)  # 13-row blocks
    assert index.shape == (2, 200)
    got = dense(index, weight, 50)
    unit = x / x.norm(dim=1, keepdim=True)
    sim = unit @ unit.t()
    val, ind = sim.topk(4, dim=-1)
    expected = torch.zeros_like(sim).scatter(-1, ind, val)
    torch.testing.assert_close(got, expected)
    probe = torch.randn(50, 50, dtype=torch.float64)
    torch.testing.assert_close(grads((got * probe).sum(), x)[0],
                               grads((expected * probe).sum(), x)[0])


def test_latent_item_graph_matches_the_published_dense_graph():
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    features = {m: data['item'][f'x_{m}'].double().requires_grad_() for m in ('image', 'text')}
    learner = LatentItemGraph({'image': 7, 'text': 5}, 3, K, 0.9).double()
    with torch.no_grad():
        learner.modal_weight.copy_(torch.tensor([0.3, 0.8]))  # asymmetric: omega's gradient
    static = {m: (data['item', f'similar_{m}', 'item'].edge_index,
                  data['item', f'similar_{m}', 'item'].edge_weight) for m in ('image', 'text')}
    edge_index, edge_weight = learner(features, static)
    assert edge_index.size(1) <= 2 * (2 * K) * NUM_ITEMS  # learned and static unions, <= 2k each
    got = dense(edge_index, edge_weight, NUM_ITEMS)
    expected = published_item_graph(features, learner.transforms, learner.modal_weight,
                                    static_dense(data), K, 0.9)
    torch.testing.assert_close(got, expected)
    probe = torch.randn(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64)
    params = [*learner.parameters(), *features.values()]
    for g, rg in zip(grads((got * probe).sum(), params), grads((expected * probe).sum(), params)):
        torch.testing.assert_close(g, rg)
    assert grads((got * probe).sum(), [learner.modal_weight])[0].abs().sum() > 0


def test_propagate_edges_is_differentiable_in_weights_and_features():
    torch.manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 2, 1], [1, 1, 0, 0, 3]])  # a duplicate edge 2 -> 0
    weight = torch.rand(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    y = propagate_edges(edge_index, weight, x, 4)
    a = dense(edge_index, weight, 4)[:, :3]
    torch.testing.assert_close(y, a @ x)
    probe = torch.randn(4, 2, dtype=torch.float64)
    expected = grads((a @ x * probe).sum(), [weight, x])
    for g, rg in zip(grads((y * probe).sum(), [weight, x]), expected):
        torch.testing.assert_close(g, rg)
