"""How a training step's time, memory and subgraph grow with the data: AnchorRec on Baby-shaped
synthetic data at several sizes, ``train.mode`` full vs sampled; plus the accuracy cost of
sampling (validation Recall@20 after the same number of epochs, full vs sampled, two seeds).

    python benchmarks/scale.py --quick                    # 1/16, 1/8, 1/4 Baby: minutes
    python benchmarks/scale.py --sizes 1,2,4 --no-accuracy     # Baby x 1, 2, 4
    python benchmarks/scale.py --sizes 1 --no-timing --parallel 2  # the accuracy runs only

Size ``s`` is the ``baby`` synthetic preset with users and items scaled by ``base * s`` (the
interactions follow: the same mean per user) and Baby's feature widths (4096/384/768), written
once under ``--data-root``.

**Timing** (one fresh process per size and mode, ``--threads`` threads): the package's trainer
(model, batch source, optimiser as ``anchorrec-pyg train`` builds them; ``--modes``: ``full``,
``sampled`` with dense Adam, ``sampled-sparse`` with ``train.sparse_updates``) runs
``--warmup`` + ``--batches`` batches of the first epoch; the mean time of the timed batches
(sampling, forward, backward, optimiser step) times the batches per epoch is the epoch estimate
(the epoch's one-off draw of the permutation and negatives falls in the warm-up). Both the wall
time and the process's CPU time are recorded: with one thread on a machine shared with other
jobs, the CPU time is the step's work and the wall time that plus the waiting, so the growth
exponent (least-squares slope of log(seconds per epoch) on log(size)) is fitted to the CPU
time, and the growth per doubling is given size to size as well (where a step saturates, one
fit over every size hides it). Per step: the minor page faults (memory the allocator took fresh
from the kernel; in ``scale.json`` and the progress lines), the peak resident memory above the
resident memory before the timed batches (``VmHWM`` reset through ``/proc/self/clear_refs``) and
the process's peak; the mean subgraph of a batch (users, items, message-passing edges) against
the whole graph, and the items whose view input (the projection of their feature row) each
modality computes (the sources of the subgraph's kNN edges of that modality). ``--sizes-for
full=1,2,4`` limits one mode to some of the sizes; ``--set KEY=VALUE`` overrides the
configuration of every job (e.g. ``model.n_layers=2``). ``--nproc 1,2`` times every size and mode
with one process and with two data-parallel processes (torchrun, gloo over loopback; each
process trains its half of the global batch ``B``, as ``anchorrec-pyg train --nproc 2``): the row
of several processes gives the slowest process's seconds per batch and its peaks, so its epoch
estimate is the epoch's time with one core per process. ``--profile`` writes each job's
``torch.profiler`` table (operators by self CPU time, with their input shapes) beside
scale.json, to see what a step's time is made of (the timing includes the profiler's overhead).
``--batch-size 128,512,2048`` times every B in the same rounds: a sampled step's subgraph fills
up towards its bound (about ``B`` times the fan-outs' product) as the catalogue grows, sooner
the smaller ``B``, so the growth per doubling read side by side over several ``B`` separates
that filling from what grows with the catalogue itself.
``--repeat N`` times every job N times in rounds (each round every size and mode once, so that
a busy spell of the machine falls on all sizes, not on one) and reports the median round with
the range, which is what a growth ratio on a shared machine should be read from.

**Accuracy**: ``anchorrec-pyg train`` for ``--acc-epochs`` epochs at the first size, evaluated
once at the end, full and sampled for every seed, ``--parallel`` jobs at a time.

Tables are printed (markdown, with ``uptime``'s load average) and written with the raw numbers
to ``--out``/scale.json.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from anchorrec_pyg.data import PRESETS, generate_synthetic  # noqa: E402
from anchorrec_pyg.schema import MODALITIES, knn_edge_type  # noqa: E402


def dataset(root: Path, scale: float) -> str:
    """The Baby-shaped dataset at ``scale`` x Baby under ``root`` (generated once)."""
    name = f'baby-x{scale:g}'
    if not (root / name / f'{name}.inter').is_file():
        baby = PRESETS['baby']
        preset = dataclasses.replace(baby, num_users=round(baby.num_users * scale),
                                     num_items=round(baby.num_items * scale))
        generate_synthetic(root, name=name, preset=preset, seed=0)
    return name


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


class TimedBatches:
    """The first ``count`` batches of a batch source, with the time each was handed out and the
    size of each graph (the trainer iterates it as its own batch source)."""

    def __init__(self, source, count: int, on_first_timed, warmup: int) -> None:
        self.source, self.count, self.warmup = source, count, warmup
        self.on_first_timed = on_first_timed
        self.stamps: list = []
        self.cpu: list = []
        self.sizes: list = []

    def __len__(self) -> int:
        return self.count

    def epoch(self, generator, epoch):
        for index, (graph, users, pos, neg) in enumerate(self.source.epoch(generator, epoch)):
            if index == self.count:
                return
            if index == self.warmup:
                self.on_first_timed()
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())
            edges = sum(graph[et].edge_index.size(1) for et in graph.edge_types)
            inputs = [torch.unique(graph[knn_edge_type(m)].edge_index[0]).numel()
                      if knn_edge_type(m) in graph.edge_types else 0 for m in MODALITIES]
            self.sizes.append((int(graph['user'].num_nodes), int(graph['item'].num_nodes),
                               edges, *inputs))
            yield graph, users, pos, neg


def worker(spec: dict) -> dict:
    """One timing measurement in this process (``--worker``); with ``spec['nproc'] > 1`` this
    process is one of torchrun's workers and trains its share of every global batch."""
    from anchorrec_pyg.config import load_config
    from anchorrec_pyg.train import Trainer, distributed
    from anchorrec_pyg.train.runner import build_model, load_data, required_modalities
    torch.set_num_threads(spec['threads'])
    mode, _, sparse = spec['mode'].partition('-')
    config = load_config(None, [f"data.root={spec['root']}", f"data.name={spec['name']}",
                                f'train.mode={mode}', f"train.fanout={spec['fanout']}",
                                f'train.sparse_updates={str(bool(sparse)).lower()}',
                                'train.device=cpu', f"train.num_threads={spec['threads']}",
                                f"train.batch_size={spec['batch_size']}", 'eval.ks=[20]',
                                f"train.nproc={spec['nproc']}"] + spec['sets'])
    dist = (distributed.worker_context(spec['nproc'], 'cpu', 600) if spec['nproc'] > 1
            else distributed.DistContext())
    data = load_data(config.data, required_modalities(config), log=False)
    model = build_model(config, data, 999)
    trainer = Trainer(model, data, config.train, config.eval, seed=999, dist=dist)
    batches_per_epoch = len(trainer.batches)
    count = min(spec['warmup'] + spec['batches'], batches_per_epoch)
    mark = {}

    profiler = torch.profiler.profile(record_shapes=True) if spec['profile'] else None

    def first_timed():
        mark['setup_hwm_kb'] = _status_kb('VmHWM')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current resident set
        mark['rss_kb'] = _status_kb('VmRSS')
        mark['faults'] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if profiler is not None:
            profiler.start()

    timed = TimedBatches(trainer.batches, count, first_timed, spec['warmup'])
    trainer.batches = timed
    trainer._train_epoch(1)
    end, end_cpu = time.perf_counter(), time.process_time()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - mark['faults']
    if profiler is not None:
        profiler.stop()
        if dist.is_main:
            table = profiler.key_averages(group_by_input_shape=True).table(
                sort_by='self_cpu_time_total', row_limit=40)
            Path(spec['profile']).write_text(
                f"{spec['name']} {spec['mode']} x{spec['nproc']}, process 0: the operators of "
                f"the {len(timed.stamps) - spec['warmup']} timed batches by self CPU time\n"
                f'{table}\n')
    steps = np.diff(np.asarray(timed.stamps[spec['warmup']:] + [end]))
    cpu = np.diff(np.asarray(timed.cpu[spec['warmup']:] + [end_cpu]))
    sizes = np.asarray(timed.sizes[spec['warmup']:], float).mean(axis=0)
    trainer.batches = timed.source
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sparse_rows = sum(p.numel() for p in trainer.sparse_tables.values())
    return {
        'users': int(data['user'].num_nodes), 'items': int(data['item'].num_nodes),
        'graph_edges': sum(data[et].edge_index.size(1) for et in data.edge_types),
        'interactions': int(data['user', 'interacts', 'item'].edge_index.size(1)),
        'batches_per_epoch': batches_per_epoch, 'timed_batches': len(steps),
        's_per_batch': float(steps.mean()), 's_per_epoch': float(steps.mean()) * batches_per_epoch,
        'cpu_s_per_batch': float(cpu.mean()),
        'minor_faults_per_batch': faults / len(steps),
        'cpu_s_per_epoch': float(cpu.mean()) * batches_per_epoch,
        'sub_users': float(sizes[0]), 'sub_items': float(sizes[1]), 'sub_edges': float(sizes[2]),
        'view_inputs': {m: float(v) for m, v in zip(MODALITIES, sizes[3:])},
        'step_peak_mb': (_status_kb('VmHWM') - mark['rss_kb']) / 1024,
        'peak_rss_mb': max(mark['setup_hwm_kb'], _status_kb('VmHWM')) / 1024,
        'trainable_params': params,
        'row_sparse_params': sparse_rows, 'sampler': trainer.batches.description,
        'rank': dist.rank,
    }


