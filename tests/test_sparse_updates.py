"""Row-sparse updates in sampled mode (train.sparse_updates): the node tables get sparse
gradients holding the subgraph's rows, RowAdam (lazy Adam) updates those rows and Adam the
other parameters; against dense gradients and dense Adam on the same subgraph."""
import copy

import pytest
import torch

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.errors import AnchorRecError, ConfigError
from anchorrec_pyg.models import AnchorRec, LightGCN, row_sparse_gradients
from anchorrec_pyg.models.base import view_input_rows
from anchorrec_pyg.train import Trainer
from anchorrec_pyg.train.batches import SampledBatches
from anchorrec_pyg.train.checkpoint import load_checkpoint
from anchorrec_pyg.train.optim import RunOptimizer
from anchorrec_pyg.train.sampler import TripletSampler

CPU = torch.device('cpu')
LR, EPS = 0.01, 1e-8  # Adam's and RowAdam's default eps


def _subgraphs(data, count):
    triplets = TripletSampler(data['user', 'interacts', 'item'].edge_index,
                              int(data['item'].num_nodes), batch_size=8)
    views = AnchorRec(data, AnchorRec.Config(embedding_dim=16)).sampled_views
    batches = SampledBatches(data, triplets, [2, 1], seed=0, views=views)
    epoch = batches.epoch(torch.Generator().manual_seed(0), 1)
    return [next(epoch) for _ in range(count)]


def _step(model, optimizer, batch, sparse):
    sub, users, pos, neg = batch
    optimizer.zero_grad()
    with row_sparse_gradients(model.node_tables().values() if sparse else ()):
        total, _ = model.loss(sub, model(sub), users, pos, neg, batch_size=8)
    total.backward()
    optimizer.step()


def _pair(data):
    torch.manual_seed(0)
    dense = AnchorRec(data, AnchorRec.Config(embedding_dim=16))
    sparse = copy.deepcopy(dense)
    return (dense, RunOptimizer(dense, LR, 1.0, 50.0, CPU),
            sparse, RunOptimizer(sparse, LR, 1.0, 50.0, CPU, sparse.node_tables()))


def _node_type(name):
    return 'user' if name.startswith('user') else 'item'


def test_sparse_gradient_holds_the_dense_gradient_rows(tiny_data):
    dense, _, sparse, _ = _pair(tiny_data)
    (sub, users, pos, neg), = _subgraphs(tiny_data, 1)
    for model, on in ((dense, False), (sparse, True)):
        with row_sparse_gradients(model.node_tables().values() if on else ()):
            total, _ = model.loss(sub, model(sub), users, pos, neg, batch_size=8)
        total.backward()
    tables = sparse.node_tables()
    assert set(tables) == {'user_embedding.weight', 'item_embedding.weight', 'features.image',
                           'features.text', 'features.mm'}
    for name, table in tables.items():
        reference = dict(dense.named_parameters())[name].grad
        if table.grad is None:  # a table the configuration does not read
            assert reference is None, name
            continue
        grad = table.grad.coalesce()
        assert grad.is_sparse and reference.layout == torch.strided
        n_id = sub[_node_type(name)].n_id
        if name.startswith('features.'):  # the view inputs: the sources of its kNN edges
            n_id = n_id[view_input_rows(sub, name.split('.')[1])]
        assert torch.equal(grad.indices()[0], n_id.sort().values), name
        assert torch.equal(grad.to_dense(), reference), name
    for name, param in sparse.named_parameters():
        if name not in tables and param.grad is not None:
            assert torch.equal(param.grad, dict(dense.named_parameters())[name].grad), name


