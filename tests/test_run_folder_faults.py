"""Run folders, checkpoints and configs under faults, end to end through the command line
(issue 12): a failed run leaves nothing in the way of its rerun, one process per folder,
corruption refused, user mistakes as one line with exit 2, file modes from the umask."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from test_cli import TINY, run

from anchorrec_pyg.train.trainer import NonFiniteLossError, Trainer

ONE_EPOCH = [*TINY, '--set', 'train.epochs=2', '--quiet']


def one_line_error(code: int, stderr: str, *parts: str) -> None:
    assert code == 2, stderr
    assert stderr.startswith('anchorrec-pyg: error: ') and stderr.count('\n') == 1, stderr
    assert 'Traceback' not in stderr
    for part in parts:
        assert part in stderr, stderr


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp('faults') / 'run'
    code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(out)])
    assert code == 0, stderr
    return out


@pytest.fixture
def dataset_copy(tiny_mmrec_root, tmp_path):
    """A writable copy of the tiny MMRec folder, without its processed files."""
    root, name = tiny_mmrec_root
    for folder in (name, f'{name}_beit3'):
        shutil.copytree(Path(root) / folder, tmp_path / 'data' / folder,
                        ignore=shutil.ignore_patterns('processed'))
    return tmp_path / 'data', name


# 1. a failed run leaves nothing in the way of its rerun ######################################

def test_refused_data_creates_nothing_and_the_fixed_rerun_needs_no_resume(dataset_copy,
                                                                          tmp_path):
    root, name = dataset_copy
    inter = root / name / f'{name}.inter'
    good = inter.read_bytes()
    inter.write_bytes(b'')
    out = tmp_path / 'runs' / 'ar'
    args = ['train', *ONE_EPOCH, '--set', f'data.root={root}', '--out', str(out)]
    code, _, stderr = run(args)
    one_line_error(code, stderr, f'{inter}: empty file')
    assert not (tmp_path / 'runs').exists()
    assert not (root / name / 'processed').exists()
    inter.write_bytes(good)
    code, _, stderr = run(args)
    assert code == 0, stderr


def test_failure_before_the_first_checkpoint_removes_what_the_run_wrote(tmp_path, monkeypatch):
    out = tmp_path / 'empty'
    out.mkdir()
    original = Trainer._train_epoch

    def diverge_at(epoch_to_fail):
        def train_epoch(self, epoch):
            if epoch == epoch_to_fail:
                raise NonFiniteLossError(f'non-finite loss at epoch {epoch}')
            return original(self, epoch)
        return train_epoch

    monkeypatch.setattr(Trainer, '_train_epoch', diverge_at(1))
    code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(out)])
    one_line_error(code, stderr, 'non-finite loss at epoch 1')
    assert out.is_dir() and os.listdir(out) == []  # the user's folder stays, empty

    # after the first checkpoint the run is kept, to be resumed
    monkeypatch.setattr(Trainer, '_train_epoch', diverge_at(2))
    code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(out)])
    one_line_error(code, stderr, 'non-finite loss at epoch 2')
    assert (out / 'runs' / 'c000-s999' / 'checkpoint.pt').is_file()
    monkeypatch.setattr(Trainer, '_train_epoch', original)
    code, _, stderr = run(['train', '--out', str(out), '--resume', '--quiet'])
    assert code == 0, stderr


# 2. one process per run folder ###############################################################

def test_a_locked_run_folder_is_refused_naming_the_holder(trained, tmp_path):
    from anchorrec_pyg.io import LOCK_FILE, lock_folder
    assert not (trained / LOCK_FILE).exists()  # released (and removed) after the run
    with lock_folder(trained):
        code, _, stderr = run(['train', '--out', str(trained), '--resume', '--quiet'])
        one_line_error(code, stderr, f'output folder {trained} is in use by another process '
                       f'(pid {os.getpid()})')
        fresh = tmp_path / 'cmp'
        with lock_folder(fresh):
            code, _, stderr = run(['compare', '--models', 'lightgcn', '--epochs', '1',
                                   '--seeds', '1', '--set', 'data.name=tiny', '--quiet',
                                   '--out', str(fresh)])
        one_line_error(code, stderr, f'output folder {fresh} is in use by another process')


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path):
    from anchorrec_pyg.io import LOCK_FILE
    out = tmp_path / 'run'
    out.mkdir()
    (out / LOCK_FILE).write_text('4194999\n')  # its process is gone: the OS freed the lock
    code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(out)])
    assert code == 0, stderr
    assert (out / 'summary.json').is_file() and not (out / LOCK_FILE).exists()


# 3. corruption is refused #####################################################################

def _flip_a_weight(checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    tensor = next(t for t in state['model'].values() if t.numel() >= 64)
    raw = bytearray(checkpoint.read_bytes())
    start = raw.find(tensor.numpy().tobytes())
    assert start >= 0
    raw[start + tensor.numel() * tensor.element_size() // 2 + 3] ^= 0x40
    checkpoint.write_bytes(bytes(raw))


@pytest.mark.parametrize('recorded', [True, False])
def test_a_flipped_bit_in_a_checkpoint_is_refused(trained, tmp_path, recorded):
    run_dir = tmp_path / 'run'
    shutil.copytree(trained / 'runs' / 'c000-s999', run_dir)
    checkpoint = run_dir / 'checkpoint.pt'
    _flip_a_weight(checkpoint)
    if not recorded:  # written without a checksum: the zip CRCs catch it
        os.unlink(run_dir / 'checkpoint.pt.sha256')
    code, _, stderr = run(['evaluate', str(run_dir), '--quiet'])
    reason = 'SHA-256 differs' if recorded else 'zip container fails the CRC check'
    one_line_error(code, stderr, f'{checkpoint}: corrupt checkpoint', reason,
                   'rerun train --resume')


# 4. user mistakes: one line, exit 2 ###########################################################

def test_output_paths_that_cannot_be_written(trained, tmp_path):
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(a_file)])
    one_line_error(code, stderr, f'{a_file} is not a folder')

    read_only = tmp_path / 'ro'
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        for out in (read_only, read_only / 'run'):
            code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(out)])
            one_line_error(code, stderr, f'{read_only} is read-only')
        code, _, stderr = run(['recommend', str(trained), '--users', '0', '--quiet',
                               '--output', str(read_only / 'top.csv')])
        one_line_error(code, stderr, f'{read_only} is read-only')
    finally:
        read_only.chmod(0o755)
    assert os.listdir(read_only) == []
    code, _, stderr = run(['recommend', str(trained), '--users', '0', '--quiet',
                           '--output', str(tmp_path)])
    one_line_error(code, stderr, f'{tmp_path} is a folder; name a file to write')


@pytest.mark.parametrize('content, message', [
    (b'train:\n  lr: 0.01\n# caf\xe9\n', 'not a UTF-8 text file (byte 23'),
    (b'\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00>\x00', 'not valid YAML'),
    (bytes(range(256)), 'not a UTF-8 text file'),
], ids=['latin-1', 'elf', 'all-bytes'])
def test_config_files_that_are_not_text(tmp_path, content, message):
    path = tmp_path / 'config.yaml'
    path.write_bytes(content)
    code, _, stderr = run(['train', '--config', str(path), '--out', str(tmp_path / 'o')])
    one_line_error(code, stderr, f'{path}: {message}')
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('seeds', ['[18446744073709551616]', '[-9223372036854775809]'])
def test_seeds_beyond_64_bits(tmp_path, seeds):
    code, _, stderr = run(['train', '--set', f'seeds={seeds}', '--out', str(tmp_path / 'o')])
    one_line_error(code, stderr, 'seeds must fit 64 bits')


# 5. a refused checkpoint says why #############################################################

class Exploit:
    def __reduce__(self):
        return (print, ('pwned',))


def test_a_refused_checkpoint_shows_the_reason_without_escape_codes(tmp_path):
    hostile = tmp_path / 'checkpoint.pt'
    torch.save({'x': Exploit()}, hostile)
    code, _, stderr = run(['evaluate', str(hostile), '--quiet'])
    one_line_error(code, stderr, 'refused to load',
                   '(Unsupported global: GLOBAL print was not an allowed global by default)')
    assert '\x1b' not in stderr and 'Weights only load failed' not in stderr


# 8. file modes #################################################################################

def test_run_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        code, _, stderr = run(['train', *ONE_EPOCH, '--out', str(tmp_path / 'run')])
    finally:
        os.umask(previous)
    assert code == 0, stderr
    files = [p for p in (tmp_path / 'run').rglob('*') if p.is_file()]
    assert {p.name for p in files} >= {'config.yaml', 'summary.json', 'runs.csv', 'history.csv',
                                       'checkpoint.pt', 'checkpoint.pt.sha256', 'metrics.json'}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: oct(0o640) for p in files}
