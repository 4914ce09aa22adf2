"""Per-model training-step time and peak RSS on Baby-shaped synthetic data at several scales,
to check that no model's memory grows quadratically with the catalogue.

    python benchmarks/model_scaling.py --models lgmrec smore --scales 1 4 --batches 4
    python benchmarks/model_scaling.py --models freedom --scales 1 2 4 --threads 1

Scale ``s`` is the Baby preset (anchorrec_pyg/data/synthetic.py) with ``s`` times its users and
items and the same interactions per user (so ``s`` times the interactions and the feature
rows); it is generated once into ``--root``. Each (model, scale) runs in its own process, so
that its peak RSS (``ru_maxrss``: loading the processed dataset, building the model and its
graphs, ``--batches`` training steps with the model's published defaults, B = 2048, Adam) is
its own. The epoch time is extrapolated: first step + median step x (batches per epoch - 1).
``growth`` is the peak RSS over that of the smallest scale of the same model: linear memory
grows about ``s``-fold, a quadratic term ``s^2``-fold.

``--cli`` measures instead what a user gets: ``anchorrec-pyg train`` with the model's published
config (the file ``compare`` uses; its best-known settings, no grid, seed 999, the model's
default propagation backend, ``fast`` for every graph model) for one epoch
(``train.epochs=1``) at ``train.num_threads=--threads``, in its own process. ``epoch s`` is the
training time of the epoch the trainer records (``history.csv``: ``train_time_s``, every
batch, LATTICE's graph rebuild and DA-MRS's graph build included), ``valid s`` its validation
pass, ``process s`` the whole command (dataset load, model build, the epoch, validation and
test) and ``process CPU s`` its CPU time (user + system: what a shared machine's load changes
least), ``peak RSS`` the command's (``wait4``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from anchorrec_pyg.compare import CONFIGS_DIR, published_config_path
from anchorrec_pyg.config import DataConfig, load_config
from anchorrec_pyg.data import PRESETS, ensure_default_dataset
from anchorrec_pyg.data.mmrec import anchorrec_home
from anchorrec_pyg.models.registry import get_model_class
from anchorrec_pyg.train.runner import HISTORY_FILE, load_data, required_modalities
from anchorrec_pyg.train.sampler import TripletSampler

warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
BATCH = 2048


def preset_name(scale: int) -> str:
    """Registers the Baby preset scaled by ``scale`` (users and items) and returns its name."""
    name = 'baby' if scale == 1 else f'baby-x{scale}'
    if name not in PRESETS:
        baby = PRESETS['baby']
        PRESETS[name] = dataclasses.replace(baby, num_users=baby.num_users * scale,
                                            num_items=baby.num_items * scale)
    return name


def run_child(model_name: str, scale: int, root: str, batches: int, threads: int) -> dict:
    """One model at one scale in this process."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, name = ensure_default_dataset(root, preset=preset_name(scale))
    cls = get_model_class(model_name)
    config = cls.Config()
    data = load_data(DataConfig(root=root, name=name), cls.required_modalities(config), log=False)
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    model = cls(data, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    setup_s = time.perf_counter() - start
    sampler = TripletSampler(data['user', 'interacts', 'item'].edge_index,
                             int(data['item'].num_nodes), BATCH,
                             with_negatives=model.needs_negatives)
    model.train()
    steps = []
    for batch in sampler.epoch(torch.Generator().manual_seed(0)):
        if len(steps) == batches:
            break
        users, pos, neg = batch if len(batch) == 3 else (*batch, None)
        begin = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total, _ = model.loss(data, model(data), users, pos, neg, batch_size=BATCH)
        total.backward()
        optimizer.step()
        steps.append(time.perf_counter() - begin)
    steady = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    return {
        'model': model_name, 'scale': scale, 'users': int(data['user'].num_nodes),
        'items': int(data['item'].num_nodes), 'setup_s': setup_s, 'first_step_s': steps[0],
        'step_s': steady, 'epoch_s': steps[0] + steady * (len(sampler) - 1),
        'load_rss_mb': load_rss,
        'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_cli(model_name: str, scale: int, root: str, threads: int, out: Path) -> dict:
    """One epoch of ``anchorrec-pyg train`` with the published config of ``model_name``, in its
    own process; its epoch and validation times (history.csv), wall time and peak RSS."""
    name = preset_name(scale)
    path = published_config_path(model_name, name, CONFIGS_DIR)
    overrides = [f'data.root={root}', f'data.name={name}', 'grid={}', 'seeds=[999]',
                 'train.epochs=1', f'train.num_threads={threads}']
    config = load_config(path, overrides)
    load_data(config.data, required_modalities(config), log=False)  # processed before timing
    cmd = [sys.executable, '-m', 'anchorrec_pyg.cli', 'train', '--quiet', '--config', str(path),
           *[arg for key in overrides for arg in ('--set', key)], '--out', str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f'{model_name} x{scale} failed ({process.returncode}): '
                         f'{process.stderr.read().strip()}')
    with open(out / HISTORY_FILE, newline='') as f:
        epoch = next(csv.DictReader(f))
    return {'model': model_name, 'scale': scale, 'epoch_s': float(epoch['train_time_s']),
            'eval_s': float(epoch['eval_time_s']), 'process_s': wall,
            'cpu_s': usage.ru_utime + usage.ru_stime, 'peak_rss_mb': usage.ru_maxrss / 1024}


def cli_table(args: argparse.Namespace, root: str) -> None:
    """Prints the ``--cli`` table (one process per model and scale)."""
    load_avg = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            for scale in args.scales:
                rows.append(run_cli(model_name, scale, root, args.threads,
                                    Path(tmp) / f'{model_name}-x{scale}'))
                print(f'# {model_name} x{scale} done', file=sys.stderr, flush=True)
    print(f'# anchorrec-pyg train, one epoch, published configs, Baby-shaped synthetic data x '
          f'scale, {args.threads} threads, load average (1/5/15 min) '
          f'{"/".join(f"{x:.1f}" for x in load_avg)} -> '
          f'{"/".join(f"{x:.1f}" for x in os.getloadavg())}')
    print('| model | scale | epoch s | valid s | process s | process CPU s | peak RSS MB |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        flag = ' (> 2 GB)' if row['peak_rss_mb'] > 2048 else ''
        print(f"| {row['model']} | {row['scale']} | {row['epoch_s']:.1f} | {row['eval_s']:.1f} "
              f"| {row['process_s']:.0f} | {row['cpu_s']:.0f} | {row['peak_rss_mb']:.0f}{flag} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', required=True, help='registry names')
    parser.add_argument('--scales', nargs='+', type=int, default=None,
                        help='default: 1 4 (with --cli: 1)')
    parser.add_argument('--batches', type=int, default=4, help='training steps timed per run')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--root', default=None,
                        help='folder of the generated datasets (default: the package cache)')
    parser.add_argument('--cli', action='store_true',
                        help='one whole epoch of `anchorrec-pyg train` per model instead')
    parser.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.scales = args.scales or ([1] if args.cli else [1, 4])
    root = args.root or str(anchorrec_home() / 'datasets')
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), root, args.batches,
                                   args.threads)))
        return
    for scale in args.scales:  # generate (once) outside the measured processes
        ensure_default_dataset(root, preset=preset_name(scale))
    if args.cli:
        cli_table(args, root)
        return
    load_avg = os.getloadavg()[0]
    rows = []
    for model_name in args.models:
        for scale in args.scales:
            cmd = [sys.executable, str(Path(__file__).resolve()), '--models', model_name,
                   '--child', model_name, str(scale), '--batches', str(args.batches),
                   '--threads', str(args.threads), '--root', root]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f'# Baby-shaped synthetic data x scale, B={BATCH}, {args.threads} threads, '
          f'{args.batches} steps timed, load average {load_avg:.1f} -> {os.getloadavg()[0]:.1f}')
    print('| model | scale | users | items | step s | epoch s (est.) | setup s | RSS after load MB '
          '| peak RSS MB | growth |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        base = next(r for r in rows if r['model'] == row['model'])
        print(f"| {row['model']} | {row['scale']} | {row['users']} | {row['items']} | "
              f"{row['step_s']:.2f} | {row['epoch_s']:.0f} | {row['setup_s']:.1f} | "
              f"{row['load_rss_mb']:.0f} | {row['peak_rss_mb']:.0f} | "
              f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f}x |")


if __name__ == '__main__':
    main()