def time_one(args, root: Path, name: str, mode: str, nproc: int, batch_size: int) -> dict:
    """One timing job: a fresh process, or ``nproc`` data-parallel processes started by
    torchrun (gloo over loopback, each with ``--threads`` threads). For several processes the
    step is the slowest process's: CPU and wall seconds per batch, the peaks and the subgraph
    are the maxima over the processes (each process's subgraph is its share of the batch)."""
    profile = Path(args.out).resolve() / f'profile-{name}-{mode}-x{nproc}-B{batch_size}.txt'
    spec = {'root': str(root), 'name': name, 'mode': mode, 'fanout': args.fanout,
            'threads': args.threads, 'batches': args.batches, 'warmup': args.warmup,
            'batch_size': batch_size, 'sets': args.set, 'nproc': nproc,
            'profile': str(profile) if args.profile else None}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    command = [sys.executable, __file__, '--worker', json.dumps(spec)]
    if nproc > 1:
        from anchorrec_pyg.train.distributed import free_port
        command[1:1] = ['-m', 'torch.distributed.run', f'--nproc-per-node={nproc}',
                        '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{free_port()}']
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'{name} {mode} x{nproc} failed: {proc.stderr.strip()[-2000:]}')
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    if len(runs) != nproc:
        raise SystemExit(f'{name} {mode} x{nproc}: {len(runs)} of {nproc} processes reported')
    run = min(runs, key=lambda r: r['rank'])
    for key in ('s_per_batch', 's_per_epoch', 'cpu_s_per_batch', 'cpu_s_per_epoch',
                'sub_users', 'sub_items', 'sub_edges', 'step_peak_mb', 'peak_rss_mb',
                'minor_faults_per_batch'):
        run[key] = max(r[key] for r in runs)
    run['view_inputs'] = {m: max(r['view_inputs'][m] for r in runs) for m in MODALITIES}
    return run


