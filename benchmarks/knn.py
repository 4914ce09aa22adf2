"""Time and peak memory of the exact cosine kNN (anchorrec_pyg.data.knn.cosine_knn) for
growing item counts, against the dense reference (full I x I similarity matrix + topk).

Each measurement runs in a fresh process. Wall time depends on what else runs on the machine;
CPU time (all threads) divided by the thread count estimates the wall time on free cores.
Peak memory is the process's peak resident set (VmHWM from /proc/self/status, or
``resource.getrusage`` elsewhere), i.e. everything: the interpreter, torch, the [I, d] float32
input and the kNN's working memory.

    python benchmarks/knn.py                                   # I up to 100,000, d = 4,096
    python benchmarks/knn.py --sizes 1000,5000 --dim 384 --dense-max 5000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from anchorrec_pyg.data.knn import DEFAULT_MEMORY_BUDGET_BYTES, choose_block_size, cosine_knn

GIB = 2**30


def peak_rss_bytes() -> int:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def dense_knn(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    xn = x / x.norm(dim=1, keepdim=True)
    val, idx = (xn @ xn.T).topk(k, dim=1)
    return idx, val


def worker(method: str, items: int, dim: int, k: int, budget: int, seed: int,
           out: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(items, dim, generator=generator)
    start, cpu_start = time.perf_counter(), time.process_time()
    if method == 'chunked':
        idx, _ = cosine_knn(x, k, memory_budget_bytes=budget)
    else:
        idx, _ = dense_knn(x, k)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    torch.save(idx.sort(dim=1).values, out)
    print(json.dumps({'seconds': seconds, 'cpu': cpu, 'peak': peak_rss_bytes()}))


def run(method: str, args: argparse.Namespace, items: int, folder: str) -> dict:
    path = os.path.join(folder, f'{method}-{items}.pt')
    cmd = [sys.executable, __file__, '--worker', method, '--sizes', str(items), '--dim',
           str(args.dim), '--k', str(args.k), '--budget-mib', str(args.budget_mib),
           '--seed', str(args.seed), '--out', path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result['index'] = torch.load(path, weights_only=True)
    os.unlink(path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='1000,5000,10000,25000,50000,100000')
    parser.add_argument('--dim', type=int, default=4096)
    parser.add_argument('--k', type=int, default=10)
    parser.add_argument('--budget-mib', type=int, default=DEFAULT_MEMORY_BUDGET_BYTES // 2**20)
    parser.add_argument('--dense-max', type=int, default=25000,
                        help='largest I for which the dense reference is also run')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--worker', choices=['chunked', 'dense'], help=argparse.SUPPRESS)
    parser.add_argument('--out', help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(',')]
    budget = args.budget_mib * 2**20
    if args.worker:
        worker(args.worker, sizes[0], args.dim, args.k, budget, args.seed, args.out)
        return

    print(f'exact cosine kNN, d = {args.dim}, k = {args.k}, budget {args.budget_mib} MiB, '
          f'{torch.get_num_threads()} threads, float32; peak = whole-process peak RSS')
    print(f'| {"I":>7} | input GiB | block | chunked s | chunked CPU s | chunked peak GiB | '
          f'dense s | '
          f'dense peak GiB | dense I*I GiB | rows with same neighbours |')
    print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
    folder = tempfile.mkdtemp(prefix='knn-bench-')
    for items in sizes:
        chunked = run('chunked', args, items, folder)
        block = choose_block_size(items, None, budget)
        dense_cells = ['-', '-', '-']
        if items <= args.dense_max:
            dense = run('dense', args, items, folder)
            same = (dense['index'] == chunked['index']).all(dim=1).float().mean()
            dense_cells = [f'{dense["seconds"]:.1f}', f'{dense["peak"] / GIB:.2f}',
                           f'{100 * float(same):.2f}%']
        print(f'| {items:>7} | {items * args.dim * 4 / GIB:.2f} | {block} | '
              f'{chunked["seconds"]:.1f} | {chunked["cpu"]:.1f} | {chunked["peak"] / GIB:.2f} | '
              f'{dense_cells[0]} | '
              f'{dense_cells[1]} | {items * items * 4 / GIB:.2f} | {dense_cells[2]} |',
              flush=True)
    os.rmdir(folder)


if __name__ == '__main__':
    main()
