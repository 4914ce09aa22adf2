"""The ``anchorrec-pyg`` command end to end on tiny generated data: train, evaluate, recommend,
resume, errors (exit 2, one line, no traceback), help; plus one run of the real console entry."""
import contextlib
import csv
import io
import json
import shutil
import subprocess

import pytest
import torch
import yaml

from anchorrec_pyg.cli import format_metrics, main
from anchorrec_pyg.data import MMRecDataset
from anchorrec_pyg.train.checkpoint import load_checkpoint, save_checkpoint
from anchorrec_pyg.train.trainer import Trainer

TINY = ['--set', 'data.name=tiny', '--set', 'train.epochs=3', '--set', 'train.batch_size=128',
        '--set', 'eval.ks=[5,10,20]', '--device', 'cpu']


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def table_value(text, split, label, column):
    """The number in the printed table's row ``label`` of block ``split``, column ``@K``."""
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith('@'))
    columns = header.split()
    start = lines.index(split)
    row = next(line for line in lines[start + 1:] if line.split()[0] == label)
    return float(row.split()[1 + columns.index(column)])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """AnchorRec trained by ``train`` on the generated ``tiny`` preset (data.root null, so the
    embedded-dataset path of the default command is the one exercised)."""
    out = tmp_path_factory.mktemp('cli') / 'run'
    code, stdout, stderr = run(['train', *TINY, '--out', str(out)])
    assert code == 0, stderr
    return out, stdout, stderr


def test_train_prints_table_and_writes_run_folder(trained):
    out, stdout, stderr = trained
    summary = json.loads((out / 'summary.json').read_text())
    assert 'anchorrec on tiny' in stdout and f'results: {out}' in stdout
    for split in ('valid', 'test'):
        for label, key in (('Recall', 'recall'), ('NDCG', 'ndcg'), ('Precision', 'precision'),
                           ('MAP', 'map'), ('HitRate', 'hit')):
            for k in (5, 10, 20):
                assert table_value(stdout, split, label, f'@{k}') == pytest.approx(
                    summary[split][f'{key}@{k}'], abs=5e-5)
                assert summary[split][f'{key}@{k}_std'] == 0.0
    assert summary['selected']['params'] == {}
    assert (out / 'history.csv').is_file() and (out / 'runs.csv').is_file()
    assert 'epoch 3/3 | loss' in stderr and 'valid recall@20' in stderr


def test_evaluate_reproduces_the_summary(trained):
    out, _, _ = trained
    summary = json.loads((out / 'summary.json').read_text())
    code, stdout, _ = run(['evaluate', str(out), '--quiet'])
    assert code == 0
    for split in ('valid', 'test'):
        assert table_value(stdout, split, 'NDCG', '@20') == pytest.approx(
            summary[split]['ndcg@20'], abs=5e-5)
    checkpoint = out / 'runs' / summary['selected']['best_run'] / 'checkpoint.pt'
    code, stdout, _ = run(['evaluate', str(checkpoint), '--split', 'test', '--quiet'])
    assert code == 0 and 'valid' not in stdout.split()
    assert table_value(stdout, 'test', 'Recall', '@10') == pytest.approx(
        summary['test']['recall@10'], abs=5e-5)


