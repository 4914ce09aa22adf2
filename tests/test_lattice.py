"""LATTICE (SPEC §10): forward and loss against a dense reference (values and gradients), the
rebuild-at-first-batch rule (directly and through the trainer), determinism, real training on the
tiny preset, the published grid and `compare --models lattice`."""
import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_anchorrec import BATCH, NUM_ITEMS, NUM_USERS, UI, tiny_data
from test_nn_latent_graph import K, grads, published_item_graph, static_dense

from anchorrec_pyg.cli import main
from anchorrec_pyg.config import EvalConfig, TrainConfig, load_config
from anchorrec_pyg.data.synthetic import popularity_recall
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models import LATTICE
from anchorrec_pyg.train.trainer import Trainer


def dense_p():
    """P = D^-1 (A01 + I) over U + I nodes."""
    n = NUM_USERS + NUM_ITEMS
    a = torch.eye(n, dtype=torch.float64)
    a[UI[0], NUM_USERS + UI[1]] = 1
    a[NUM_USERS + UI[1], UI[0]] = 1
    return a / a.sum(1, keepdim=True)


def make_model(**kwargs):
    torch.manual_seed(0)
    data = tiny_data(modalities=('text', 'image'))
    cfg = LATTICE.Config(embedding_dim=4, feat_embed_dim=3, knn_k=K, **kwargs)
    return LATTICE(data, cfg).double(), data


def test_forward_and_loss_match_dense_reference():
    model, data = make_model(reg_weight=0.3)
    model.train()
    out = model(data)
    s = published_item_graph(dict(model.features), model.item_graph_learner.transforms,
                             model.item_graph_learner.modal_weight, static_dense(data), K, 0.9)
    ei = model.item_embedding.weight
    e0 = torch.cat([model.user_embedding.weight, ei])
    p = dense_p()
    c = torch.stack([e0, p @ e0, p @ p @ e0]).mean(0)
    h = s @ ei
    torch.testing.assert_close(out.user, c[:NUM_USERS])
    torch.testing.assert_close(out.item, c[NUM_USERS:] + F.normalize(h, dim=1))

    users, pos, neg = BATCH
    total, terms = model.loss(data, out, users, pos, neg, batch_size=2048)
    u, pi, ni = out.user[users], out.item[pos], out.item[neg]
    ref_bpr = -F.logsigmoid((u * pi).sum(1) - (u * ni).sum(1)).mean()
    ref_reg = 0.3 * 0.5 * (u.pow(2).sum() + pi.pow(2).sum() + ni.pow(2).sum()) / 2048
    torch.testing.assert_close(terms['bpr'], ref_bpr.detach())
    torch.testing.assert_close(terms['reg'], ref_reg.detach())
    # the whole loss through the dense reference, from the parameters only
    uu, ii = c[:NUM_USERS], c[NUM_USERS:] + F.normalize(h, dim=1)
    u, pi, ni = uu[users], ii[pos], ii[neg]
    ref = (-F.logsigmoid((u * pi).sum(1) - (u * ni).sum(1)).mean()
           + 0.3 * 0.5 * (u.pow(2).sum() + pi.pow(2).sum() + ni.pow(2).sum()) / 2048)
    params = list(model.parameters())
    for g, rg in zip(grads(total, params), grads(ref, params)):
        torch.testing.assert_close(g, rg)
    lin = model.item_graph_learner.transforms['image'].weight
    assert grads(total, [lin])[0].abs().sum() > 0  # first batch: the graph learner trains


def test_other_batches_use_the_graph_of_the_first_detached():
    model, data = make_model()
    model.train()
    learner = model.item_graph_learner
    static = static_dense(data)
    s_first = published_item_graph(dict(model.features), learner.transforms,
                                   learner.modal_weight, static, K, 0.9).detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    users, pos, neg = BATCH
    for batch in range(3):
        opt.zero_grad(set_to_none=True)
        out = model(data)
        torch.testing.assert_close(out.views['h'], s_first @ model.item_embedding.weight)
        model.loss(data, out, users, pos, neg)[0].backward()
        lin = learner.transforms['text'].weight
        assert (lin.grad is not None) == (batch == 0)
        assert (model.features['image'].grad is not None) == (batch == 0)
        assert model.item_embedding.weight.grad is not None
        opt.step()
    s_now = published_item_graph(dict(model.features), learner.transforms,
                                 learner.modal_weight, static, K, 0.9).detach()
    assert not torch.allclose(s_now, s_first)  # the first step moved the graph learner
    model.eval()  # evaluation rebuilds from the current parameters
    torch.testing.assert_close(model(data).views['h'], s_now @ model.item_embedding.weight)
    model.train()
    model.on_epoch_start(data, 2, torch.Generator())  # a new epoch rebuilds too
    torch.testing.assert_close(model(data).views['h'], s_now @ model.item_embedding.weight)


