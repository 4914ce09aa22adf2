"""AnchorRec training-epoch time, validation time, setup time and peak RSS, per variant, plus the
floor of one epoch on this machine.

    python benchmarks/train_epoch.py                         # Baby-shaped data, 2 threads
    python benchmarks/train_epoch.py --max-batches 8 --variants reference,fast
    python benchmarks/train_epoch.py --dataset default --threads 1
    python benchmarks/train_epoch.py --variants '' --pair fast+files,fast --interleave 8

Variants (each in its own process, so that peak RSS is its own): ``reference`` is the PyG
message-passing backend with PyTorch's per-tensor Adam loop and no feature-gradient buffer (the
switchable speed-ups off; the loss-side ones, see ``docs/speed.md``, are always on); every
registered backend name (``pyg``, ``torch_csr``, ``fast``) runs with the trainer's fused Adam
and the model's defaults; ``name:MB`` sets ``model.similarity_cache_mb`` (the memory budget of
the cached raw similarity matrices, default 128: the image table's only), e.g. ``fast:0``;
a ``+files`` suffix sets ``model.raw_from_files`` (AAL's mixture and AMP's targets read the
files' rows, which can be cached; the default reads the trained copies, recomputed per batch).
A step is exactly the trainer's (zero_grad, forward, SPEC §4 loss with the configured
B, backward, Adam). Because the machine's load changes between processes, two variants
(``--pair``, default ``reference`` and ``fast``) are also trained side by side in one process,
alternating every step (``--interleave``); ``--variants ''`` runs only that.
With ``--max-batches N`` only N batches are timed and the epoch time is the first step plus
the median step times the remaining batches (the first step, which builds the cached
similarity matrices of fixed rows, is reported apart). Setup = loading the processed dataset
(cache hit) + building the model; ``process`` = processing the MMRec files from scratch (3 kNN
graphs) + building the model. The validation pass uses the trainer's evaluator (1024 users per
batch).

The floor: GEMM GFLOP/s and copy GB/s are measured here; one step's FLOPs and bytes are counted
from the data's shapes and the batch's distinct positives (the arithmetic is printed).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

from anchorrec_pyg.config import DataConfig, EvalConfig
from anchorrec_pyg.models.anchorrec import AnchorRec
from anchorrec_pyg.models.similarity import cached_similarities
from anchorrec_pyg.nn.propagation import BACKENDS
from anchorrec_pyg.schema import MODALITIES, USER_ITEM, feature_key
from anchorrec_pyg.train.evaluator import Evaluator
from anchorrec_pyg.train.runner import load_data
from anchorrec_pyg.train.sampler import TripletSampler

warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
BATCH = 2048


def build(data, variant: str) -> tuple[AnchorRec, torch.optim.Optimizer]:
    """The model and optimizer of ``variant`` (``reference``, a backend name, ``name:MB``, any
    of them with ``+files``)."""
    variant, files, _ = variant.partition('+files')
    name, _, budget = variant.partition(':')
    reference = name == 'reference'
    options = {'propagation': 'pyg' if reference else name}
    if budget:
        options['similarity_cache_mb'] = float(budget)
    if reference:
        options['feature_grad_buffer'] = False
    if files:
        options['raw_from_files'] = True
    torch.manual_seed(0)
    model = AnchorRec(data, AnchorRec.Config(**options))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3,
                                 **({'foreach': False} if reference else {'fused': True}))
    return model, optimizer


def train_step(data, model, optimizer, users, pos, neg) -> float:
    """One trainer step (zero_grad, forward, loss, backward, Adam); returns its seconds."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    out = model(data)
    total, _ = model.loss(data, out, users, pos, neg, batch_size=BATCH)
    total.backward()
    optimizer.step()
    return time.perf_counter() - start