def test_recommend_excludes_training_items(trained, tmp_path, anchorrec_home):
    out, _, _ = trained
    root = anchorrec_home / 'datasets'
    data = MMRecDataset(root, 'tiny', log=False)[0]
    train = set(map(tuple, data['user', 'interacts', 'item'].edge_index.t().tolist()))
    code, stdout, _ = run(['recommend', str(out), '--users', '0', '3', '7', '--k', '5',
                           '--quiet'])
    assert code == 0
    lines = stdout.strip().splitlines()
    assert [line.split(':')[0] for line in lines] == ['user 0', 'user 3', 'user 7']
    for line in lines:
        user = int(line.split(':')[0].split()[1])
        items = [int(i) for i in line.split(':')[1].split()]
        assert len(items) == len(set(items)) == 5
        assert not any((user, i) in train for i in items)

    target = tmp_path / 'top.csv'
    code, stdout, _ = run(['recommend', str(out), '--users', '3', '--k', '4', '--output',
                           str(target), '--quiet'])
    assert code == 0 and 'wrote 4 recommendations' in stdout
    with open(target, newline='') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['rank']) for r in rows] == [1, 2, 3, 4]
    assert [int(r['item']) for r in rows] == [int(i) for i in lines[1].split(':')[1].split()[:4]]
    scores = [float(r['score']) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_recommend_never_lists_training_items_when_k_exceeds_the_candidates(
        trained, anchorrec_home):
    out, _, _ = trained
    data = MMRecDataset(anchorrec_home / 'datasets', 'tiny', log=False)[0]
    num_items = int(data['item'].num_nodes)
    train = {}
    for u, i in data['user', 'interacts', 'item'].edge_index.t().tolist():
        train.setdefault(u, set()).add(i)
    k = num_items + 5
    code, stdout, stderr = run(['recommend', str(out), '--users', '0', '3', '--k', str(k),
                                '--quiet'])
    assert code == 0
    for line, user in zip(stdout.strip().splitlines(), (0, 3)):
        items = [int(i) for i in line.split(':')[1].split()]
        assert sorted(items) == sorted(set(range(num_items)) - train[user])
    fewest = num_items - max(len(train[0]), len(train[3]))
    assert stderr == (f'note: --k {k} exceeds the candidate items of 2 of 2 users '
                      f'({num_items} items minus their training items; fewest: {fewest}): '
                      'their lists hold all their candidates, training items are never '
                      'listed\n')


def test_resume_of_a_finished_run(trained):
    out, stdout, _ = trained
    code, again, _ = run(['train', '--out', str(out), '--resume', '--quiet'])
    assert code == 0
    assert table_value(again, 'test', 'Recall', '@20') == table_value(stdout, 'test', 'Recall',
                                                                      '@20')


def _rewrite_checkpoint(path, edit):
    r"""Applies :obj:`edit` to the configuration stored in the checkpoint :obj:`path` and
    writes it back (with its SHA-256)."""
    state = {k: v for k, v in load_checkpoint(path).items() if k not in ('format', 'version')}
    edit(state['config'])
    save_checkpoint(path, state)


def test_resume_of_a_folder_written_before_a_key_existed(trained, tmp_path, monkeypatch):
    """A run folder whose config.yaml and checkpoint lack a key added later (train.mode, at its
    default) resumes and continues to the uninterrupted run's metrics; a genuinely different
    value is refused in one line naming the key, in the folder's config or its checkpoint."""
    out = tmp_path / 'run'
    train_epoch = Trainer._train_epoch

    def killed_at_epoch_2(self, epoch):
        if epoch == 2:
            raise RuntimeError('killed')
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, '_train_epoch', killed_at_epoch_2)
    with pytest.raises(RuntimeError, match='killed'):
        run(['train', *TINY, '--out', str(out)])
    monkeypatch.setattr(Trainer, '_train_epoch', train_epoch)
    (checkpoint, ) = out.glob('runs/*/checkpoint.pt')
    assert load_checkpoint(checkpoint)['epoch'] == 1
    for path in out.rglob('config.yaml'):
        raw = yaml.safe_load(path.read_text())
        assert raw['train'].pop('mode') == 'full'
        path.write_text(yaml.safe_dump(raw))
    _rewrite_checkpoint(checkpoint, lambda config: config['train'].pop('mode'))

    code, _, stderr = run(['train', '--out', str(out), '--resume', '--set', 'model.tau=0.5'])
    assert code == 2 and stderr == (
        f'anchorrec-pyg: error: {out / "config.yaml"}: the run being resumed has another '
        'configuration (model.tau: 0.25 != 0.5); resume without --config/--set or pass the '
        'same ones\n')
    _rewrite_checkpoint(checkpoint, lambda config: config['model'].update(tau=0.5))
    code, _, stderr = run(['train', '--out', str(out), '--resume', '--quiet'])
    assert code == 2 and stderr.count('\n') == 1
    assert 'written for another configuration (model.tau: 0.5 != 0.25)' in stderr
    _rewrite_checkpoint(checkpoint, lambda config: config['model'].update(tau=0.25))

    code, stdout, stderr = run(['train', '--out', str(out), '--resume'])
    assert code == 0, stderr
    assert 'resuming after epoch 1' in stderr and 'epoch 3/3 | loss' in stderr
    assert table_value(stdout, 'test', 'Recall', '@20') == table_value(trained[1], 'test',
                                                                       'Recall', '@20')


