"""Sampled mode with dense updates: the node tables' gradients on a subgraph's rows are written
into kept table-sized buffers (row_gradient_buffers) instead of a fresh table of zeros per step;
training is bit for bit the same, and no row of an earlier step stays in a buffer."""
import copy

import pytest
import torch

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.models import AnchorRec, VBPR, row_gradient_buffers
from anchorrec_pyg.nn.feature_grad import GradBuffer
from anchorrec_pyg.train import Trainer
from anchorrec_pyg.train.batches import SampledBatches
from anchorrec_pyg.train.optim import RunOptimizer
from anchorrec_pyg.train.sampler import TripletSampler

CPU = torch.device('cpu')
BATCH = 16


def _subgraphs(data, model, count):
    triplets = TripletSampler(data['user', 'interacts', 'item'].edge_index,
                              int(data['item'].num_nodes), batch_size=BATCH)
    hops = model.sampled_hops or 1
    batches = SampledBatches(data, triplets, [2] * hops, seed=0, views=model.sampled_views,
                             features=model.sampled_features)
    epoch = batches.epoch(torch.Generator().manual_seed(0), 1)
    return [next(epoch) for _ in range(count)]


@pytest.mark.parametrize('cls', [AnchorRec, VBPR])
def test_kept_row_buffers_train_bit_for_bit_as_fresh_gradients(sparse_knn_data, cls):
    torch.manual_seed(0)
    fresh = cls(sparse_knn_data, cls.Config(embedding_dim=16))
    kept = copy.deepcopy(fresh)
    optimizers = [RunOptimizer(m, 0.01, 1.0, 50.0, CPU) for m in (fresh, kept)]
    tables = kept.node_tables()
    assert {'user_embedding.weight', 'item_embedding.weight'} <= set(tables)
    buffers = {name: GradBuffer() for name in tables}
    previous = {}
    left_rows = 0
    for sub, users, pos, neg in _subgraphs(sparse_knn_data, fresh, 4):
        losses = []
        for model, optimizer, on in zip((fresh, kept), optimizers, (False, True)):
            optimizer.zero_grad()
            with row_gradient_buffers([(tables[n], buffers[n]) for n in tables] if on else []):
                total, _ = model.loss(sub, model(sub), users, pos, neg, batch_size=BATCH)
            total.backward()
            losses.append(total.detach())
        assert torch.equal(losses[0], losses[1])
        reference = dict(fresh.named_parameters())
        for name, param in kept.named_parameters():
            if param.grad is None:
                assert reference[name].grad is None, name
                continue
            assert torch.equal(param.grad, reference[name].grad), name
            if name in tables:  # the kept buffer is the gradient, zero off this step's rows
                assert buffers[name].held_by(param), name
                rows = set((param.grad != 0).any(dim=1).nonzero().view(-1).tolist())
                left_rows += len(previous.get(name, set()) - rows)
                previous[name] = rows
        for optimizer in optimizers:
            optimizer.step()
        for name, param in kept.named_parameters():
            assert torch.equal(param, dict(fresh.named_parameters())[name]), name
    assert left_rows > 0  # later steps left rows of earlier ones: a stale row would show


def test_trainer_keeps_row_buffers_in_sampled_dense_mode_only(tiny_data):
    def fit(keep):
        torch.manual_seed(0)
        model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8))
        train = TrainConfig(epochs=2, batch_size=128, lr=0.01, device='cpu', mode='sampled',
                            fanout=[5, 3])
        trainer = Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=3)
        assert [id(t) for t, _ in trainer.row_buffers] == \
            [id(t) for t in model.node_tables().values()]
        if not keep:
            trainer.row_buffers = []
        return model, trainer, trainer.fit()

    kept_model, trainer, kept = fit(True)
    fresh_model, _, fresh = fit(False)
    assert all(buffer.tensor is not None for _, buffer in trainer.row_buffers)
    assert [r['loss'] for r in kept.history] == [r['loss'] for r in fresh.history]
    assert kept.valid == fresh.valid and kept.test == fresh.test
    for key, value in kept_model.state_dict().items():
        assert torch.equal(value, fresh_model.state_dict()[key]), key
    for train in (TrainConfig(device='cpu'),
                  TrainConfig(device='cpu', mode='sampled', sparse_updates=True)):
        assert Trainer(kept_model, tiny_data, train, EvalConfig(ks=[20]),
                       seed=0).row_buffers == []
