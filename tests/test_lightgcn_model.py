"""The ID-only LightGCN model (SPEC §9)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import MODELS, LightGCN, RecModel, RecOutput, get_model_class

NUM_USERS, NUM_ITEMS = 4, 6
UI = torch.tensor([[0, 0, 1, 1, 2, 3, 3], [0, 1, 1, 2, 3, 4, 5]])


def tiny_data() -> HeteroData:
    """A hand-built Contract 1 HeteroData with only the user-item graph."""
    du = torch.bincount(UI[0], minlength=NUM_USERS).float()
    di = torch.bincount(UI[1], minlength=NUM_ITEMS).float()
    w = (du[UI[0]] * di[UI[1]]).rsqrt()
    data = HeteroData()
    data['user'].num_nodes = NUM_USERS
    data['item'].num_nodes = NUM_ITEMS
    data['user', 'interacts', 'item'].edge_index = UI
    data['user', 'interacts', 'item'].edge_weight = w
    data['item', 'rev_interacts', 'user'].edge_index = UI.flip(0)
    data['item', 'rev_interacts', 'user'].edge_weight = w
    return data


def dense_adj():
    n = NUM_USERS + NUM_ITEMS
    a = torch.zeros(n, n)
    a[UI[0], UI[1] + NUM_USERS] = 1
    a[UI[1] + NUM_USERS, UI[0]] = 1
    inv = a.sum(1).rsqrt()
    return inv[:, None] * a * inv[None, :]


def test_registry_entry_and_unknown_name():
    assert get_model_class('lightgcn') is LightGCN is get_model_class('LightGCN')
    for cls in MODELS.values():
        assert issubclass(cls, RecModel) and isinstance(cls.description, str)
        assert '\n' not in cls.description
    with pytest.raises(ConfigError, match=r"model\.name must be one of .*lightgcn.*'mf'"):
        get_model_class('mf')


@pytest.mark.parametrize('kwargs,key', [
    (dict(embedding_dim=0), 'model.embedding_dim'),
    (dict(n_layers=-1), 'model.n_layers'),
    (dict(lambda_reg=-1.0), 'model.lambda_reg'),
    (dict(propagation='cuda_magic'), 'model.propagation'),
    (dict(n_layers=1.5), 'model.n_layers'),
    (dict(embedding_dim=True), 'model.embedding_dim'),
])
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
        LightGCN.Config(**kwargs)


def test_int_is_accepted_for_float():
    assert LightGCN.Config(lambda_reg=0).lambda_reg == 0.0
    assert isinstance(LightGCN.Config(lambda_reg=0).lambda_reg, float)


@pytest.mark.parametrize('propagation', ['pyg', 'torch_csr'])
def test_forward_is_the_layer_mean_of_the_id_embeddings(propagation):
    data = tiny_data()
    model = LightGCN(data, LightGCN.Config(embedding_dim=8, propagation=propagation))
    out = model(data)
    assert isinstance(out, RecOutput)
    assert out.user.shape == (NUM_USERS, 8) and out.item.shape == (NUM_ITEMS, 8)
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    a = dense_adj()
    expected = (e0 + a @ e0 + a @ a @ e0) / 3
    torch.testing.assert_close(torch.cat([out.user, out.item]), expected)
    torch.testing.assert_close(out.views['C'], expected)


def test_loss_is_bpr_plus_l2_over_the_configured_batch_size():
    data = tiny_data()
    model = LightGCN(data, LightGCN.Config(embedding_dim=8, lambda_reg=0.1))
    out = model(data)
    users, pos, neg = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 5]), torch.tensor([4, 0, 2])
    total, terms = model.loss(data, out, users, pos, neg, batch_size=2048)
    u, p, n = out.user[users], out.item[pos], out.item[neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = 0.1 * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 2048
    torch.testing.assert_close(terms['bpr'], bpr.detach())
    torch.testing.assert_close(terms['reg'], reg.detach())
    torch.testing.assert_close(total, bpr + reg)
    assert not terms['bpr'].requires_grad and total.requires_grad
    # batch_size=None divides by the number of triples
    _, terms3 = model.loss(data, out, users, pos, neg)
    torch.testing.assert_close(terms3['reg'], reg.detach() * 2048 / 3)


def test_training_lowers_the_loss_and_is_deterministic():
    data = tiny_data()

    def train():
        torch.manual_seed(0)
        model = LightGCN(data, LightGCN.Config(embedding_dim=8))
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        users, pos = UI[0], UI[1]
        neg = torch.tensor([5, 4, 3, 0, 1, 2, 0])
        losses = []
        for _ in range(30):
            opt.zero_grad()
            total, _ = model.loss(data, model(data), users, pos, neg, batch_size=7)
            total.backward()
            opt.step()
            losses.append(total.item())
        return losses

    first, second = train(), train()
    assert first == second
    assert first[-1] < 0.5 * first[0]


def test_subgraph_reads_n_id():
    data = tiny_data()
    model = LightGCN(data, LightGCN.Config(embedding_dim=4))
    sub = data.subgraph({'user': torch.tensor([1, 3]), 'item': torch.tensor([1, 2, 4, 5])})
    assert 'n_id' not in sub['user']
    sub['user'].n_id = torch.tensor([1, 3])
    sub['item'].n_id = torch.tensor([1, 2, 4, 5])
    out = model(sub)
    assert out.user.shape == (2, 4) and out.item.shape == (4, 4)
    # user 1 (local 0) with items 1, 2; user 3 (local 1) with items 4, 5: each a star with
    # weights taken from the full graph
    e_u = model.user_embedding.weight[[1, 3]]
    e_i = model.item_embedding.weight[[1, 2, 4, 5]]
    w = sub['user', 'interacts', 'item'].edge_weight
    ei = sub['user', 'interacts', 'item'].edge_index
    r = torch.zeros(2, 4)
    r[ei[0], ei[1]] = w
    a = torch.zeros(6, 6)
    a[:2, 2:] = r
    a[2:, :2] = r.t()
    e0 = torch.cat([e_u, e_i])
    expected = (e0 + a @ e0 + a @ a @ e0) / 3
    torch.testing.assert_close(torch.cat([out.user, out.item]), expected)


def test_graph_is_built_once_per_data_object():
    data = tiny_data()
    model = LightGCN(data)
    model(data)
    entries = len(model.graph_cache)
    assert entries == 1
    model(data)
    model(data)
    assert len(model.graph_cache) == entries
    first = model.user_item_graph(data, model.propagation)
    assert model.user_item_graph(data, model.propagation) is first
    assert dataclasses.is_dataclass(model.config)


def test_gradient_reaches_only_batch_relevant_rows_through_the_graph():
    data = tiny_data()
    model = LightGCN(data, LightGCN.Config(embedding_dim=4, n_layers=0, lambda_reg=0.0))
    out = model(data)
    total, _ = model.loss(data, out, torch.tensor([0]), torch.tensor([1]), torch.tensor([3]))
    total.backward()
    grad_users = model.user_embedding.weight.grad.abs().sum(1)
    grad_items = model.item_embedding.weight.grad.abs().sum(1)
    assert grad_users[0] > 0 and grad_users[1:].sum() == 0
    assert grad_items[1] > 0 and grad_items[3] > 0
    assert grad_items[[0, 2, 4, 5]].sum() == 0
    expected = -F.logsigmoid(out.user[0] @ (out.item[1] - out.item[3]))
    torch.testing.assert_close(total, expected)