def accuracy_one(args, root: Path, name: str, mode: str, seed: int, scratch: Path) -> dict:
    """One ``anchorrec-pyg train`` job of ``--acc-epochs`` epochs, evaluated at the end."""
    out = scratch / f'acc-{mode}-{seed}'
    sets = [f'data.root={root}', f'data.name={name}', f'train.mode={mode}',
            f'train.fanout={args.fanout}', f'train.epochs={args.acc_epochs}',
            'train.patience=null', f'train.eval_every={args.acc_epochs}',
            f'train.checkpoint_every={args.acc_epochs}', f'seeds=[{seed}]', 'train.device=cpu',
            'eval.ks=[20]', f'train.num_threads={args.threads}',
            f'train.batch_size={args.batch_sizes[0]}'] + args.set
    if mode == 'sampled' and args.acc_sparse:
        sets.append('train.sparse_updates=true')
    command = [sys.executable, '-m', 'anchorrec_pyg.cli', 'train', '--quiet', '--out', str(out)]
    for s in sets:
        command += ['--set', s]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'accuracy {mode} {seed} failed: {proc.stderr.strip()[-2000:]}')
    with open(out / 'history.csv') as f:
        history = list(csv.DictReader(f))
    return {'mode': mode, 'seed': seed, 'valid_recall@20': float(history[-1]['valid_recall@20']),
            'train_s_per_epoch': float(np.mean([float(r['train_time_s']) for r in history])),
            'wall_s': time.perf_counter() - start}


