"""Data-parallel training (train --nproc N, torch.distributed on gloo over loopback): two
processes give the losses and metrics of one process on the same global batches, in full and
sampled mode; bad input and a killed process end with one line, and --resume continues."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from anchorrec_pyg.cli import main
from anchorrec_pyg.data import MMRecDataset, generate_synthetic


@pytest.fixture(scope='module')
def even_root(tmp_path_factory):
    """The tiny preset drawn with seed 3: 448 training interactions, so batches of 64 split
    evenly over two processes."""
    root = tmp_path_factory.mktemp('ddp')
    generate_synthetic(root, name='tiny', preset='tiny', seed=3)
    data = MMRecDataset(root, 'tiny', log=False)[0]
    assert data['user', 'interacts', 'item'].edge_index.size(1) % 64 == 0
    return str(root)


def _args(root, *extra):
    sets = [f'data.root={root}', 'data.name=tiny', 'model.name=lightgcn', 'train.device=cpu',
            'train.batch_size=64', *extra]
    return [arg for s in sets for arg in ('--set', s)] + ['--quiet']


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, '-m', 'anchorrec_pyg.cli', *args],
                          capture_output=True, text=True, timeout=900, **kwargs)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_processes_match_one_process(even_root, tmp_path):
    args = _args(even_root, 'train.epochs=2', 'grid.train.mode=[full,sampled]',
                 'train.fanout=[-1,-1]')
    assert main(['train', *args, '--out', str(tmp_path / 'one')]) == 0
    proc = _cli('train', '--nproc', '2', *args, '--out', str(tmp_path / 'two'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _rows(tmp_path / 'one' / 'history.csv'), _rows(tmp_path / 'two' / 'history.csv')
    assert [r['run_id'] for r in one] == [r['run_id'] for r in two] and len(one) == 4
    for a, b in zip(one, two):
        for key in ('loss', 'bpr', 'reg', 'valid_recall@20', 'valid_ndcg@20'):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), key
    for a, b in zip(_rows(tmp_path / 'one' / 'runs.csv'), _rows(tmp_path / 'two' / 'runs.csv')):
        assert float(b['test_recall@20']) == pytest.approx(float(a['test_recall@20']), abs=1e-6)
    text = (tmp_path / 'two' / 'config.yaml').read_text()
    assert text.startswith('# data-parallel: 2 processes, global batch 64 (32 rows per '
                           'process), learning rate 0.005 as for one process (no scaling rule')
    config = yaml.safe_load(text)
    assert config['train']['nproc'] == 2 and config['train']['batch_size'] == 64
    # process 1 wrote nothing into the run folder: one checkpoint per run, no stray files
    assert sorted(p.name for p in (tmp_path / 'two' / 'runs').iterdir()) == [
        'c000-s999', 'c001-s999']


def test_two_processes_match_one_process_with_row_sparse_and_dense_updates(even_root, tmp_path):
    """VBPR in sampled mode: its ID tables take RowAdam's row-sparse updates (their sparse
    gradients all-reduced outside DDP), its projection Adam's (through DDP). Its L2 term is
    switched off: MMRec's EmbLoss is a norm of the batch's whole matrix, not a sum over rows,
    so the processes' shares do not add up to it."""
    args = _args(even_root, 'train.epochs=2', 'train.mode=sampled', 'train.fanout=[-1,-1]',
                 'model.name=vbpr', 'model.reg_weight=0', 'train.sparse_updates=true')
    assert main(['train', *args, '--out', str(tmp_path / 'one')]) == 0
    proc = _cli('train', '--nproc', '2', *args, '--out', str(tmp_path / 'two'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _rows(tmp_path / 'one' / 'history.csv'), _rows(tmp_path / 'two' / 'history.csv')
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ('loss', 'bpr', 'valid_recall@20', 'valid_ndcg@20'):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-6), key


def test_nproc_zero_is_one_line(capsys):
    assert main(['train', '--nproc', '0']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['anchorrec-pyg: error: --nproc must be >= 1 (got 0)']


def test_port_taken_is_one_line(even_root, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(['train', '--nproc', '2', '--master-port', str(port), *_args(even_root),
                     '--out', str(tmp_path / 'run')])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'--master-port {port} is already in use' in err[0]
    assert not (tmp_path / 'run').exists()


def _descendants(pid):
    children = {}
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _rank_of(pid):
    try:
        env = (Path('/proc') / str(pid) / 'environ').read_bytes().split(b'\0')
    except OSError:
        return None
    for item in env:
        if item.startswith(b'RANK='):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='finds the worker processes in /proc')
def test_killed_process_ends_the_job_and_resume_continues(even_root, tmp_path):
    out = tmp_path / 'run'
    args = ['train', '--nproc', '2', *_args(even_root, 'train.epochs=40', 'train.patience=null'),
            '--out', str(out)]
    proc = subprocess.Popen([sys.executable, '-m', 'anchorrec_pyg.cli', *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / 'runs' / 'c000-s999' / 'checkpoint.pt'
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = [p for p in _descendants(proc.pid) if _rank_of(p) == 1]
    assert victims and proc.poll() is None
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith('anchorrec-pyg: error: process 1 of 2 was killed by SIGKILL')
    assert all(line.startswith('anchorrec-pyg: error: ') for line in lines), stderr[-3000:]
    assert not (out / 'summary.json').exists()

    resumed = _cli(*args, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = _rows(out / 'runs' / 'c000-s999' / 'history.csv')
    assert [int(r['epoch']) for r in history] == list(range(1, 41))
