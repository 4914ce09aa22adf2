"""One training run: schedule, early stopping, best weights, NaN guard, hooks, checkpoints and
resume equivalence."""
import os
import pickle

import pytest
import torch

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.errors import CheckpointError
from anchorrec_pyg.models import LightGCN
from anchorrec_pyg.train.checkpoint import (
    best_weights_path,
    load_checkpoint,
    load_weights,
    save_weights,
)
from anchorrec_pyg.train.evaluator import evaluate
from anchorrec_pyg.train.trainer import NonFiniteLossError, Trainer, checkpoint_weights


def _trainer(data, seed=0, path=None, config=None, model_cls=LightGCN, **train):
    torch.manual_seed(seed)
    model = model_cls(data, model_cls.Config())
    train = TrainConfig(**{'epochs': 4, 'batch_size': 128, 'lr': 0.01, 'device': 'cpu', **train})
    return Trainer(model, data, train, EvalConfig(ks=[10, 20]), seed, checkpoint_path=path,
                   run_config=config or {'train': {'lr': train.lr}})


def test_lr_schedule_history_and_best_weights(tiny_data):
    trainer = _trainer(tiny_data, epochs=5, lr_decay=0.5, lr_decay_every=2)
    result = trainer.fit()
    lrs = [r['lr'] for r in result.history]
    assert lrs == pytest.approx([0.01 * 0.5**(e / 2) for e in range(5)])
    assert [r['epoch'] for r in result.history] == [1, 2, 3, 4, 5]
    for record in result.history:
        assert {'loss', 'bpr', 'reg', 'train_time_s', 'valid_recall@20'} <= set(record)
        assert record['loss'] == pytest.approx(record['bpr'] + record['reg'], rel=1e-5)
    scores = [r['valid_recall@20'] for r in result.history]
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert result.valid['recall@20'] == max(scores)
    # The model holds the best epoch's weights, and test was computed with them:
    assert evaluate(trainer.model, tiny_data, 'valid', ks=(10, 20)) == result.valid
    assert evaluate(trainer.model, tiny_data, 'test', ks=(10, 20)) == result.test


def test_early_stopping_at_first_non_improvement(tiny_data):
    result = _trainer(tiny_data, epochs=60, patience=1, lr=0.05).fit()
    scores = [r['valid_recall@20'] for r in result.history]
    first_bad = next(e for e in range(1, len(scores)) if scores[e] <= max(scores[:e]))
    assert result.stopped_early
    assert result.epochs_run == first_bad + 1 < 60


def test_eval_every(tiny_data):
    result = _trainer(tiny_data, epochs=5, eval_every=2).fit()
    evaluated = [r['epoch'] for r in result.history if 'valid_recall@20' in r]
    assert evaluated == [2, 4, 5]


def test_non_finite_loss_names_epoch_batch_and_term(tiny_data, monkeypatch):
    calls = {'n': 0}
    original = LightGCN.loss

    def loss(self, *args, **kwargs):
        total, terms = original(self, *args, **kwargs)
        calls['n'] += 1
        if calls['n'] == 3:  # two batches per epoch: the first batch of epoch 2
            terms = {**terms, 'bpr': torch.tensor(float('nan'))}
            total = total + terms['bpr']
        return total, terms

    monkeypatch.setattr(LightGCN, 'loss', loss)
    trainer = _trainer(tiny_data, batch_size=300)
    assert len(trainer.sampler) == 2
    with pytest.raises(NonFiniteLossError, match=r'epoch 2, batch 1/2: bpr=nan'):
        trainer.fit()


class PositivesOnly(LightGCN):
    needs_negatives = False

    def __init__(self, data, config):
        super().__init__(data, config)
        self.epochs_seen = []

    def on_epoch_start(self, data, epoch, generator):
        assert isinstance(generator, torch.Generator)
        self.epochs_seen.append(epoch)

    def loss(self, data, out, users, pos, neg, batch_size=None):
        assert neg is None
        score = (out.user[users] * out.item[pos]).sum(-1)
        total = -torch.nn.functional.logsigmoid(score).mean()
        return total, {'pos': total.detach()}


def test_hooks_positive_pairs_and_epoch_start(tiny_data):
    trainer = _trainer(tiny_data, epochs=3, model_cls=PositivesOnly)
    result = trainer.fit()
    assert trainer.model.epochs_seen == [1, 2, 3]
    assert 'pos' in result.history[0]


def test_resume_reaches_the_same_final_metrics(tiny_data, tmp_path, monkeypatch):
    config = {'train': {'lr': 0.01}, 'out': 'a'}
    full = _trainer(tiny_data, seed=3, path=tmp_path / 'full.pt', config=config).fit()

    path = tmp_path / 'killed.pt'
    original = Trainer._save_checkpoint
    saves = {'n': 0}

    def save_then_die(self, result=None):
        original(self, result)
        saves['n'] += 1
        if saves['n'] == 2:  # after epoch 2's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, '_save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_data, seed=3, path=path, config=config).fit()
    monkeypatch.setattr(Trainer, '_save_checkpoint', original)
    assert load_checkpoint(path)['epoch'] == 2

    # A fresh process would build a fresh model and trainer (different global RNG state):
    torch.manual_seed(12345)
    resumed_trainer = _trainer(tiny_data, seed=3, path=path, config={**config, 'out': 'b'})
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.valid == full.valid
    assert resumed.test == full.test
    assert resumed.best_epoch == full.best_epoch
    assert [r['loss'] for r in resumed.history] == [r['loss'] for r in full.history]
    full_weights = load_checkpoint(tmp_path / 'full.pt')['model']
    for key, value in load_checkpoint(path)['model'].items():
        assert torch.equal(value, full_weights[key]), key
    # Resuming a finished run returns its result without training:
    again = _trainer(tiny_data, seed=3, path=path, config=config).fit(resume=True)
    assert again.test == full.test and again.epochs_run == full.epochs_run