def slope(sizes: list, values: list) -> float:
    """Least-squares slope of log(values) on log(sizes)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0]) if len(sizes) > 1 else math.nan


def per_doubling(sizes: list, values: list) -> list:
    """The growth per doubling between consecutive sizes, ``(v2 / v1) ** (1 / log2(s2 / s1))``."""
    return [(v2 / v1) ** (1 / math.log2(s2 / s1))
            for s1, s2, v1, v2 in zip(sizes, sizes[1:], values, values[1:])]


def median_run(runs: list) -> dict:
    """One row from the rounds of a timing job: the round of median CPU seconds per batch
    (the lower middle one for an even count), with every round's CPU seconds per batch in
    ``rounds_cpu_s_per_batch``."""
    ordered = sorted(runs, key=lambda r: r['cpu_s_per_batch'])
    return dict(ordered[(len(ordered) - 1) // 2],
                rounds_cpu_s_per_batch=[r['cpu_s_per_batch'] for r in runs])


def cpu_cell(run: dict) -> str:
    """CPU seconds per batch, with the range over the rounds when there were several."""
    spread = run['rounds_cpu_s_per_batch']
    return (f"{run['cpu_s_per_batch']:.3f}" if len(spread) == 1 else
            f"{run['cpu_s_per_batch']:.3f} ({min(spread):.3f}-{max(spread):.3f})")


def label(run: dict, with_batch: bool = False) -> str:
    """A timing row's mode, with its process count when several and its batch size when
    :obj:`with_batch` (several were timed)."""
    text = run['mode'] if run['nproc'] == 1 else f"{run['mode']} x{run['nproc']}"
    return f"{text} B={run['batch_size']}" if with_batch else text


def load_average() -> str:
    return ' '.join(f'{v:.1f}' for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--quick', action='store_true',
                        help='base 1/16 Baby, 10 timed batches, accuracy after 3 epochs')
    parser.add_argument('--base', type=float, help='size 1 as a fraction of Baby (default 1)')
    parser.add_argument('--sizes', default='1,2,4', help='multiples of the base (default 1,2,4)')
    parser.add_argument('--batches', type=int, help='timed batches per job (default 30)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed batches first')
    parser.add_argument('--repeat', type=int, default=1,
                        help='rounds of every timing job (each round times every size and '
                             'mode once, sizes interleaved); a row is the median round')
    parser.add_argument('--batch-size', default='2048',
                        help='train.batch_size (B), one or several (e.g. 128,512,2048): every '
                             'B is timed for every size and mode, in the same rounds; the '
                             'accuracy runs use the first (default 2048)')
    parser.add_argument('--fanout', default='[5,2]', help='train.fanout of sampled mode')
    parser.add_argument('--modes', default='full,sampled,sampled-sparse',
                        help='full, sampled (dense Adam), sampled-sparse (train.sparse_updates)')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads per process')
    parser.add_argument('--nproc', default='1',
                        help='data-parallel processes per job, one or several (e.g. 1,2): '
                             'each count is timed for every size and mode')
    parser.add_argument('--sizes-for', action='append', default=[], metavar='MODE=SIZES',
                        help='the sizes of one mode only (e.g. full=1,2,4); default --sizes')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='a config override for every job (e.g. model.n_layers=2)')
    parser.add_argument('--profile', action='store_true',
                        help='also write each timing job\'s torch.profiler table (operators '
                             'by self CPU time, with input shapes) to --out')
    parser.add_argument('--no-timing', action='store_true', help='the accuracy runs only')
    parser.add_argument('--no-accuracy', action='store_true', help='the timing only')
    parser.add_argument('--acc-epochs', type=int,
                        help='epochs of the accuracy runs (default 10; --quick 3)')
    parser.add_argument('--seeds', default='999,777', help='seeds of the accuracy runs')
    parser.add_argument('--parallel', type=int, default=1, help='accuracy jobs at a time')
    parser.add_argument('--acc-sparse', action='store_true',
                        help='the sampled accuracy runs with train.sparse_updates')
    parser.add_argument('--data-root', default=str(Path(tempfile.gettempdir()) /
                                                   'anchorrec-scale-data'))
    parser.add_argument('--out', default='scale-results', help='folder for scale.json')
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.repeat < 1:
        parser.error(f'--repeat {args.repeat}: expected at least 1')
    try:
        args.batch_sizes = [int(b) for b in args.batch_size.split(',')]
    except ValueError:
        parser.error(f'--batch-size {args.batch_size}: expected integers separated by commas')
    if min(args.batch_sizes) < 1:
        parser.error(f'--batch-size {args.batch_size}: every B must be at least 1')
    several = len(args.batch_sizes) > 1
    base = args.base if args.base is not None else (0.0625 if args.quick else 1.0)
    sizes = [float(s) for s in args.sizes.split(',')]
    args.batches = args.batches or (10 if args.quick else 30)
    args.acc_epochs = args.acc_epochs or (3 if args.quick else 10)
    seeds = [int(s) for s in args.seeds.split(',')]
    data_root, out = Path(args.data_root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(',')
    nprocs = [int(n) for n in args.nproc.split(',')]
    mode_sizes = {mode: sizes for mode in modes}
    for item in args.sizes_for:
        mode, _, listed = item.partition('=')
        if mode not in mode_sizes:
            parser.error(f'--sizes-for {item}: {mode} is not in --modes')
        mode_sizes[mode] = [float(s) for s in listed.split(',')]
    print(f'AnchorRec, Baby-shaped synthetic data, size 1 = {base:g} x Baby; B = '
          f'{args.batch_size}; sampled: fan-out {args.fanout}; modes {modes}; '
          f'{args.threads} thread(s) per process; {os.cpu_count()} CPUs; overrides '
          f'{args.set}; load average {load_average()}', flush=True)
    result = {'base': base, 'sizes': sizes, 'fanout': args.fanout, 'threads': args.threads,
              'batch_sizes': args.batch_sizes, 'cpus': os.cpu_count()}

    if not args.no_timing:
        names = {size: dataset(data_root, base * size)
                 for size in sorted({s for listed in mode_sizes.values() for s in listed})}
        rounds: dict = {}
        for round_ in range(1, args.repeat + 1):
            for size, name in names.items():
                for mode, nproc, batch in ((m, n, b) for m in modes if size in mode_sizes[m]
                                           for n in nprocs for b in args.batch_sizes):
                    run = time_one(args, data_root, name, mode, nproc, batch)
                    run.update(size=size, data=name, mode=mode, nproc=nproc, batch_size=batch,
                               round=round_, load=load_average())
                    rounds.setdefault((size, mode, nproc, batch), []).append(run)
                    print(f"  round {round_}: {name} {label(run, several):14s}: CPU "
                          f"{run['cpu_s_per_batch']:.3f} s/batch x "
                          f"{run['batches_per_epoch']} = {run['cpu_s_per_epoch']:.1f} "
                          f"s/epoch (wall {run['s_per_batch']:.3f} s/batch; load "
                          f"{run['load']}); subgraph {run['sub_users']:,.0f} users, "
                          f"{run['sub_items']:,.0f} items, {run['sub_edges']:,.0f} edges; "
                          f"view inputs {run['view_inputs']}; step peak "
                          f"{run['step_peak_mb']:.0f} MB; "
                          f"{run['minor_faults_per_batch']:,.0f} page faults/batch", flush=True)
        timing = [median_run(runs) for runs in rounds.values()]
        print(f"\n{timing[-1]['sampler']}; {args.batches} timed batches after {args.warmup}"
              + (f'; CPU s/batch: the median of {args.repeat} rounds (min-max)'
                 if args.repeat > 1 else ''))
        print('\n| x Baby | users / items / interactions | mode (x processes, B) | CPU s/batch '
              '| CPU s/epoch (est.) | wall s/batch | subgraph users | subgraph items '
              '| subgraph edges | view inputs mm / text / image | step peak MB | peak RSS MB '
              '| load |')
        print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
        for r in timing:
            share = (lambda v, n: f'{v:,.0f} ({100 * v / n:.0f}%)')
            full_edges = r['graph_edges']
            print(f"| {base * r['size']:g} | {r['users']:,} / {r['items']:,} / "
                  f"{r['interactions']:,} | {label(r, several)} | {cpu_cell(r)} | "
                  f"{r['cpu_s_per_epoch']:.1f} | {r['s_per_batch']:.3f} | "
                  f"{share(r['sub_users'], r['users'])} | "
                  f"{share(r['sub_items'], r['items'])} | {share(r['sub_edges'], full_edges)} "
                  f"| {' / '.join(share(r['view_inputs'][m], r['items']) for m in MODALITIES)} "
                  f"| {r['step_peak_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['load']} |")
        print('\n| mode | sizes | growth exponent (CPU s/epoch ~ size^a) | per doubling (fit) '
              '| per doubling, size to size |')
        print('|---|---|---|---|---|')
        exponents, doublings = {}, {}
        for key in dict.fromkeys(label(r, several) for r in timing):
            rows = [r for r in timing if label(r, several) == key]
            xs, ys = [r['size'] for r in rows], [r['cpu_s_per_epoch'] for r in rows]
            a = slope(xs, ys)
            exponents[key], doublings[key] = a, per_doubling(xs, ys)
            steps = ', '.join(f'{base * s1:g}->{base * s2:g}: {g:.2f}x'
                              for s1, s2, g in zip(xs, xs[1:], doublings[key]))
            print(f"| {key} | {', '.join(f'{base * x:g}' for x in xs)} | {a:.2f} | "
                  f'{2 ** a:.2f}x | {steps} |')
        result.update(timing=timing, exponents=exponents, per_doubling=doublings)

    if not args.no_accuracy:
        name = dataset(data_root, base * sizes[0])
        jobs = [(mode, seed) for seed in seeds for mode in ('full', 'sampled')]
        with tempfile.TemporaryDirectory() as scratch, \
                ThreadPoolExecutor(args.parallel) as pool:
            accuracy = list(pool.map(
                lambda job: accuracy_one(args, data_root, name, job[0], job[1], Path(scratch)),
                jobs))
        print(f'\nvalidation Recall@20 after {args.acc_epochs} epochs, {base * sizes[0]:g} x '
              f'Baby, B = {args.batch_sizes[0]}, sampled: fan-out {args.fanout}, '
              f"{'row-sparse' if args.acc_sparse else 'dense'} updates; {args.parallel} job(s) "
              f'at a time (load average {load_average()}):')
        print('| mode | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean | s/epoch |')
        print('|---|' + '---|' * (len(seeds) + 2))
        means = {}
        for mode in ('full', 'sampled'):
            rows = [r for r in accuracy if r['mode'] == mode]
            means[mode] = float(np.mean([r['valid_recall@20'] for r in rows]))
            print(f'| {mode} | ' + ' | '.join(f"{r['valid_recall@20']:.4f}" for r in rows) +
                  f" | {means[mode]:.4f} | "
                  f"{np.mean([r['train_s_per_epoch'] for r in rows]):.1f} |")
        gap = (means['sampled'] - means['full']) / means['full']
        print(f'sampled vs full: {100 * gap:+.1f}% (relative)')
        result.update(acc_epochs=args.acc_epochs, accuracy=accuracy, relative_gap=gap)
    (out / 'scale.json').write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {out / "scale.json"}')


if __name__ == '__main__':
    main()
