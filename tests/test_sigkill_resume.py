"""SIGKILL at any point of a run (issue 12): after every kill no file of the run folder is
truncated or corrupt, and ``train --resume`` ends with the uninterrupted run's metrics, bit for
bit.

Each run is a forked child of the test process (no second interpreter start-up) running the
real command, ``anchorrec_pyg.cli.main``. The child kills itself with SIGKILL at a chosen
point: during a checkpoint or best-weights write (part of the bytes in the temporary file),
just before or just after any rename of a file into place (files and their ``.sha256``
sidecars), during an evaluation, between two epochs; or the parent kills it after a random
delay. The points are drawn from the uninterrupted run's own call counts with several seeds.
``benchmarks/sigkill_resume.py`` runs the same scenarios with more points.
"""
from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
import yaml

from anchorrec_pyg.cli import main
from anchorrec_pyg.config import load_config
from anchorrec_pyg.io import LOCK_FILE, TEMP_SUFFIX, verify_checksum
from anchorrec_pyg.train.evaluator import Evaluator
from anchorrec_pyg.train.runner import load_data, required_modalities
from anchorrec_pyg.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')

#: Two grid combinations x two epochs of AnchorRec on the tiny preset, a checkpoint and an
#: evaluation after every epoch.
ARGS = ['--set', 'data.name=tiny', '--set', 'train.epochs=2', '--set', 'train.batch_size=256',
        '--set', 'train.checkpoint_every=1', '--set', 'train.patience=null',
        '--set', 'train.num_threads=1', '--set', 'eval.ks=[10,20]',
        '--set', 'grid.train.lr=[0.005,0.01]', '--device', 'cpu', '--quiet']
#: What is counted in a run and where a kill can be placed.
HOOKS = ('save', 'replace', 'evaluate', 'epoch')
SEEDS = (0, 1, 2)


def _install(kill: Optional[Tuple[str, int, float]], counts: Dict[str, int]) -> None:
    r"""Counts the calls of :data:`HOOKS` in this (child) process and SIGKILLs it at
    :obj:`kill` = ``(hook, n, fraction)``: the n-th call of the hook (``save``: after that
    fraction of the bytes; ``replace``: before the rename for fraction < 0.5, after it
    otherwise; ``evaluate``: after the scores, before they are recorded; ``epoch``: before
    the epoch)."""
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def hit(hook: str) -> Optional[float]:
        counts[hook] = counts.get(hook, 0) + 1
        if kill is not None and kill[0] == hook and kill[1] == counts[hook]:
            return kill[2]
        return None

    save, replace = torch.save, os.replace
    evaluate, train_epoch = Evaluator.evaluate, Trainer._train_epoch

    def killing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        fraction = hit('save')
        if fraction is None:
            return save(obj, f, *args, **kwargs)
        import io
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:int(len(buffer.getvalue()) * fraction)])
        f.flush()
        die()

    def killing_replace(src: Any, dst: Any) -> None:
        fraction = hit('replace')
        if fraction is not None and fraction < 0.5:
            die()
        replace(src, dst)
        if fraction is not None:
            die()

    def killing_evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = evaluate(self, *args, **kwargs)
        if hit('evaluate') is not None:
            die()
        return result

    def killing_epoch(self: Any, epoch: int) -> Any:
        if hit('epoch') is not None:
            die()
        return train_epoch(self, epoch)

    torch.save, os.replace = killing_save, killing_replace
    Evaluator.evaluate, Trainer._train_epoch = killing_evaluate, killing_epoch


def _child(argv: List[str], kill: Optional[Tuple[str, int, float]], counts_file: str) -> None:
    counts: Dict[str, int] = {}
    _install(kill, counts)
    with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet):
        code = main(argv)
    Path(counts_file).write_text(json.dumps(counts))
    sys.exit(code)


def _run(argv: List[str], kill: Optional[Tuple[str, int, float]] = None,
         delay: Optional[float] = None, counts_file: str = os.devnull) -> int:
    r"""Runs the command in a forked child; returns its exit code (-9 when killed)."""
    process = multiprocessing.get_context('fork').Process(target=_child,
                                                          args=(argv, kill, counts_file))
    process.start()
    if delay is not None:
        process.join(delay)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
    process.join()
    return process.exitcode


def check_no_truncated_file(out: Path) -> int:
    r"""Every file a killed run left is whole: checksummed files match their SHA-256 and
    load, JSON/YAML parse, CSV rows are complete; only hidden temporary files and the lock
    file may be partial. Returns the number of files checked."""
    checked = 0
    for path in sorted(p for p in out.rglob('*') if p.is_file()):
        name = path.name
        if name == LOCK_FILE or (name.startswith('.') and name.endswith(TEMP_SUFFIX)):
            continue
        checked += 1
        text = None if path.suffix == '.pt' else path.read_text()
        if path.suffix == '.pt':
            assert verify_checksum(path) is True, path
            torch.load(path, map_location='cpu', weights_only=True)
        elif path.suffix == '.sha256':
            lines = text.splitlines()
            assert lines and all(len(line.split()[0]) == 64 for line in lines), path
            assert (path.parent / path.name[:-len('.sha256')]).is_file() or \
                path.name.startswith('checkpoint.best'), path  # the best weights' may remain
        elif path.suffix == '.json':
            json.loads(text)
        elif path.suffix == '.yaml':
            assert isinstance(yaml.safe_load(text), dict), path
        elif path.suffix == '.csv':
            assert text.endswith('\n'), path
            rows = list(csv.reader(text.splitlines()))
            assert len(rows) >= 2 and all(len(row) == len(rows[0]) for row in rows), path
        else:
            pytest.fail(f'unexpected file {path}')
    return checked


