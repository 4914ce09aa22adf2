"""How epoch time and memory grow with the data: AnchorRec on Baby-shaped synthetic data at
several sizes, ``train.mode`` full vs sampled, 1 vs 2 processes; plus the accuracy cost of
sampling (validation Recall@20 after the same number of epochs, full vs sampled, two seeds).

    python benchmarks/scale.py --quick                    # a reduced run: a few minutes
    python benchmarks/scale.py --sizes 1,2,4              # Baby x 1, 2, 4 (hours on 2 cores)
    python benchmarks/scale.py --base 0.25 --sizes 1,2 --nproc 1

Size ``s`` is the ``baby`` synthetic preset with users and items scaled by ``base * s`` (the
interactions follow: the same mean per user) and Baby's feature widths (4096/384/768), written
once under ``--data-root``. Every measurement is its own ``anchorrec-pyg train`` process (``--nproc
2`` through torchrun's launcher): seconds per epoch = ``train_time_s`` of the last of
``--epochs`` whole epochs (the first builds caches), peak RSS = the largest resident set of the
job's processes (``wait4``), growth exponent = the least-squares slope of log(seconds) on
log(size). The accuracy runs train ``--acc-epochs`` epochs at size 1 and evaluate once, at the
end. Tables are printed (markdown) and written with the raw numbers to ``--out``/scale.json.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anchorrec_pyg.data import PRESETS, generate_synthetic  # noqa: E402


def dataset(root: Path, scale: float) -> str:
    """The Baby-shaped dataset at ``scale`` x Baby under ``root`` (generated once)."""
    name = f'baby-x{scale:g}'
    if not (root / name / f'{name}.inter').is_file():
        baby = PRESETS['baby']
        preset = dataclasses.replace(baby, num_users=round(baby.num_users * scale),
                                     num_items=round(baby.num_items * scale))
        generate_synthetic(root, name=name, preset=preset, seed=0)
    return name


def train(root: Path, name: str, out: Path, mode: str, nproc: int, epochs: int, seed: int,
          fanout: str, threads: int) -> dict:
    """One ``anchorrec-pyg train`` job; returns its history, validation metrics and peak RSS."""
    args = ['train', '--quiet', '--out', str(out)]
    sets = [f'data.root={root}', f'data.name={name}', f'train.mode={mode}',
            f'train.fanout={fanout}', f'train.epochs={epochs}', 'train.patience=null',
            f'train.eval_every={epochs}', f'train.checkpoint_every={epochs}',
            f'seeds=[{seed}]', 'train.device=cpu', 'eval.ks=[20]']
    if nproc > 1:
        args += ['--nproc', str(nproc)]
    else:
        sets.append(f'train.num_threads={threads}')
    for s in sets:
        args += ['--set', s]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, '-m', 'anchorrec_pyg.cli', *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f'{name} {mode} x{nproc} failed: {stderr.strip()[-2000:]}')
    with open(out / 'history.csv') as f:
        history = list(csv.DictReader(f))
    return {'train_time_s': float(history[-1]['train_time_s']),
            'valid_recall@20': float(history[-1]['valid_recall@20']),
            'peak_rss_mb': usage.ru_maxrss / 1024, 'wall_s': time.perf_counter() - start}


def slope(sizes: list, values: list) -> float:
    """Least-squares slope of log(values) on log(sizes)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0]) if len(sizes) > 1 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='base 1/16 Baby, sizes 1,2,4, accuracy after 3 epochs')
    parser.add_argument('--base', type=float, help='size 1 as a fraction of Baby (default 1)')
    parser.add_argument('--sizes', help='comma-separated multiples of the base (default 1,2,4)')
    parser.add_argument('--nproc', default='1,2', help='process counts to time (default 1,2)')
    parser.add_argument('--epochs', type=int, help='timed epochs per job (default 2)')
    parser.add_argument('--acc-epochs', type=int,
                        help='epochs of the accuracy runs (default 10; --quick 3)')
    parser.add_argument('--seeds', default='999,777', help='seeds of the accuracy runs')
    parser.add_argument('--fanout', default='[20,10]', help='train.fanout of sampled mode')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads per process (1: '
                        'robust on a loaded machine)')
    parser.add_argument('--data-root', default=str(Path(tempfile.gettempdir()) /
                                                   'anchorrec-scale-data'))
    parser.add_argument('--out', default='scale-results', help='folder for scale.json')
    args = parser.parse_args()
    base = args.base if args.base is not None else (0.0625 if args.quick else 1.0)
    sizes = [float(s) for s in (args.sizes or '1,2,4').split(',')]
    epochs = args.epochs or 2
    acc_epochs = args.acc_epochs or (3 if args.quick else 10)
    nprocs = [int(n) for n in args.nproc.split(',')]
    seeds = [int(s) for s in args.seeds.split(',')]
    data_root, out = Path(args.data_root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f'AnchorRec, Baby-shaped synthetic data, size 1 = {base:g} x Baby; fan-out '
          f'{args.fanout}; {args.threads} thread(s) per process; {os.cpu_count()} CPUs; '
          f'{epochs} timed epochs per job', flush=True)

    timing = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            name = dataset(data_root, base * size)
            for mode in ('full', 'sampled'):
                for nproc in nprocs:
                    run = train(data_root, name, Path(scratch) / f'{name}-{mode}-{nproc}', mode,
                                nproc, epochs, 999, args.fanout, args.threads)
                    timing.append({'size': size, 'data': name, 'mode': mode, 'nproc': nproc,
                                   **run})
                    print(f"  {name} {mode:7s} x{nproc}: {run['train_time_s']:.2f} s/epoch, "
                          f"peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)
        accuracy = []
        name = dataset(data_root, base * sizes[0])
        for mode in ('full', 'sampled'):
            for seed in seeds:
                run = train(data_root, name, Path(scratch) / f'acc-{mode}-{seed}', mode, 1,
                            acc_epochs, seed, args.fanout, args.threads)
                accuracy.append({'mode': mode, 'seed': seed, **run})
                print(f"  accuracy {mode} seed {seed}: valid Recall@20 "
                      f"{run['valid_recall@20']:.4f}", flush=True)

    print('\n| size (x Baby) | mode | processes | s/epoch | peak RSS MB/process |')
    print('|---|---|---|---|---|')
    for r in timing:
        print(f"| {base * r['size']:g} | {r['mode']} | {r['nproc']} | {r['train_time_s']:.2f} "
              f"| {r['peak_rss_mb']:.0f} |")
    print('\n| mode | processes | growth exponent (s/epoch ~ size^a) | per doubling |')
    print('|---|---|---|---|')
    exponents = {}
    for mode in ('full', 'sampled'):
        for nproc in nprocs:
            rows = [r for r in timing if r['mode'] == mode and r['nproc'] == nproc]
            a = slope([r['size'] for r in rows], [r['train_time_s'] for r in rows])
            exponents[f'{mode}-x{nproc}'] = a
            print(f'| {mode} | {nproc} | {a:.2f} | {2 ** a:.2f}x |')
    print(f'\nvalidation Recall@20 after {acc_epochs} epochs, {base * sizes[0]:g} x Baby:')
    print('| mode | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean |')
    print('|---|' + '---|' * (len(seeds) + 1))
    means = {}
    for mode in ('full', 'sampled'):
        values = [r['valid_recall@20'] for r in accuracy if r['mode'] == mode]
        means[mode] = float(np.mean(values))
        print(f'| {mode} | ' + ' | '.join(f'{v:.4f}' for v in values) +
              f' | {means[mode]:.4f} |')
    gap = (means['sampled'] - means['full']) / means['full']
    print(f'sampled vs full: {100 * gap:+.1f}% (relative)')
    result = {'base': base, 'sizes': sizes, 'fanout': args.fanout, 'threads': args.threads,
              'cpus': os.cpu_count(), 'epochs': epochs, 'acc_epochs': acc_epochs,
              'timing': timing, 'exponents': exponents, 'accuracy': accuracy,
              'relative_gap': gap}
    (out / 'scale.json').write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {out / "scale.json"}')


if __name__ == '__main__':
    main()
