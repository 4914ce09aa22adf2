"""The baselines of SPEC §9 (VBPR, FREEDOM, BM3, LightGCN): dense references of their forward
passes and losses on a hand-built graph, and two epochs of real training on the tiny dataset."""
import pytest
import torch
import torch.nn.functional as F
from test_anchorrec import BATCH, NUM_ITEMS, NUM_USERS, UI, dense_r, tiny_data

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.data import MMRecDataset
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models import BM3, FREEDOM, VBPR, LightGCN
from anchorrec_pyg.models.freedom import prune_user_item_edges
from anchorrec_pyg.train.trainer import Trainer

K = 3  # the kNN size of test_anchorrec's hand-built data


def dense_a_hat(r):
    n = NUM_USERS + NUM_ITEMS
    a_hat = torch.zeros(n, n, dtype=torch.float64)
    a_hat[:NUM_USERS, NUM_USERS:] = r
    a_hat[NUM_USERS:, :NUM_USERS] = r.t()
    return a_hat


def dense_lightgcn(a_hat, e0, layers):
    out = [e0]
    for _ in range(layers):
        out.append(a_hat @ out[-1])
    return torch.stack(out).mean(0)


def bpr(u, p, n):
    return -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()


def frob(x):
    return torch.sqrt((x**2).sum())


# VBPR ##########################################################################################

def test_vbpr_forward_and_loss_match_dense_spec():
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    model = VBPR(data, VBPR.Config(embedding_dim=4, reg_weight=0.3)).double()
    out = model(data)
    x = torch.cat([data['item'].x_text, data['item'].x_image], 1).double()  # text first
    proj = model.projection
    items = torch.cat([model.item_embedding.weight, x @ proj.weight.t() + proj.bias], 1)
    torch.testing.assert_close(out.item, items)
    torch.testing.assert_close(out.user, model.user_embedding.weight)
    assert out.user.shape == (NUM_USERS, 8) and out.item.shape == (NUM_ITEMS, 8)

    users, pos, neg = BATCH
    total, terms = model.loss(data, out, users, pos, neg, batch_size=2048)
    u, p, n = out.user[users], items[pos], items[neg]
    reg = 0.3 * (frob(u) + frob(p) + frob(n)) / len(users)  # EmbLoss: not squared, batch rows
    torch.testing.assert_close(terms['bpr'], bpr(u, p, n).detach())
    torch.testing.assert_close(terms['reg'], reg.detach())
    torch.testing.assert_close(total, bpr(u, p, n) + reg)


def test_vbpr_features_are_fixed_and_not_saved():
    data = tiny_data(modalities=('text', 'image'))
    model = VBPR(data, VBPR.Config(embedding_dim=4))
    assert 'raw_features' not in dict(model.named_parameters())
    assert 'raw_features' not in model.state_dict()
    assert model.projection.weight.shape == (4, 5 + 7)


# FREEDOM #######################################################################################

def dense_freedom_item_graph(data, image_weight):
    """SPEC §9: top-k cosine graphs, every kept edge 1/k, mixed 0.1 image + 0.9 text."""
    graphs = {}
    for m in ('text', 'image'):
        x = F.normalize(data['item'][f'x_{m}'].double(), dim=1)
        idx = (x @ x.t()).topk(K, dim=1).indices
        graphs[m] = torch.zeros(NUM_ITEMS, NUM_ITEMS, dtype=torch.float64).scatter_(
            1, idx, 1.0 / K)
    return image_weight * graphs['image'] + (1 - image_weight) * graphs['text']


def test_freedom_item_graph_matches_dense_spec():
    data = tiny_data(modalities=('text', 'image'))
    model = FREEDOM(data, FREEDOM.Config(embedding_dim=4)).double()
    s = model.item_item_graph(data) @ torch.eye(NUM_ITEMS, dtype=torch.float64)
    torch.testing.assert_close(s, dense_freedom_item_graph(data, 0.1))
    assert model.item_item_graph(data) is model.item_item_graph(data)  # built once


