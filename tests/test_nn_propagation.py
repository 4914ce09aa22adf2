"""The propagation interface: every backend equals the dense product A @ X (values, gradients)."""
import copy
import pickle

import pytest
import torch

from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.nn.propagation import (
    BACKENDS,
    PropagationBackend,
    TensorCache,
    get_backend,
    propagate_many,
)

BACKEND_NAMES = sorted(BACKENDS)


def random_edges(num_src, num_dst, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(num_src, (num_edges, ), generator=gen)
    dst = torch.randint(num_dst, (num_edges, ), generator=gen)
    weight = torch.rand(num_edges, generator=gen, dtype=torch.float64) + 0.1
    return torch.stack([src, dst]), weight


def dense(edge_index, edge_weight, num_src, num_dst):
    """A[i, j] = sum of the weights of edges j -> i (duplicates add up)."""
    a = torch.zeros(num_dst, num_src, dtype=edge_weight.dtype)
    a.index_put_((edge_index[1], edge_index[0]), edge_weight, accumulate=True)
    return a


def test_registry_has_two_backends_and_unknown_name_is_a_config_error():
    assert {'pyg', 'torch_csr'} <= set(BACKENDS)
    for name in BACKEND_NAMES:
        assert isinstance(get_backend(name), PropagationBackend)
    with pytest.raises(ConfigError, match=r'model\.propagation must be one of .*pyg.*nope'):
        get_backend('nope')


@pytest.mark.parametrize('name', BACKEND_NAMES)
@pytest.mark.parametrize('num_src,num_dst', [(6, 6), (7, 4)])
def test_backend_matches_dense_forward_and_gradient(name, num_src, num_dst):
    edge_index, edge_weight = random_edges(num_src, num_dst, 15)
    # a duplicate edge and a node without in-edges must be handled like the dense matrix
    edge_index = torch.cat([edge_index, edge_index[:, :1]], dim=1)
    edge_weight = torch.cat([edge_weight, edge_weight[:1]])
    adj = get_backend(name).adjacency(edge_index, edge_weight, (num_src, num_dst))
    a = dense(edge_index, edge_weight, num_src, num_dst)
    x = torch.randn(num_src, 3, dtype=torch.float64, requires_grad=True)
    out = adj @ x
    assert out.shape == (num_dst, 3)
    torch.testing.assert_close(out, a @ x)
    grad_out = torch.randn(num_dst, 3, dtype=torch.float64)
    (grad, ) = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(grad, a.t() @ grad_out)
    assert torch.autograd.gradcheck(lambda t: adj @ t, (x, ))


@pytest.mark.parametrize('name', BACKEND_NAMES)
def test_float32_features_with_float32_weights(name):
    edge_index, edge_weight = random_edges(5, 5, 12, seed=3)
    adj = get_backend(name).adjacency(edge_index, edge_weight.float(), (5, 5))
    x = torch.randn(5, 2)
    torch.testing.assert_close(adj @ x, dense(edge_index, edge_weight.float(), 5, 5) @ x)


@pytest.mark.parametrize('name', BACKEND_NAMES)
def test_propagate_many_equals_separate_products(name):
    backend = get_backend(name)
    adjs, xs = [], []
    for seed in range(3):
        ei, w = random_edges(6, 6, 10, seed=seed)
        adjs.append(backend.adjacency(ei, w, (6, 6)))
        xs.append(torch.randn(6, 4, dtype=torch.float64))
    outs = propagate_many(adjs, xs)
    for adj, x, out in zip(adjs, xs, outs):
        torch.testing.assert_close(out, adj @ x)
    other = get_backend(name).adjacency(*random_edges(6, 6, 10), (6, 6))
    with pytest.raises(ValueError, match='one backend instance'):
        propagate_many([adjs[0], other], xs[:2])


def test_bad_edge_shapes_are_rejected():
    backend = get_backend('pyg')
    with pytest.raises(ValueError, match='edge_weight'):
        backend.adjacency(torch.zeros(2, 3, dtype=torch.long), torch.ones(2), (2, 2))
    with pytest.raises(ValueError, match='edge_index'):
        backend.adjacency(torch.zeros(3, dtype=torch.long), torch.ones(3), (2, 2))


def test_tensor_cache_hits_on_identity_and_misses_on_change():
    cache = TensorCache(maxsize=2)
    a, b = torch.arange(3), torch.arange(3)
    calls = []

    def build(tag):
        calls.append(tag)
        return tag

    assert cache.get('x', (a, ), lambda: build('a')) == 'a'
    assert cache.get('x', (a, ), lambda: build('a2')) == 'a'  # hit: same object
    assert cache.get('x', (b, ), lambda: build('b')) == 'b'  # equal values, other object: miss
    a.add_(1)  # in-place change bumps the version: miss
    assert cache.get('x', (a, ), lambda: build('a3')) == 'a3'
    assert calls == ['a', 'b', 'a3']
    assert cache.get('y', (a, ), lambda: build('y')) == 'y'
    assert len(cache) == 2  # LRU bound
    assert len(copy.deepcopy(cache)) == 0
    assert len(pickle.loads(pickle.dumps(cache))) == 0