def test_first_step_lazy_adam_equals_adam_on_the_rows_then_leaves_absent_rows(tiny_data):
    dense, dense_opt, sparse, sparse_opt = _pair(tiny_data)
    initial = {k: v.detach().clone() for k, v in sparse.named_parameters()}
    first, second = _subgraphs(tiny_data, 2)
    _step(dense, dense_opt, first, sparse=False)
    _step(sparse, sparse_opt, first, sparse=True)
    tables = sparse.node_tables()
    after_dense = dict(dense.named_parameters())
    moved = compared = 0
    for name, param in sparse.named_parameters():
        if name not in tables:  # Adam over the same dense gradients
            assert torch.equal(param, after_dense[name]), name
            continue
        if param.grad is None:
            continue
        n_id = first[0][_node_type(name)].n_id
        inside = torch.zeros(param.size(0), dtype=torch.bool)
        inside[n_id] = True
        # step 1 from the same gradient g: Adam moves by lr g / (|g| + eps), RowAdam by
        # lr g / (|g| + eps / sqrt(1 - beta2)) (eps enters before its bias correction)
        g = after_dense[name].grad[inside]
        for moved_to, eps in ((after_dense[name], EPS), (param, EPS / 0.001**0.5)):
            torch.testing.assert_close(moved_to[inside],
                                       initial[name][inside] - LR * g / (g.abs() + eps))
        large = g.abs() > 1e-4  # where eps is negligible the two updates agree
        compared += int(large.sum())
        start = initial[name][inside][large]
        torch.testing.assert_close(param[inside][large] - start,
                                   after_dense[name][inside][large] - start, rtol=4e-3, atol=0)
        assert torch.equal(param[~inside], initial[name][~inside]), name
        assert torch.equal(after_dense[name][~inside], initial[name][~inside]), name
        moved += int((param[inside] != initial[name][inside]).any(dim=1).sum())
    assert moved > 0 and compared > 0

    # step 2, lazy: a row of step 1's subgraph that step 2's does not hold stays where it is
    # under RowAdam, while Adam's decayed first moment still moves it
    user_rows = sparse.user_embedding.weight.detach().clone()
    dense_rows = dense.user_embedding.weight.detach().clone()
    _step(dense, dense_opt, second, sparse=False)
    _step(sparse, sparse_opt, second, sparse=True)
    left = torch.tensor(sorted(set(first[0]['user'].n_id.tolist()) -
                               set(second[0]['user'].n_id.tolist())))
    assert left.numel() > 0
    assert torch.equal(sparse.user_embedding.weight[left], user_rows[left])
    assert not torch.equal(dense.user_embedding.weight[left], dense_rows[left])


def test_sparse_updates_default_and_refusals():
    assert not TrainConfig(mode='sampled').sparse_updates
    with pytest.raises(ConfigError, match=r'^train.sparse_updates needs train.mode=sampled'):
        TrainConfig(mode='full', sparse_updates=True)


def test_trainer_optimizers_by_mode(tiny_data):
    model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8))
    full = Trainer(model, tiny_data, TrainConfig(device='cpu'), EvalConfig(ks=[20]), seed=0)
    assert full.optimizer.sparse is None
    assert len(full.optimizer.dense.param_groups[0]['params']) == len(list(model.parameters()))
    assert Trainer(model, tiny_data, TrainConfig(device='cpu', mode='sampled'),
                   EvalConfig(ks=[20]), seed=0).optimizer.sparse is None
    sampled = Trainer(model, tiny_data,
                      TrainConfig(device='cpu', mode='sampled', sparse_updates=True),
                      EvalConfig(ks=[20]), seed=0)
    tables = model.node_tables()
    assert sampled.optimizer.sparse.param_groups[0]['params'] == list(tables.values())
    assert len(sampled.optimizer.dense.param_groups[0]['params']) == \
        len(list(model.parameters())) - len(tables)


class ReadsTableWhole(LightGCN):
    def loss(self, data, out, users, pos, neg, batch_size=None):
        total, terms = super().loss(data, out, users, pos, neg, batch_size)
        return total + 0.0 * self.user_embedding.weight.sum(), terms


def test_a_table_read_whole_is_refused_in_one_line(tiny_data):
    model = ReadsTableWhole(tiny_data, LightGCN.Config())
    trainer = Trainer(model, tiny_data, TrainConfig(device='cpu', mode='sampled', epochs=1,
                                                    sparse_updates=True),
                      EvalConfig(ks=[20]), seed=0)
    with pytest.raises(AnchorRecError, match=r'^train.sparse_updates: the table '
                       r'user_embedding.weight got a dense gradient .*sparse_updates=false$'):
        trainer.fit()


def test_resume_with_sparse_updates_reaches_the_same_final_metrics(tiny_data, tmp_path,
                                                                   monkeypatch):
    def trainer(path):
        torch.manual_seed(3)
        model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8))
        train = TrainConfig(epochs=3, batch_size=128, lr=0.01, device='cpu', mode='sampled',
                            fanout=[5, 3], sparse_updates=True)
        return Trainer(model, tiny_data, train, EvalConfig(ks=[20]), 3, checkpoint_path=path,
                       run_config={'train': {'mode': 'sampled'}})

    whole = trainer(tmp_path / 'whole.pt').fit()
    original = Trainer._save_checkpoint

    def save_then_die(self, result=None):
        original(self, result)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, '_save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / 'killed.pt').fit()
    monkeypatch.setattr(Trainer, '_save_checkpoint', original)
    state = load_checkpoint(tmp_path / 'killed.pt')  # weights_only loading
    assert state['epoch'] == 1 and state['sparse_optimizer']['state']
    torch.manual_seed(12345)
    resumed = trainer(tmp_path / 'killed.pt').fit(resume=True)
    assert [r['loss'] for r in resumed.history] == [r['loss'] for r in whole.history]
    assert resumed.valid == whole.valid and resumed.test == whole.test
