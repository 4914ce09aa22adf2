"""SMORE (SPEC §10) against a dense re-implementation on the hand-built graph: the spectral
filters against an explicit DFT matrix, the kNN graphs at their own k and their max-union,
forward, loss and gradients, determinism, and real training."""
import math

import pytest
import torch
from test_anchorrec import BATCH, NUM_ITEMS, NUM_USERS, dense_knn, dense_r, loss_history, tiny_data
from test_baselines import bpr, dense_a_hat, dense_lightgcn

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.data import max_union_graph, popularity_recall
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models import get_model_class
from anchorrec_pyg.models.smore import SMORE
from anchorrec_pyg.nn.spectral import SpectralFusion
from anchorrec_pyg.train.trainer import Trainer

MODALITIES = ('image', 'text')


def complex_weight(param):
    return torch.complex(param[..., 0], param[..., 1]).reshape(-1)


def dft_filter(x, weight, other=None):
    """irfft(rfft(x) [* rfft(other)] * w) with explicit orthonormal DFT matrices: the forward
    keeps bins 0..d/2; the inverse counts every bin twice except DC and (d even) Nyquist, and
    keeps the real part."""
    d = x.size(1)
    bins = d // 2 + 1
    j = torch.arange(d, dtype=torch.float64)
    k = torch.arange(bins, dtype=torch.float64)
    forward = torch.exp(-2j * math.pi * j[:, None] * k[None, :] / d) / math.sqrt(d)
    spectrum = x.to(torch.complex128) @ forward
    if other is not None:
        spectrum = spectrum * (other.to(torch.complex128) @ forward)
    twice = torch.full((bins, ), 2.0, dtype=torch.float64)
    twice[0] = 1.0
    if d % 2 == 0:
        twice[-1] = 1.0
    inverse = torch.exp(2j * math.pi * k[:, None] * j[None, :] / d) / math.sqrt(d)
    return ((spectrum * weight * twice) @ inverse).real


