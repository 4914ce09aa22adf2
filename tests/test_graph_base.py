"""The graph-model base (GraphRecModel, GraphModelConfig) through a tiny model built on it, and
the optional model-trainer hooks declared on RecModel with their defaults."""
import math
from dataclasses import dataclass

import pytest
import torch
from test_anchorrec import NUM_ITEMS, NUM_USERS, UI, dense_collaborative_view
from test_anchorrec import tiny_data as tiny_graph

from anchorrec_pyg.analysis.spaces import item_spaces
from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import (
    BM3,
    VBPR,
    AnchorRec,
    GraphModelConfig,
    GraphRecModel,
    LightGCN,
    RecModel,
    RecOutput,
)
from anchorrec_pyg.train.trainer import Trainer


class ShiftedLightGCN(GraphRecModel):
    """The docstring's example: LightGCN whose items get a learned shift, BPR + L2 + a
    squared-norm penalty on the shift."""

    description = 'test model'

    @dataclass
    class Config(GraphModelConfig):
        n_ui_layers: int = 2
        reg_weight: float = 0.1
        shift_weight: float = 0.5

    def __init__(self, data, config=None):
        super().__init__(data, config if config is not None else self.Config())
        self.shift = torch.nn.Parameter(torch.zeros(self.config.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        torch.nn.init.constant_(self.shift, 0.25)

    def forward(self, data):
        view = self.collaborative(data)
        return RecOutput(user=view.c_user, item=view.c_item + self.shift, views={'C': view.c})

    def loss(self, data, out, users, pos, neg, batch_size=None):
        u, p, n = self.batch_rows(out, users, pos, neg)
        bpr = self.bpr_loss(u, p, n)
        reg = self.config.reg_weight * self.l2_loss(u, p, n, batch_size)
        shift = self.config.shift_weight * self.shift.square().sum()
        return bpr + reg + shift, {'bpr': bpr.detach(), 'reg': reg.detach()}


def test_a_tiny_graph_model_matches_dense_math_values_and_gradients():
    data = tiny_graph()
    torch.manual_seed(0)
    model = ShiftedLightGCN(data, ShiftedLightGCN.Config(embedding_dim=4, n_ui_layers=2)).double()
    bound = math.sqrt(6 / (NUM_USERS + 4))
    assert model.user_embedding.weight.abs().max() <= bound  # Xavier-uniform from the base
    assert torch.equal(model.shift, torch.full((4, ), 0.25, dtype=torch.float64))

    out = model(data)
    c = dense_collaborative_view(model, 2)
    torch.testing.assert_close(out.views['C'], c)
    torch.testing.assert_close(out.item, c[NUM_USERS:] + model.shift)

    users, pos = UI[0], UI[1]
    neg = (pos + 3) % NUM_ITEMS
    total, terms = model.loss(data, out, users, pos, neg, batch_size=16)
    u, p, n = c[:NUM_USERS][users], (c[NUM_USERS:] + model.shift)[pos], \
        (c[NUM_USERS:] + model.shift)[neg]
    bpr = -torch.nn.functional.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
    reg = 0.1 * 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / 16
    torch.testing.assert_close(terms['bpr'], bpr.detach())
    torch.testing.assert_close(terms['reg'], reg.detach())
    expected_total = bpr + reg + 0.5 * model.shift.square().sum()
    torch.testing.assert_close(total, expected_total)

    params = [model.user_embedding.weight, model.item_embedding.weight, model.shift]
    for got, want in zip(torch.autograd.grad(total, params),
                         torch.autograd.grad(expected_total, params)):
        torch.testing.assert_close(got, want)
    # without batch_size, the L2 term divides by the batch's rows
    _, terms = model.loss(data, model(data), users, pos, neg)
    torch.testing.assert_close(terms['reg'], reg.detach() * 16 / users.numel())


def test_collaborative_view_on_another_adjacency_and_on_a_subgraph():
    data = tiny_graph()
    model = ShiftedLightGCN(data, ShiftedLightGCN.Config(embedding_dim=4)).double()
    full = model.collaborative(data)
    assert full.c_user.shape == (NUM_USERS, 4) and full.c_item.shape == (NUM_ITEMS, 4)
    assert full.graph is model.collaborative(data).graph  # operators built once per data
    identity = model.propagation.adjacency(
        torch.arange(NUM_USERS + NUM_ITEMS).repeat(2, 1),
        torch.ones(NUM_USERS + NUM_ITEMS, dtype=torch.float64),
        (NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS))
    torch.testing.assert_close(model.collaborative(data, identity).c,
                               torch.cat([model.user_embedding.weight,
                                          model.item_embedding.weight]))
    sub = data.clone()
    sub['user'].n_id = torch.arange(NUM_USERS)
    sub['item'].n_id = torch.arange(NUM_ITEMS)
    torch.testing.assert_close(model.collaborative(sub).c, full.c)


@pytest.mark.parametrize('cls, options, message', [
    (ShiftedLightGCN, dict(embedding_dim=0), r'^model\.embedding_dim must be > 0$'),
    (ShiftedLightGCN, dict(n_ui_layers=-1), r'^model\.n_ui_layers must be >= 0$'),
    (ShiftedLightGCN, dict(propagation='gpu'), r'^model\.propagation must be one of '),
    (LightGCN, dict(n_layers=-1), r'^model\.n_layers must be >= 0$'),
    (BM3, dict(n_layers=-2), r'^model\.n_layers must be >= 0$'),
    (AnchorRec, dict(n_ui_layers=-1), r'^model\.n_ui_layers must be >= 0$'),
])
def test_graph_config_checks_name_each_models_own_key(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls.Config(**options)


def test_published_layer_keys_are_kept():
    assert LightGCN.Config(n_layers=3).ui_layers == 3
    assert BM3.Config(n_layers=2).ui_layers == 2
    assert AnchorRec.Config(n_ui_layers=1).ui_layers == 1
    assert 'n_ui_layers' not in LightGCN.Config.__dataclass_fields__
    assert not issubclass(VBPR, GraphRecModel)  # no graph: a plain RecModel


def test_hook_defaults_are_declared_on_recmodel():
    assert RecModel.needs_negatives is True
    assert RecModel.sampled_refusal is None
    data = tiny_graph()
    model = ShiftedLightGCN(data)
    assert model.project(data, model(data)) == {}
    assert model.on_epoch_start(data, 1, torch.Generator()) is None
    assert BM3.needs_negatives is False


class RecordingNegatives(ShiftedLightGCN):
    """Keeps the default hooks; records what the trainer hands the loss."""

    def __init__(self, data, config=None):
        super().__init__(data, config)
        self.negatives_seen = []

    def loss(self, data, out, users, pos, neg, batch_size=None):
        self.negatives_seen.append(neg is not None)
        return super().loss(data, out, users, pos, neg, batch_size)


def test_trainer_uses_the_default_hooks(tiny_data):
    torch.manual_seed(0)
    model = RecordingNegatives(tiny_data, RecordingNegatives.Config(embedding_dim=8))
    train = TrainConfig(epochs=2, batch_size=128, lr=0.01, device='cpu')
    result = Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=0).fit()
    assert result.epochs_run == 2
    assert model.negatives_seen and all(model.negatives_seen)


def test_item_spaces_read_the_project_hook():
    data = tiny_graph()
    torch.manual_seed(0)
    anchorrec = AnchorRec(data, AnchorRec.Config(embedding_dim=4))
    with torch.no_grad():
        spaces = item_spaces(anchorrec, data, anchorrec(data))
    assert {'h_id', 'h_mm', 'h_text', 'h_image', 'h_mix'} <= set(spaces)
    plain = ShiftedLightGCN(data, ShiftedLightGCN.Config(embedding_dim=4))
    with torch.no_grad():
        spaces = item_spaces(plain, data, plain(data))
    assert all(space.group != 'projection' for space in spaces.values())