def interleaved(args: argparse.Namespace, variants: list[str]) -> dict[str, float]:
    """Median step seconds of ``variants`` trained side by side in this process, alternating
    the order every batch (robust to a changing machine load)."""
    data = load_data(DataConfig(root=None, name=args.dataset), MODALITIES, log=False)
    runs = {v: build(data, v) for v in variants}
    sampler = TripletSampler(data[USER_ITEM].edge_index,
                             int(data['item'].num_nodes), BATCH)
    times: dict[str, list[float]] = {v: [] for v in variants}
    batches = (b for epoch in itertools.count()  # as many epochs as it takes (tiny: 1 batch each)
               for b in sampler.epoch(torch.Generator().manual_seed(epoch)))
    for batch, (users, pos, neg) in enumerate(batches):
        if batch > args.interleave:
            break
        order = variants if batch % 2 else variants[::-1]
        for v in order:
            seconds = train_step(data, *runs[v], users, pos, neg)
            if batch:  # the first step builds the caches
                times[v].append(seconds)
    return {v: statistics.median(t) for v, t in times.items()}


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process: setup, timed training steps, validation passes."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_data(DataConfig(root=None, name=args.dataset), MODALITIES, log=False)
    model, optimizer = build(data, args.child)
    setup_s = time.perf_counter() - start

    sampler = TripletSampler(data[USER_ITEM].edge_index,
                             int(data['item'].num_nodes), BATCH)
    steps, distinct = [], []
    for batch, (users, pos, neg) in enumerate(sampler.epoch(torch.Generator().manual_seed(0))):
        if args.max_batches and batch >= args.max_batches:
            break
        steps.append(train_step(data, model, optimizer, users, pos, neg))
        distinct.append(pos.unique().numel())
    steady = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    epoch_s = sum(steps) if not args.max_batches else steps[0] + steady * (len(sampler) - 1)

    evaluator = Evaluator(data, (5, 10, 20, 50), EvalConfig().batch_size)
    evals = []
    for _ in range(3):
        start = time.perf_counter()
        evaluator.evaluate(model, data, 'valid')
        evals.append(time.perf_counter() - start)
    cached = cached_similarities(
        data, MODALITIES, model.config.similarity_cache_mb,
        fixed_rows=model.config.raw_from_files or model.config.freeze_features)
    return {
        'variant': args.child, 'cached': ','.join(cached) or '-',
        'setup_s': setup_s, 'epoch_s': epoch_s, 'first_step_s': steps[0],
        'step_s': steady, 'batches_timed': len(steps), 'batches': len(sampler),
        'eval_s': statistics.median(evals), 'distinct_pos': statistics.mean(distinct),
        'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_machine(threads: int) -> tuple[float, float]:
    """(GEMM GFLOP/s on the epoch's dominant shape, copy GB/s of 256 MiB)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(7050, 4096), torch.randn(4096, 64)
    out = torch.empty(7050, 64)
    times = []
    for _ in range(8):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    gflops = 2 * 7050 * 4096 * 64 / statistics.median(times[1:]) / 1e9
    x = torch.empty(64 * 2**20).uniform_()
    y = torch.empty_like(x)
    times = []
    for _ in range(8):
        start = time.perf_counter()
        y.copy_(x)
        times.append(time.perf_counter() - start)
    return gflops, 2 * x.numel() * 4 / statistics.median(times[1:]) / 1e9


def floor(data, distinct: float, batches: int, gflops: float, gbps: float) -> list[str]:
    """The printed arithmetic of one epoch's floor (FLOPs at GEMM speed + bytes at copy speed)
    for the computation as implemented: AAL and AMP on the D distinct positives of a batch,
    AMP's image target from the cached I x I block, mm and text from their f x f Gram matrices
    (D > f), sparse products and elementwise work not counted."""
    i, d, n, dd = int(data['item'].num_nodes), 64, BATCH, distinct
    dims = {m: data['item'][feature_key(m)].size(1) for m in MODALITIES}
    f_all = sum(dims.values())
    params = sum(p.numel() for p in AnchorRec(data, AnchorRec.Config()).parameters())
    gate = 3 * 2 * i * f_all * d  # P_m(F_m): forward, dW, dF (the tables train)
    heads = 2 * 2 * dd * (dims['text'] + dims['image']) * d  # W_t, W_v on raw rows: fwd, dW
    info_nce = 2 * 3 * 2 * dd * dd * d  # two InfoNCE on D x D logits: forward, two backward
    amp_image = 4 * dd * dd * d  # S_D (W E): forward and backward
    amp_feat = sum(4 * dd * dims[m] * d + 2 * dd * dims[m]**2 for m in ('mm', 'text'))
    flops = gate + heads + info_nce + amp_image + amp_feat
    adam = params * 4 * 7  # fused Adam reads p, g, m, v and writes p, m, v
    grads = params * 4  # the dense gradient of every parameter is written once
    gathers = 4 * dd * (dd + dims['image'] + dims['text'] + dims['mm'])  # S_D and raw rows
    moved = adam + grads + gathers
    step = flops / (gflops * 1e9) + moved / (gbps * 1e9)
    return [
        f'GEMM {gflops:.0f} GFLOP/s (7050x4096 @ 4096x64), copy {gbps:.1f} GB/s (256 MiB), '
        f'I={i}, d={d}, B={n}, feature widths {dims}, distinct positives/batch D={dd:.0f}, '
        f'{params / 1e6:.1f} M parameters',
        f'FLOPs/step: gates 3*2*I*({f_all})*d = {gate / 1e9:.2f} G; AAL heads 2*2*D*'
        f'({dims["text"]}+{dims["image"]})*d = {heads / 1e9:.2f} G; InfoNCE 2*3*2*D^2*d = '
        f'{info_nce / 1e9:.2f} G; AMP image 4*D^2*d = {amp_image / 1e9:.2f} G; AMP mm+text '
        f'sum(4*D*f*d + 2*D*f^2) = {amp_feat / 1e9:.2f} G; total {flops / 1e9:.2f} G'
        f' -> {flops / gflops / 1e9 * 1e3:.0f} ms',
        f'bytes/step: Adam 28*P = {adam / 1e9:.2f} GB; gradients 4*P = {grads / 1e9:.2f} GB; '
        f'gathers 4*D*(D+f_image+f_text+f_mm) = {gathers / 1e9:.2f} GB; total '
        f'{moved / 1e9:.2f} GB -> {moved / gbps / 1e9 * 1e3:.0f} ms',
        f'floor: {step * 1e3:.0f} ms/step x {batches} batches = {step * batches:.1f} s/epoch '
        '(sparse products, elementwise ops and the validation pass not counted)',
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', default='baby', help='synthetic preset (default: baby)')
    parser.add_argument('--variants', default='reference,' + ','.join(sorted(BACKENDS)))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--max-batches', type=int, default=0,
                        help='time only this many batches and extrapolate (0: a whole epoch)')
    parser.add_argument('--interleave', type=int, default=6,
                        help='steps of the --pair trained side by side in one process '
                        '(alternating) for the step-time ratio; 0: skip')
    parser.add_argument('--pair', default='reference,fast',
                        help='the two variants of --interleave, the baseline first')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args)))
        return

    if args.interleave:
        pair = args.pair.split(',')
        steps = interleaved(args, pair)
        print(f'Side by side in one process ({args.interleave} alternating steps each, '
              f'load average {os.getloadavg()[0]:.1f}): ' + ', '.join(
                  f'{v} {steps[v] * 1e3:.0f} ms/step' for v in pair) +
              f' -> {pair[1]} takes {steps[pair[1]] / steps[pair[0]]:.2f}x the time of '
              f'{pair[0]}\n')
    if not args.variants:
        return

    load_avg = os.getloadavg()[0]
    results = []
    for variant in args.variants.split(','):
        cmd = [sys.executable, __file__, '--child', variant, '--dataset', args.dataset,
               '--threads', str(args.threads), '--max-batches', str(args.max_batches)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = load_data(DataConfig(root=None, name=args.dataset, processed_dir=tmp), MODALITIES,
                         log=False)
        AnchorRec(data, AnchorRec.Config(propagation='fast'))
        process_s = time.perf_counter() - start

    print(f'# AnchorRec training on {args.dataset}: U={data["user"].num_nodes} '
          f'I={data["item"].num_nodes} E_train={data[USER_ITEM].num_edges}, '
          f'B={BATCH}, {args.threads} threads, load average {load_avg:.1f} -> '
          f'{os.getloadavg()[0]:.1f}')
    timed = ('whole epoch' if not args.max_batches else
             f'{args.max_batches} batches timed, epoch = first + median step x (batches - 1)')
    print(f'({timed}; setup = cached dataset load + model build; dataset processing from files '
          f'+ model build: {process_s:.1f} s)\n')
    print('| variant | cached I x I | epoch s | step ms | first step ms | valid pass s | setup s '
          '| peak RSS MB | epoch vs reference |')
    print('|---|---|---|---|---|---|---|---|---|')
    reference = next((r['epoch_s'] for r in results if r['variant'] == 'reference'), None)
    for r in results:
        ratio = f'{reference / r["epoch_s"]:.1f}x' if reference else 'n/a'
        print(f'| {r["variant"]} | {r["cached"]} | {r["epoch_s"]:.1f} | {r["step_s"] * 1e3:.0f} | '
              f'{r["first_step_s"] * 1e3:.0f} | {r["eval_s"]:.2f} | {r["setup_s"]:.1f} | '
              f'{r["peak_rss_mb"]:.0f} | {ratio} |')
    if torch.cuda.is_available():
        print('\nCUDA: run with train.device cuda (not part of this table).')
    else:
        print('\nCUDA: not measured (no GPU on this machine).')

    gflops, gbps = measure_machine(args.threads)
    print('\n## Floor\n')
    for line in floor(data, results[-1]['distinct_pos'], results[-1]['batches'], gflops, gbps):
        print(f'- {line}')


if __name__ == '__main__':
    main()