def results(out: Path) -> Dict[str, Any]:
    summary = json.loads((out / 'summary.json').read_text())
    runs = {p.parent.name: json.loads(p.read_text()) for p in out.glob('runs/*/metrics.json')}
    return {'valid': summary['valid'], 'test': summary['test'],
            'selected': summary['selected'], 'runs': runs}


def kill_points(counts: Dict[str, int], seeds=SEEDS) -> List[Tuple[str, int, float]]:
    r"""Per seed: a write cut short, a rename interrupted before and one after, an evaluation
    and an epoch; every draw uniform over the uninterrupted run's calls."""
    points = []
    for seed in seeds:
        rng = random.Random(seed)
        points += [('save', rng.randint(1, counts['save']), rng.uniform(0.05, 0.95)),
                   ('replace', rng.randint(1, counts['replace']), 0.25),
                   ('replace', rng.randint(1, counts['replace']), 0.75),
                   ('evaluate', rng.randint(1, counts['evaluate']), 1.0),
                   ('epoch', rng.randint(2, counts['epoch']), 1.0)]
    return points


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Tuple[Dict[str, Any], Dict[str, int], float]:
    r"""The uninterrupted run: its results, its call counts and its duration."""
    config = load_config(None, [a for a in ARGS[1::2] if '=' in a])
    load_data(config.data, required_modalities(config), log=False)  # the cache, built once
    folder = tmp_path_factory.mktemp('sigkill')
    counts_file = folder / 'counts.json'
    start = time.perf_counter()
    assert _run(['train', *ARGS, '--out', str(folder / 'ref')],
                counts_file=str(counts_file)) == 0
    duration = time.perf_counter() - start
    counts = json.loads(counts_file.read_text())
    assert set(counts) == set(HOOKS), counts
    return results(folder / 'ref'), counts, duration


def survive(out: Path, kill: Optional[Tuple[str, int, float]] = None,
            delay: Optional[float] = None) -> bool:
    r"""Kills a fresh run at :obj:`kill` (or after :obj:`delay` seconds), checks the folder,
    then reruns it to the end: ``--resume`` once its config is written, a plain rerun before
    (the folder is then empty but for temporary files). Returns whether the kill happened."""
    code = _run(['train', *ARGS, '--out', str(out)], kill=kill, delay=delay)
    if code == 0:
        return False
    assert code == -signal.SIGKILL, code
    check_no_truncated_file(out)
    resume = ['--resume'] if (out / 'config.yaml').is_file() else []
    assert _run(['train', *ARGS, '--out', str(out), *resume]) == 0
    return True


def test_sigkill_at_any_point_then_resume_gives_the_uninterrupted_metrics(
        reference, tmp_path, capsys):
    expected, counts, duration = reference
    survived = 0
    scenarios = [(kill, None) for kill in kill_points(counts)]
    scenarios += [(None, random.Random(seed).uniform(0.0, duration)) for seed in SEEDS]
    for i, (kill, delay) in enumerate(scenarios):
        out = tmp_path / f'kill{i}'
        if not survive(out, kill, delay):
            continue
        assert results(out) == expected, (kill, delay)
        assert check_no_truncated_file(out) > 0
        leftovers = [p.name for p in out.rglob('*') if p.name == LOCK_FILE or
                     p.name.endswith(TEMP_SUFFIX) or '.best.' in p.name]
        assert leftovers == [], (kill, delay, leftovers)
        survived += 1
    with capsys.disabled():
        print(f'\nSIGKILL fault test: {survived} kill points survived '
              f'({len(scenarios)} scenarios; call counts {counts})')
    assert survived >= len(scenarios) - len(SEEDS)  # a timed kill may come after the end


def test_sigkill_before_the_first_checkpoint_does_not_block_the_plain_rerun(
        reference, tmp_path, capsys):
    expected, _, _ = reference
    out = tmp_path / 'early'
    assert _run(['train', *ARGS, '--out', str(out)], kill=('epoch', 1, 1.0)) == -signal.SIGKILL
    left = sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.name != LOCK_FILE)
    assert left == ['config.yaml', 'runs', 'runs/c000-s999', 'runs/c000-s999/config.yaml']
    # another configuration is still refused: the folder is not its run's
    assert main(['train', *ARGS, '--set', 'train.lr=0.02', '--out', str(out)]) == 2
    assert 'is not empty' in capsys.readouterr().err
    # the same command, without --resume, replaces what the killed run left and finishes
    assert _run(['train', *ARGS, '--out', str(out)]) == 0
    assert results(out) == expected