def test_freedom_forward_full_graph_at_eval_and_pruned_graph_in_training():
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    model = FREEDOM(data, FREEDOM.Config(embedding_dim=4, edge_dropout=0.5)).double()
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h = dense_freedom_item_graph(data, 0.1) @ model.item_embedding.weight

    model.eval()
    out = model(data)
    c = dense_lightgcn(dense_a_hat(dense_r()), e0, 2)
    torch.testing.assert_close(out.user, c[:NUM_USERS])
    torch.testing.assert_close(out.item, c[NUM_USERS:] + h)

    model.train()
    model.on_epoch_start(data, 1, torch.Generator().manual_seed(3))
    kept, weight = prune_user_item_edges(data['user', 'interacts', 'item'].edge_index,
                                         data['user', 'interacts', 'item'].edge_weight,
                                         NUM_USERS, NUM_ITEMS, 0.5,
                                         torch.Generator().manual_seed(3))
    r = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    r[kept[0], kept[1]] = 1.0
    r = r / (r.sum(1, keepdim=True) * r.sum(0, keepdim=True)).sqrt().clamp_min(1e-30) * r
    torch.testing.assert_close(weight.double(), r[kept[0], kept[1]])
    out = model(data)
    c = dense_lightgcn(dense_a_hat(r), e0, 2)
    torch.testing.assert_close(out.user, c[:NUM_USERS])
    torch.testing.assert_close(out.item, c[NUM_USERS:] + h)
    model.eval()
    torch.testing.assert_close(model(data).user,
                               dense_lightgcn(dense_a_hat(dense_r()), e0, 2)[:NUM_USERS])


def test_freedom_pruning_keeps_the_right_count_without_replacement_by_weight():
    edges = UI
    weight = torch.ones(edges.size(1))
    weight[0] = 1e-12  # practically never drawn
    draws = [prune_user_item_edges(edges, weight, NUM_USERS, NUM_ITEMS, 0.75,
                                   torch.Generator().manual_seed(s))[0] for s in range(20)]
    for kept in draws:
        assert kept.size(1) == int(edges.size(1) * 0.75)
        keys = kept[0] * NUM_ITEMS + kept[1]
        assert keys.unique().numel() == keys.numel()  # without replacement
        assert torch.isin(keys, edges[0] * NUM_ITEMS + edges[1]).all()
        assert not ((kept[0] == edges[0, 0]) & (kept[1] == edges[1, 0])).any()
    assert len({tuple(k.flatten().tolist()) for k in draws}) > 1  # resampled
    again = prune_user_item_edges(edges, weight, NUM_USERS, NUM_ITEMS, 0.75,
                                  torch.Generator().manual_seed(0))[0]
    assert torch.equal(again, draws[0])  # reproducible from the generator
    with pytest.raises(DataError, match='edge_dropout'):
        prune_user_item_edges(edges, weight, NUM_USERS, NUM_ITEMS, 0.01, torch.Generator())


def test_freedom_loss_matches_dense_spec():
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    model = FREEDOM(data, FREEDOM.Config(embedding_dim=4, reg_weight=0.07)).double()
    out = model(data)
    users, pos, neg = BATCH
    total, terms = model.loss(data, out, users, pos, neg, batch_size=2048)
    u = out.user[users]
    maps = model.feature_maps
    t = model.features['text'] @ maps['text'].weight.t() + maps['text'].bias
    v = model.features['image'] @ maps['image'].weight.t() + maps['image'].bias
    expected_bpr = bpr(u, out.item[pos], out.item[neg])
    modal = 0.07 * (bpr(u, t[pos], t[neg]) + bpr(u, v[pos], v[neg]))
    torch.testing.assert_close(terms['bpr'], expected_bpr.detach())
    torch.testing.assert_close(terms['modal'], modal.detach())
    torch.testing.assert_close(total, expected_bpr + modal)
    total.backward()
    assert model.features['text'].grad.abs().sum() > 0  # trainable copies


# BM3 ###########################################################################################