def test_checkpoint_contents_load_with_weights_only(tiny_data, tmp_path):
    path = tmp_path / 'run.pt'
    trainer = _trainer(tiny_data, path=path, epochs=3, checkpoint_every=1)
    original = trainer._save_checkpoint
    partial = {}

    def spy(result=None):
        original(result)
        if result is None and not partial:
            partial.update(torch.load(path, weights_only=True))

    trainer._save_checkpoint = spy
    trainer.fit()
    assert partial['epoch'] == 1 and partial['finished'] is False
    assert partial['rng']['generator'].dtype == torch.uint8
    assert partial['rng']['torch'].dtype == torch.uint8
    assert {'optimizer', 'scheduler', 'best_model', 'history'} <= set(partial)
    assert partial['best_model'] is None  # the best weights live beside the checkpoint
    state = torch.load(path, weights_only=True)
    assert state['finished'] is True and state['result']['best_epoch'] >= 1
    assert set(checkpoint_weights(state)) == set(trainer.model.state_dict())
    # no temporary or best-weights file left; the checkpoint's SHA-256 beside it
    assert sorted(os.listdir(tmp_path)) == ['run.pt', 'run.pt.sha256']


def test_best_weights_beside_the_checkpoint_equal_the_in_memory_copy(tiny_data, tmp_path):
    """With a checkpoint the best weights are written to run.best.pt instead of copied in
    memory; the run's results and a partial checkpoint's evaluation weights are the same."""
    path = tmp_path / 'run.pt'
    in_memory = _trainer(tiny_data, epochs=4).fit()
    on_disk = _trainer(tiny_data, path=path, epochs=4)
    seen = {}
    original = on_disk._save_checkpoint

    def spy(result=None):
        original(result)
        if result is None and on_disk.epoch == 2:
            assert on_disk.best_weights is None
            state = load_checkpoint(path)
            weights = checkpoint_weights(state, path)
            expected = load_weights(best_weights_path(path), state['best']['epoch'])
            seen['ok'] = all(torch.equal(weights[k], expected[k]) for k in expected)
            with pytest.raises(CheckpointError, match='epoch'):
                load_weights(best_weights_path(path), state['best']['epoch'] + 7)
            with pytest.raises(CheckpointError, match='checkpoint path'):
                checkpoint_weights(state)  # never the latest weights in their place

    on_disk._save_checkpoint = spy
    result = on_disk.fit()
    assert seen == {'ok': True}
    assert (result.best_epoch, result.valid, result.test) == (
        in_memory.best_epoch, in_memory.valid, in_memory.test)
    assert not best_weights_path(path).exists()


def test_resume_with_other_config_is_refused(tiny_data, tmp_path):
    path = tmp_path / 'run.pt'
    _trainer(tiny_data, path=path, epochs=1).fit()
    with pytest.raises(CheckpointError, match=r'another configuration \(train.lr: 0.01 != 0.02'):
        _trainer(tiny_data, path=path, epochs=1, config={'train': {'lr': 0.02}}).fit(resume=True)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker, ))


@pytest.mark.parametrize('writer', ['torch', 'pickle'])
def test_hostile_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker = str(tmp_path / 'pwned')
    path = tmp_path / 'checkpoint.pt'
    payload = {'format': 'anchorrec-pyg/checkpoint', 'model': Payload(marker)}
    with open(path, 'wb') as f:
        if writer == 'torch':
            torch.save(payload, f)
        else:
            pickle.dump(payload, f)
    assert not os.path.exists(marker)
    with pytest.raises(CheckpointError, match='refused to load.*(GLOBAL posix.mkdir|Unsupported)'):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match='refused to load.*(GLOBAL posix.mkdir|Unsupported)'):
        load_weights(path, 1)  # the best-weights file beside a checkpoint: the same loader
    assert not os.path.exists(marker)


def test_corrupt_or_foreign_checkpoint(tmp_path):
    path = tmp_path / 'x.pt'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='refused to load'):
        load_checkpoint(path)
    torch.save({'weights': torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match='not an anchorrec-pyg checkpoint'):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_checkpoint(tmp_path / 'missing.pt')


def test_corrupt_best_weights_file_is_refused(tmp_path):
    path = tmp_path / 'run.best.pt'
    weights = {'w': torch.arange(256, dtype=torch.float32)}
    save_weights(path, weights, epoch=3)
    assert torch.equal(load_weights(path, 3)['w'], weights['w'])
    raw = bytearray(path.read_bytes())
    raw[raw.find(weights['w'].numpy().tobytes()) + 517] ^= 0x08
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r'run.best.pt: corrupt weights file \(its SHA-256 '
                       r'differs from the one recorded in run.best.pt.sha256\); delete it'):
        load_weights(path, 3)
