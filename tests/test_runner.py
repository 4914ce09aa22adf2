"""The experiment runner: grid x seeds, selection on validation only, run folder files."""
import csv
import json

import pytest

from anchorrec_pyg.config import config_from_dict, load_config
from anchorrec_pyg.errors import CheckpointError, ConfigError
from anchorrec_pyg.train.runner import run_experiment
from anchorrec_pyg.train.trainer import NonFiniteLossError, Trainer, TrainResult


def _config(tiny_mmrec_root, **extra):
    root, name = tiny_mmrec_root
    raw = {
        'data': {'root': root, 'name': name, 'modalities': ['text']},
        'model': {'name': 'lightgcn'},
        'train': {'epochs': 3, 'batch_size': 128, 'lr': 0.01, 'device': 'cpu'},
        'eval': {'ks': [10, 20]},
        **extra,
    }
    return config_from_dict(raw)


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_grid_seeds_and_run_folder(tiny_mmrec_root, tmp_path):
    config = _config(tiny_mmrec_root, grid={'model.n_layers': [1, 2]}, seeds=[1, 2])
    summary = run_experiment(config, out=tmp_path / 'out')
    out = tmp_path / 'out'
    assert json.loads((out / 'summary.json').read_text()) == summary
    assert load_config(out / 'config.yaml').grid == {'model.n_layers': [1, 2]}

    runs = _rows(out / 'runs.csv')
    assert [(r['run_id'], r['seed'], r['model.n_layers']) for r in runs] == [
        ('c000-s1', '1', '1'), ('c000-s2', '2', '1'), ('c001-s1', '1', '2'),
        ('c001-s2', '2', '2')]
    history = _rows(out / 'history.csv')
    assert {r['run_id'] for r in history} == {r['run_id'] for r in runs}
    assert len(history) == sum(int(r['epochs_run']) for r in runs)
    for run in runs:
        folder = out / 'runs' / run['run_id']
        assert {'checkpoint.pt', 'history.csv', 'metrics.json', 'config.yaml'} <= {
            p.name for p in folder.iterdir()}
        metrics = json.loads((folder / 'metrics.json').read_text())
        assert metrics['test']['recall@20'] == pytest.approx(float(run['test_recall@20']))

    chosen = summary['selected']
    means = {c: sum(float(r['valid_recall@20']) for r in runs if r['combination'] == c) / 2
             for c in ('c000', 'c001')}
    assert chosen['combination'] == max(means, key=means.get)
    assert chosen['params'] == {'model.n_layers': 1 if chosen['combination'] == 'c000' else 2}
    chosen_runs = [r for r in runs if r['combination'] == chosen['combination']]
    for split in ('valid', 'test'):
        values = [float(r[f'{split}_ndcg@10']) for r in chosen_runs]
        mean = sum(values) / 2
        assert summary[split]['ndcg@10'] == pytest.approx(mean)
        assert summary[split]['ndcg@10_std'] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert set(summary['test']) == {f'{m}@{k}{s}' for m in ('recall', 'ndcg', 'precision',
                                                            'map', 'hit')
                                    for k in (10, 20) for s in ('', '_std')}


def test_selection_uses_validation_not_test(tiny_mmrec_root, tmp_path, monkeypatch):
    # lr 0.1 is best on validation but worst on test; lr 0.2 the reverse.
    outcome = {0.1: (0.5, 0.1), 0.2: (0.3, 0.9)}

    def fit(self, resume=False):
        valid, test = outcome[self.train_cfg.lr]
        metrics = lambda v: {f'{m}@{k}': v for m in ('recall', 'ndcg', 'precision', 'map', 'hit')  # noqa
                             for k in (10, 20)}
        return TrainResult(best_epoch=1, epochs_run=1, valid=metrics(valid), test=metrics(test),
                           stopped_early=False, history=[{'epoch': 1, 'loss': 0.5}])

    monkeypatch.setattr(Trainer, 'fit', fit)
    summary = run_experiment(_config(tiny_mmrec_root, grid={'train.lr': [0.2, 0.1]}),
                             out=tmp_path / 'out')
    assert summary['selected']['params'] == {'train.lr': 0.1}
    assert summary['valid']['recall@20'] == 0.5
    assert summary['test']['recall@20'] == 0.1


def test_diverged_combination_is_skipped(tiny_mmrec_root, tmp_path, monkeypatch):
    original = Trainer.fit

    def fit(self, resume=False):
        if self.train_cfg.lr == 0.5:
            raise NonFiniteLossError('non-finite loss at epoch 1, batch 1/1: bpr=nan')
        return original(self, resume)

    monkeypatch.setattr(Trainer, 'fit', fit)
    summary = run_experiment(_config(tiny_mmrec_root, grid={'train.lr': [0.5, 0.01]}),
                             out=tmp_path / 'out')
    assert summary['selected']['params'] == {'train.lr': 0.01}
    assert [c['status'] for c in summary['combinations']] == ['diverged', 'ok']
    assert _rows(tmp_path / 'out' / 'runs.csv')[0]['status'] == 'diverged'


def test_output_folder_rules_and_resume(tiny_mmrec_root, tmp_path, monkeypatch):
    config = _config(tiny_mmrec_root)
    out = tmp_path / 'out'
    first = run_experiment(config, out=out)
    with pytest.raises(ConfigError, match='is not empty; pass --resume'):
        run_experiment(config, out=out)
    with pytest.raises(CheckpointError, match='nothing to resume'):
        run_experiment(config, out=tmp_path / 'empty', resume=True)
    changed = _config(tiny_mmrec_root, train={'epochs': 4, 'batch_size': 128, 'device': 'cpu'})
    with pytest.raises(ConfigError, match='another configuration'):
        run_experiment(changed, out=out, resume=True)

    # Resuming a finished experiment trains nothing and gives the same summary:
    monkeypatch.setattr(Trainer, '_train_epoch', lambda *a: pytest.fail('retrained'))
    again = run_experiment(config, out=out, resume=True)
    assert again['test'] == first['test'] and again['valid'] == first['valid']