@pytest.mark.parametrize('args, message', [
    (['train', '--set', 'model.lamda_reg=0.1'],
     'unknown key model.lamda_reg (did you mean model.lambda_reg?)'),
    (['train', '--set', 'train.epochs=zero'], "train.epochs must be int, got 'zero'"),
    (['train', '--config', 'missing.yaml'], 'config file not found: missing.yaml'),
    (['train', '--resume'], '--resume needs --out DIR, the folder of the run to continue'),
    (['evaluate', 'no/such/run'], 'no such run folder or checkpoint: no/such/run'),
])
def test_user_errors_exit_2_with_one_line(args, message):
    code, stdout, stderr = run(args)
    assert code == 2
    assert stderr == f'anchorrec-pyg: error: {message}\n'


def test_hostile_checkpoint_and_bad_user_ids(trained, tmp_path):
    out, _, _ = trained
    code, _, stderr = run(['recommend', str(out), '--users', '100000'])
    assert code == 2 and stderr.startswith('anchorrec-pyg: error: --users: user id 100000 is')
    hostile = tmp_path / 'checkpoint.pt'
    torch.save({'x': Exploit()}, hostile)
    code, _, stderr = run(['evaluate', str(hostile)])
    assert code == 2 and 'refused to load' in stderr and stderr.count('\n') == 1
    assert not (tmp_path / 'pwned').exists()


class Exploit:
    def __reduce__(self):
        return (shutil.copy, ('/etc/hostname', 'pwned'))


@pytest.mark.parametrize('command', [[], ['train'], ['evaluate'], ['recommend']])
def test_help(command):
    with pytest.raises(SystemExit) as info:
        run([*command, '--help'])
    assert info.value.code == 0


def test_help_lists_examples_and_models(capsys):
    with pytest.raises(SystemExit):
        main(['train', '--help'])
    text = capsys.readouterr().out
    assert 'examples:' in text and 'anchorrec-pyg train --config' in text
    assert 'anchorrec' in text.split('models (model.name):')[1]


def test_console_entry_point(tmp_path):
    exe = shutil.which('anchorrec-pyg')
    if exe is None:
        pytest.skip('the package is not installed (pip install -e .)')
    out = tmp_path / 'run'
    proc = subprocess.run([exe, 'train', *TINY, '--set', 'train.epochs=1', '--set',
                           'train.num_threads=1', '--out', str(out), '--quiet'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''
    assert 'Recall' in proc.stdout and 'HitRate' in proc.stdout
    assert json.loads((out / 'summary.json').read_text())['test']['recall@20'] > 0


def test_table_with_std():
    metrics = {f'{m}@{k}{s}': (0.25 if s == '' else 0.0125)
               for m in ('recall', 'ndcg', 'precision', 'map', 'hit') for k in (10, 20)
               for s in ('', '_std')}
    text = format_metrics({'valid': metrics, 'test': metrics}, (10, 20), show_std=True)
    lines = text.splitlines()
    assert lines[0].split() == ['@10', '@20']
    assert lines[2].split() == ['Recall', '0.2500', '±', '0.0125', '0.2500', '±', '0.0125']
    assert lines[7] == 'test' and len(lines) == 13
    assert '±' not in format_metrics({'valid': metrics}, (10, 20))