@pytest.mark.parametrize('dim', [6, 7])
def test_spectral_fusion_matches_explicit_dft_values_and_gradients(dim):
    torch.manual_seed(0)
    fusion = SpectralFusion(dim).double()
    image = torch.randn(5, dim, dtype=torch.float64, requires_grad=True)
    text = torch.randn(5, dim, dtype=torch.float64, requires_grad=True)
    got = fusion(image, text)
    want = (dft_filter(image, complex_weight(fusion.image_weight)),
            dft_filter(text, complex_weight(fusion.text_weight)),
            dft_filter(image, complex_weight(fusion.fusion_weight), other=text))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    inputs = [image, text, *fusion.parameters()]
    got_grads = torch.autograd.grad(sum(g.sin().sum() for g in got), inputs)
    for a, b in zip(got_grads, torch.autograd.grad(sum(w.sin().sum() for w in want), inputs)):
        torch.testing.assert_close(a, b)
    assert fusion.image_weight.shape == (1, dim // 2 + 1, 2)


def test_max_union_graph_keeps_every_edge_with_its_largest_weight():
    a = (torch.tensor([[0, 1, 2], [1, 1, 0]]), torch.tensor([0.5, 0.2, 0.7]))
    b = (torch.tensor([[1, 0, 2], [1, 1, 2]]), torch.tensor([0.4, 0.1, 0.3]))
    index, weight = max_union_graph([a, b], 3)
    dense = torch.zeros(3, 3)
    dense[index[0], index[1]] = weight
    assert index.size(1) == 4  # (0, 1) and (1, 1) are in both
    assert torch.equal(dense, torch.tensor([[0, 0.5, 0], [0, 0.4, 0], [0.7, 0, 0.3]]))


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    data = tiny_data(modalities=MODALITIES)
    options = dict(embedding_dim=6, image_knn_k=2, text_knn_k=4, dropout=0.0)
    options.update(kwargs)
    return SMORE(data, SMORE.Config(**options)).double(), data


def dense_graphs(model, data):
    cfg = model.config
    s_v = dense_knn(data['item'].x_image.double(), cfg.image_knn_k)
    s_t = dense_knn(data['item'].x_text.double(), cfg.text_knn_k)
    return {'image': s_v, 'text': s_t, 'fusion': torch.maximum(s_v, s_t)}


def lin(layer, x):
    return x @ layer.weight.t() + (layer.bias if layer.bias is not None else 0)


def dense_reference(model, data):
    """SPEC §10 SMORE with dense matrices and explicit DFTs (evaluation: no dropout)."""
    cfg = model.config
    x_v = lin(model.feature_maps['image'], model.features['image'])
    x_t = lin(model.feature_maps['text'], model.features['text'])
    sp = model.spectral
    filtered = {'image': dft_filter(x_v, complex_weight(sp.image_weight)),
                'text': dft_filter(x_t, complex_weight(sp.text_weight)),
                'fusion': dft_filter(x_v, complex_weight(sp.fusion_weight), other=x_t)}
    graphs = dense_graphs(model, data)
    r = dense_r()
    ei = model.item_embedding.weight
    v = {}
    for m in ('image', 'text', 'fusion'):
        e = ei * torch.sigmoid(lin(model.gates[m], filtered[m]))
        h = torch.linalg.matrix_power(graphs[m], cfg.n_layers) @ e
        v[m] = torch.cat([r @ h, h])
    e0 = torch.cat([model.user_embedding.weight, ei])
    c = dense_lightgcn(dense_a_hat(r), e0, cfg.n_ui_layers)

    def query(m):
        first, _, second = model.queries[m]
        return torch.softmax(lin(second, torch.tanh(lin(first, v['fusion']))), dim=1)

    q = {m: torch.sigmoid(lin(model.preferences[m], c)) for m in ('image', 'text', 'fusion')}
    side = (q['image'] * query('image') * v['image'] + q['text'] * query('text') * v['text']
            + q['fusion'] * v['fusion']) / 3
    return c + side, c, side, v


def dense_info_nce(a, b, tau=0.2):
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    logits = torch.exp(a @ b.t() / tau)
    return -torch.log(logits.diagonal() / logits.sum(1)).mean()


def test_item_graphs_are_the_knn_graphs_at_their_own_k_and_their_max_union():
    model, data = make_model()
    graphs = model.item_graphs(data)
    eye = torch.eye(NUM_ITEMS, dtype=torch.float64)
    for m, dense in dense_graphs(model, data).items():
        torch.testing.assert_close(graphs[m] @ eye, dense, rtol=1e-6, atol=1e-7)
    assert model.item_graphs(data) is graphs  # built once per data object
    assert (graphs['image'] @ eye).count_nonzero() == NUM_ITEMS * 2
    assert (graphs['text'] @ eye).count_nonzero() == NUM_ITEMS * 4


@pytest.mark.parametrize('propagation', ['pyg', 'fast'])
@pytest.mark.parametrize('n_layers,n_ui_layers', [(1, 3), (2, 1)])
def test_forward_matches_dense_spec(propagation, n_layers, n_ui_layers):
    model, data = make_model(propagation=propagation, n_layers=n_layers,
                             n_ui_layers=n_ui_layers)
    model.eval()
    out = model(data)
    z, c, side, v = dense_reference(model, data)
    tol = dict(rtol=1e-5, atol=1e-7)  # the graphs are float32, as the data's
    torch.testing.assert_close(out.user, z[:NUM_USERS], **tol)
    torch.testing.assert_close(out.item, z[NUM_USERS:], **tol)
    torch.testing.assert_close(out.views['C'], c)
    torch.testing.assert_close(out.views['side'], side, **tol)
    torch.testing.assert_close(out.views['V_fusion'], v['fusion'], **tol)


def test_loss_matches_dense_spec_values_and_gradients():
    model, data = make_model(reg_weight=0.3, cl_weight=0.5)
    model.eval()
    users, pos, neg = BATCH
    total, terms = model.loss(data, model(data), users, pos, neg, batch_size=16)
    z, c, side, _ = dense_reference(model, data)
    u, p, n = z[:NUM_USERS][users], z[NUM_USERS:][pos], z[NUM_USERS:][neg]
    ref_bpr = bpr(u, p, n)
    ref_reg = 0.3 * 0.5 * ((u**2).sum() + (p**2).sum() + (n**2).sum()) / 16
    ref_cl = 0.5 * (dense_info_nce(side[NUM_USERS:][pos], c[NUM_USERS:][pos])
                    + dense_info_nce(side[users], c[users]))
    tol = dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms['bpr'], ref_bpr.detach(), **tol)
    torch.testing.assert_close(terms['reg'], ref_reg.detach(), **tol)
    torch.testing.assert_close(terms['cl'], ref_cl.detach(), **tol)
    ref = ref_bpr + ref_reg + ref_cl
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(total, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(got, want, **tol)
    assert model.features['image'].requires_grad  # trainable copies (MMRec: freeze=False)


def test_preference_dropout_only_in_training_from_the_seeded_rng():
    model, data = make_model(dropout=0.5)
    model.eval()
    z, _, _, _ = dense_reference(model, data)
    torch.testing.assert_close(model(data).item, z[NUM_USERS:], rtol=1e-5, atol=1e-7)
    model.train()
    torch.manual_seed(3)
    first = model(data).item
    torch.manual_seed(3)
    assert torch.equal(model(data).item, first)
    assert not torch.allclose(first, z[NUM_USERS:])


def test_same_seed_gives_the_same_loss_history_and_training_lowers_it():
    data = tiny_data(modalities=MODALITIES)

    def build(data):
        return SMORE(data, SMORE.Config(embedding_dim=8, image_knn_k=3, text_knn_k=5))

    first, second = loss_history(build, data), loss_history(build, data)
    assert first == second
    assert first[-1] < first[0]


def test_trains_on_the_tiny_preset_and_beats_popularity(tiny_data):
    torch.manual_seed(0)
    model = SMORE(tiny_data, SMORE.Config(embedding_dim=16, image_knn_k=10, text_knn_k=10))
    train = TrainConfig(epochs=3, batch_size=64, lr=0.01, device='cpu', patience=None)
    result = Trainer(model, tiny_data, train, EvalConfig(ks=[10, 20]), seed=0).fit()
    assert result.valid['recall@20'] > popularity_recall(tiny_data, k=20, split='valid')


def test_sampled_training_is_refused_with_the_reason(tiny_data):
    model = SMORE(tiny_data, SMORE.Config(embedding_dim=8, image_knn_k=10, text_knn_k=10))
    train = TrainConfig(epochs=1, batch_size=64, device='cpu', mode='sampled')
    with pytest.raises(ConfigError, match='SMORE cannot train on sampled subgraphs') as info:
        Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=0)
    assert 'built from the whole item feature tables' in str(info.value)


def test_registry_and_published_defaults():
    assert get_model_class('smore') is SMORE
    cfg = SMORE.Config()
    assert (cfg.n_ui_layers, cfg.image_knn_k, cfg.text_knn_k, cfg.reg_weight,
            cfg.dropout) == (4, 40, 15, 1e-4, 0.1)
    assert (cfg.n_layers, cfg.cl_weight, cfg.cl_tau) == (1, 0.01, 0.2)
    assert SMORE.required_modalities(cfg) == ('image', 'text')


def test_knn_k_larger_than_the_catalogue_is_a_data_error():
    with pytest.raises(DataError, match='model.image_knn_k = 9 exceeds the 8 items'):
        make_model(image_knn_k=9)


@pytest.mark.parametrize('kwargs,key', [
    (dict(text_knn_k=0), 'model.text_knn_k must be >= 1'),
    (dict(dropout=1.0), r'model.dropout must be in \[0, 1\)'),
    (dict(cl_tau=0.0), 'model.cl_tau must be > 0'),
])
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        SMORE.Config(**kwargs)