def test_bm3_forward_and_loss_match_dense_spec_without_dropout():
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    model = BM3(data, BM3.Config(embedding_dim=4, n_layers=2, dropout=0.0,
                                 reg_weight=0.2)).double()
    out = model(data)
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    c = dense_lightgcn(dense_a_hat(dense_r()), e0, 2)
    users_v, items_v = c[:NUM_USERS], c[NUM_USERS:] + model.item_embedding.weight
    pred = model.predictor

    def lin(layer, x):
        return x @ layer.weight.t() + layer.bias

    torch.testing.assert_close(out.user, lin(pred, users_v))
    torch.testing.assert_close(out.item, lin(pred, items_v))

    users, pos, _ = BATCH
    total, terms = model.loss(data, out, users, pos, None)

    def dist(a, b):
        return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    ti, tu = items_v.detach()[pos], users_v.detach()[users]
    ui = dist(lin(pred, users_v)[users], ti) + dist(lin(pred, items_v)[pos], tu)
    reg = 0.2 * (frob(users_v) + frob(items_v)) / NUM_ITEMS
    modal = 0
    for m in ('text', 'image'):
        f = lin(model.feature_maps[m], model.features[m])
        pf = lin(pred, f)[pos]
        modal = modal + dist(pf, ti) + dist(pf, f.detach()[pos])
    modal = 2.0 * modal
    torch.testing.assert_close(terms['ui'], ui.detach())
    torch.testing.assert_close(terms['reg'], reg.detach())
    torch.testing.assert_close(terms['modal'], modal.detach())
    ref = ui + reg + modal
    params = list(model.parameters())
    for g, rg in zip(torch.autograd.grad(total, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(g, rg)


def test_bm3_dropout_targets_get_no_gradient_and_are_scaled():
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    model = BM3(data, BM3.Config(embedding_dim=4, dropout=0.5)).double()
    out = model(data)
    users, pos, _ = BATCH
    torch.manual_seed(1)
    a, _ = model.loss(data, out, users, pos, None)
    torch.manual_seed(1)
    b, _ = model.loss(data, out, users, pos, None)
    torch.testing.assert_close(a, b)  # dropout from the (checkpointed) global RNG
    assert BM3.needs_negatives is False


# Training on the tiny dataset #################################################################

@pytest.mark.parametrize('cls,kwargs', [
    (VBPR, dict(reg_weight=0.001)),
    (FREEDOM, dict(edge_dropout=0.5)),
    (BM3, dict(dropout=0.3)),
    (LightGCN, dict()),
])
def test_two_epochs_lower_the_loss(tiny_data, cls, kwargs):
    data = tiny_data
    torch.manual_seed(0)
    model = cls(data, cls.Config(embedding_dim=16, **kwargs))
    train = TrainConfig(epochs=2, batch_size=64, lr=0.01, device='cpu', patience=None)
    result = Trainer(model, data, train, EvalConfig(ks=[10, 20]), seed=0).fit()
    losses = [record['loss'] for record in result.history]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert 0 <= result.test['recall@20'] <= 1


def test_lightgcn_trains_on_interactions_only(tiny_mmrec_root):
    root, name = tiny_mmrec_root
    data = MMRecDataset(root, name, modalities=(), log=False)[0]
    assert not any(key.startswith('x_') for key in data['item'].keys())
    assert data.edge_types == [('user', 'interacts', 'item'), ('item', 'rev_interacts', 'user')]
    torch.manual_seed(0)
    model = LightGCN(data, LightGCN.Config(embedding_dim=8))
    train = TrainConfig(epochs=1, batch_size=64, lr=0.01, device='cpu')
    assert Trainer(model, data, train, EvalConfig(ks=[20]), seed=0).fit().epochs_run == 1


@pytest.mark.parametrize('cls', [VBPR, FREEDOM, BM3])
def test_missing_image_features_name_the_file(cls):
    data = tiny_data(modalities=('mm', 'text'))
    with pytest.raises(DataError) as info:
        cls(data)
    assert str(info.value) == (f"{cls.__name__} needs item features 'x_image' "
                               '(image_feat.npy); the dataset has: x_mm, x_text')


@pytest.mark.parametrize('cls,kwargs,key', [
    (VBPR, dict(reg_weight=-1.0), 'model.reg_weight must be >= 0'),
    (FREEDOM, dict(edge_dropout=1.0), r'model.edge_dropout must be in \[0, 1\)'),
    (FREEDOM, dict(image_weight=2.0), r'model.image_weight must be in \[0, 1\]'),
    (BM3, dict(dropout=-0.1), r'model.dropout must be in \[0, 1\)'),
    (BM3, dict(n_layers=1.5), 'model.n_layers must be of type int'),
])
def test_config_errors_name_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        cls.Config(**kwargs)
