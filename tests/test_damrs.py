"""DA-MRS (SPEC §10) against a dense re-implementation of MMRec's DAMRS on the tiny preset."""
from __future__ import annotations

import pytest
import torch
from test_data_denoised_graphs import dense_co_interaction, dense_denoised
from test_nn_neighbour_discrimination import dense_nd

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.data import popularity_recall
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.losses import SymmetricBernoulliKL
from anchorrec_pyg.models import DAMRS, get_model_class
from anchorrec_pyg.train.trainer import Trainer

UI_EDGE = ('user', 'interacts', 'item')


def make_model(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('embedding_dim', 8)
    return DAMRS(data, DAMRS.Config(**kwargs)).double()


def dense_forward(model, data):
    """SPEC §10's forward with dense matrices, from the model's parameters only."""
    cfg = model.config
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    ui = data[UI_EDGE]
    a_hat = torch.zeros(num_users + num_items, num_users + num_items, dtype=torch.float64)
    a_hat[ui.edge_index[0], num_users + ui.edge_index[1]] = ui.edge_weight.double()
    a_hat = a_hat + a_hat.T
    layers = [torch.cat([model.user_embedding.weight, model.item_embedding.weight])]
    for _ in range(cfg.n_ui_layers):
        layers.append(a_hat @ layers[-1])
    c = torch.stack(layers).mean(0)
    graphs = dense_denoised(data['item'].x_image, data['item'].x_text, cfg.knn_k)
    g_s = dense_co_interaction(ui.edge_index, num_users, num_items, cfg.behaviour_min_count,
                               cfg.behaviour_k)
    h = [torch.linalg.matrix_power(g, cfg.n_mm_layers) @ model.item_embedding.weight
         for g in (graphs['text'], graphs['image'], g_s)]
    return c[:num_users], c[num_users:], h


def dense_loss(model, data, users, pos, neg, detach_weights=True):
    """SPEC §10's three losses written out as MMRec's DAMRS computes them."""
    cfg = model.config
    cu, ci, h = dense_forward(model, data)
    u = cu[users]
    items = ci + sum(h) / 3

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    s_pos = torch.sigmoid(torch.stack([(u * unit(hm[pos])).sum(1) for hm in h]))
    s_neg = torch.sigmoid(torch.stack([(u * unit(hm[neg])).sum(1) for hm in h]))
    if detach_weights:
        s_pos, s_neg = s_pos.detach(), s_neg.detach()
    mean = s_pos.mean(0)
    wp = torch.clamp(mean * torch.exp(-s_pos.var(0))**2, 0, 1)
    nbar = s_neg.mean()
    wn = torch.clamp((s_pos.max(0).values - nbar) * (mean < nbar).double(), 0, 1)
    x_pos, x_neg = (u * items[pos]).sum(1), (u * items[neg]).sum(1)
    bpr = -(torch.log(torch.sigmoid(x_pos - x_neg)) * wp
            + torch.log(torch.sigmoid(x_neg - x_pos)) * wn).mean()
    ib = torch.unique(torch.cat([pos, neg]))
    nd = dense_nd(h, ib, k=cfg.nd_neighbours, tau=cfg.nd_temperature)
    ub = torch.unique(users)
    p_g = torch.sigmoid(cu[ub] @ unit(ci[ib]).T)
    p_t = torch.sigmoid(cu[ub] @ unit(sum(h)[ib] / 3).T)

    def kl(p, q):
        return (p * torch.log(p) - p * torch.log(q) + (1 - p) * torch.log(1 - p)
                - (1 - p) * torch.log(1 - q))

    kl_term = (kl(p_g, p_t) + kl(p_t, p_g)).mean()
    return bpr, nd, kl_term


def batch(data, size=48, seed=1):
    gen = torch.Generator().manual_seed(seed)
    edges = data[UI_EDGE].edge_index
    pick = torch.randint(0, edges.size(1), (size, ), generator=gen)
    neg = torch.randint(0, data['item'].num_nodes, (size, ), generator=gen)
    return edges[0, pick], edges[1, pick], neg


@pytest.mark.parametrize('kwargs', [dict(), dict(n_mm_layers=2, knn_k=4, nd_neighbours=5)])
def test_forward_matches_dense_spec(tiny_data, kwargs):
    model = make_model(tiny_data, **kwargs)
    out = model(tiny_data)
    cu, ci, h = dense_forward(model, tiny_data)
    torch.testing.assert_close(out.user, cu)
    torch.testing.assert_close(out.item, ci + (h[0] + h[1] + h[2]) / 3)
    for name, ref in zip(('h_text', 'h_image', 'h_behaviour'), h):
        torch.testing.assert_close(out.views[name], ref)


@pytest.mark.parametrize('kwargs', [dict(), dict(n_mm_layers=2, knn_k=4, nd_neighbours=5)])
def test_loss_and_gradients_match_dense_spec(tiny_data, kwargs):
    model = make_model(tiny_data, neighbor_weight=0.3, kl_weight=0.7, **kwargs)
    users, pos, neg = batch(tiny_data)
    total, terms = model.loss(tiny_data, model(tiny_data), users, pos, neg)
    bpr, nd, kl = dense_loss(model, tiny_data, users, pos, neg)
    ref = bpr + 0.3 * nd + 0.7 * kl
    torch.testing.assert_close(terms['bpr'], bpr.detach())
    torch.testing.assert_close(terms['nd'], 0.3 * nd.detach())
    torch.testing.assert_close(terms['kl'], 0.7 * kl.detach())
    torch.testing.assert_close(total, ref)
    params = [model.user_embedding.weight, model.item_embedding.weight]
    for got, want in zip(torch.autograd.grad(total, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(got, want)


def test_bpr_weights_are_detached(tiny_data):
    """The weighted BPR's gradient is the hand computation with the weights as constants, and
    differs from the one with the weights differentiated (so the check can fail)."""
    model = make_model(tiny_data, neighbor_weight=0.0, kl_weight=0.0)
    users, pos, neg = batch(tiny_data)
    total, terms = model.loss(tiny_data, model(tiny_data), users, pos, neg)
    assert terms['nd'] == 0 and terms['kl'] == 0
    params = [model.user_embedding.weight, model.item_embedding.weight]
    got = torch.autograd.grad(total, params)
    constant = torch.autograd.grad(dense_loss(model, tiny_data, users, pos, neg)[0], params)
    live = torch.autograd.grad(
        dense_loss(model, tiny_data, users, pos, neg, detach_weights=False)[0], params)
    for g, c, v in zip(got, constant, live):
        torch.testing.assert_close(g, c)
        assert (g - v).abs().max() > 1e-6


def test_same_seed_same_loss_history_bitwise(tiny_data):
    def history():
        model = make_model(tiny_data, seed=3).float()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        users, pos, neg = batch(tiny_data)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            total, _ = model.loss(tiny_data, model(tiny_data), users, pos, neg)
            total.backward()
            opt.step()
            losses.append(total.item())
        return losses

    first = history()
    assert first == history()
    assert len(set(first)) == 5


def test_trains_and_beats_popularity(tiny_data):
    torch.manual_seed(0)
    model = DAMRS(tiny_data, DAMRS.Config(embedding_dim=32))
    train = TrainConfig(epochs=15, batch_size=128, lr=0.01, device='cpu', patience=None)
    result = Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=0).fit()
    losses = [record['loss'] for record in result.history]
    assert losses[-1] < losses[0]
    assert result.valid['recall@20'] > popularity_recall(tiny_data, k=20, split='valid')


def test_registered_with_its_refusal_of_sampled_subgraphs():
    assert get_model_class('damrs') is DAMRS
    assert 'every item' in DAMRS.sampled_refusal
    assert DAMRS.required_modalities(DAMRS.Config()) == ('text', 'image')


@pytest.mark.parametrize('key,value', [('knn_k', 0), ('nd_temperature', 0.0),
                                       ('kl_weight', -1.0), ('memory_mb', 0)])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f'model.{key} must be'):
        DAMRS.Config(**{key: value})


def test_too_few_items_for_the_pseudo_neighbours(tiny_data):
    with pytest.raises(DataError, match='nd_neighbours = 50 items, the dataset has 40'):
        DAMRS(tiny_data, DAMRS.Config(nd_neighbours=50))


def test_kl_matches_the_probability_form_and_stays_finite_when_sigmoid_saturates():
    a = torch.tensor([[0.3, -1.2], [2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[-0.5, 0.7], [1.0, 0.1]], dtype=torch.float64)
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    ref = ((p - q) * (torch.log(p) - torch.log(q))
           + (q - p) * (torch.log(1 - p) - torch.log(1 - q))).mean()
    torch.testing.assert_close(SymmetricBernoulliKL()(a, b), ref)
    far = SymmetricBernoulliKL()(torch.tensor([40.0]), torch.tensor([0.0]))
    assert torch.isfinite(far) and far > 10  # sigmoid(40) is 1.0 in float32