def test_trainer_trains_the_graph_learner_at_the_first_batch_of_each_epoch(tiny_data):
    torch.manual_seed(0)
    model = LATTICE(tiny_data, LATTICE.Config(embedding_dim=8))
    seen, graphs = [], []
    model.item_graph_learner.transforms['image'].weight.register_post_accumulate_grad_hook(
        lambda p: seen.append('lin'))
    model.item_embedding.weight.register_post_accumulate_grad_hook(lambda p: seen.append('id'))
    original = model.on_epoch_start

    def on_epoch_start(data, epoch, generator):
        seen.append('epoch')
        original(data, epoch, generator)

    def keep_training_graph(module, args, out):
        if module.training:
            graphs.append(module.item_adj)

    model.on_epoch_start = on_epoch_start
    model.register_forward_hook(keep_training_graph)
    train = TrainConfig(epochs=3, batch_size=128, lr=0.01, device='cpu', patience=None)
    trainer = Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=0)
    per_epoch = len(trainer.sampler)
    assert per_epoch >= 3
    trainer.fit()
    epochs = []
    for kind in seen:
        if kind == 'epoch':
            epochs.append([])
        else:
            epochs[-1].append(kind)
    assert len(epochs) == 3
    for events in epochs:  # Lin gets a gradient once, in the first batch's backward
        assert events.count('id') == per_epoch and events.count('lin') == 1
        assert 'lin' in events[:2]
    # one detached graph per epoch, shared by its batches; a new one, with new weights, after
    assert len(graphs) == 3 * per_epoch
    firsts = graphs[::per_epoch]
    for e, first in enumerate(firsts):
        assert all(g is first for g in graphs[e * per_epoch:(e + 1) * per_epoch])
    eye = torch.eye(tiny_data['item'].num_nodes)
    assert not torch.allclose(firsts[0] @ eye, firsts[1] @ eye)
    assert not torch.allclose(firsts[1] @ eye, firsts[2] @ eye)


def loss_history(data, seed=0):
    torch.manual_seed(seed)
    model = LATTICE(data, LATTICE.Config(embedding_dim=8))
    train = TrainConfig(epochs=3, batch_size=128, lr=0.01, device='cpu', patience=None)
    result = Trainer(model, data, train, EvalConfig(ks=[20]), seed=seed).fit()
    return [(r['loss'], r['valid_recall@20']) for r in result.history]


def test_same_seed_same_loss_history_bitwise(tiny_data):
    assert loss_history(tiny_data) == loss_history(tiny_data)


def test_trains_on_the_tiny_preset_and_beats_popularity(tiny_data):
    torch.manual_seed(0)
    model = LATTICE(tiny_data, LATTICE.Config(embedding_dim=32, reg_weight=1e-4))
    train = TrainConfig(epochs=8, batch_size=64, lr=0.01, device='cpu', patience=None)
    result = Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=0).fit()
    losses = [r['loss'] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.valid['recall@20'] > popularity_recall(tiny_data, 20, 'valid')


def test_missing_knn_graph_and_bad_config_are_one_line_errors():
    data = tiny_data(modalities=('text', 'image'))
    del data['item', 'similar_text', 'item']
    with pytest.raises(DataError, match="LATTICE needs the \\('item', 'similar_text', 'item'\\)"):
        LATTICE(data)
    with pytest.raises(ConfigError, match=r'model.lambda_coeff must be in \[0, 1\]'):
        LATTICE.Config(lambda_coeff=1.5)
    with pytest.raises(ConfigError, match='model.knn_k must be > 0'):
        LATTICE.Config(knn_k=0)


def test_sampled_training_is_refused_with_the_reason(tiny_data):
    with pytest.raises(ConfigError, match='LATTICE cannot train on sampled subgraphs '
                                          r'\(its learned item-item graph is a top-k over all'):
        Trainer(LATTICE(tiny_data), tiny_data, TrainConfig(mode='sampled', device='cpu'),
                EvalConfig(ks=[20]), seed=0)


def test_published_config_carries_the_spec_grid_and_compare_runs_it(tiny_mmrec_root, tmp_path):
    config = load_config(Path(__file__).resolve().parents[1] / 'configs' / 'baselines' /
                         'lattice.yaml')
    assert config.model_name == 'lattice'
    assert config.grid == {'model.reg_weight': [0.0, 1e-5, 1e-4, 1e-3],
                           'train.lr': [1e-4, 5e-4, 1e-3, 5e-3]}
    assert (config.train.lr_decay, config.train.lr_decay_every) == (0.96, 50)
    assert (config.model.knn_k, config.model.lambda_coeff, config.model.n_mm_layers) == (10, 0.9, 1)
    root, name = tiny_mmrec_root
    out = tmp_path / 'cmp'
    assert main(['compare', '--models', 'lattice', '--set', f'data.root={root}', '--set',
                 f'data.name={name}', '--set', 'train.batch_size=128', '--set',
                 'model.embedding_dim=8', '--set', 'eval.ks=[10,20]', '--budget', '1',
                 '--epochs', '1', '--seeds', '1', '--out', str(out), '--quiet']) == 0
    with open(out / 'comparison.csv', newline='') as f:
        (row, ) = [r for r in csv.DictReader(f) if r['model'] != 'popularity']
    assert (row['model'], row['status'], row['combinations'], row['grid_size']) == (
        'lattice', 'ok', '1', '16')
    assert 0 < float(row['test_recall@20']) <= 1
