"""The optimiser step of one node table, per updated row: PyTorch's fused dense Adam over every
row, torch.optim.SparseAdam and the package's RowAdam (lazy row-sparse Adam,
``train.sparse_updates``) over the rows of a sparse gradient, side by side in one process.

    python benchmarks/row_adam.py                      # 28,200 x 4,096 (4x Baby's image copy)
    python benchmarks/row_adam.py --rows 77780 --width 64 --fractions 0.3,1

The sparse gradient holds a random ``fraction`` of the rows, distinct and in random order (as a
subgraph's ``n_id`` gives them through ``embedding(..., sparse=True)``); the dense gradient is the
whole table. Each optimiser runs ``--repeats`` steps after one warm-up step on its own copy of
the table; the median CPU time of a step (``time.process_time``, ``--threads`` threads) is
printed with the cost per updated row relative to fused dense Adam over every row
(``t / (fraction * t_dense)``), as a markdown table with ``uptime``'s load average.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from anchorrec_pyg.train.optim import RowAdam  # noqa: E402

warnings.filterwarnings('ignore', message='.*[Ss]parse.*')


def load() -> str:
    return subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()


def step_seconds(make_optimizer, table: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    """The median CPU seconds of one optimiser step on a fresh copy of ``table``."""
    param = torch.nn.Parameter(table.clone())
    optimizer = make_optimizer(param)
    times = []
    for _ in range(repeats + 1):
        param.grad = grad
        start = time.process_time()
        optimizer.step()
        times.append(time.process_time() - start)
    del optimizer, param
    gc.collect()
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=28200, help='table rows (I)')
    parser.add_argument('--width', type=int, default=4096, help='table width (f)')
    parser.add_argument('--fractions', default='0.05,0.4,1',
                        help='fractions of the rows in the sparse gradient')
    parser.add_argument('--repeats', type=int, default=5, help='timed steps per optimiser')
    parser.add_argument('--threads', type=int, default=1, help='torch threads')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(args.rows, args.width, generator=gen)
    print(f'{args.rows:,} x {args.width:,} table, {args.threads} thread(s), median of '
          f'{args.repeats} steps; before: {load()}', flush=True)
    dense = step_seconds(lambda p: torch.optim.Adam([p], lr=1e-3, fused=True), table,
                         torch.randn(args.rows, args.width, generator=gen), args.repeats)
    lines = ['| rows in the gradient | fused Adam, every row (s) | SparseAdam (s) | per row '
             'vs fused | RowAdam (s) | per row vs fused | RowAdam vs SparseAdam |',
             '|---|---|---|---|---|---|---|']
    for fraction in (float(f) for f in args.fractions.split(',')):
        n = max(1, round(fraction * args.rows))
        rows = torch.randperm(args.rows, generator=gen)[:n]
        grad = torch.sparse_coo_tensor(rows[None], torch.randn(n, args.width, generator=gen),
                                       (args.rows, args.width))
        sparse = step_seconds(lambda p: torch.optim.SparseAdam([p], lr=1e-3), table, grad,
                              args.repeats)
        row = step_seconds(lambda p: RowAdam([p], lr=1e-3), table, grad, args.repeats)
        share = n / args.rows
        lines.append(f'| {n:,} ({share:.0%}) | {dense:.4f} | {sparse:.4f} | '
                     f'{sparse / (share * dense):.1f}x | {row:.4f} | {row / (share * dense):.1f}x'
                     f' | {sparse / row:.1f}x faster |')
        print(lines[-1], flush=True)
    print()
    print('\n'.join(lines))
    print(f'after: {load()}')


if __name__ == '__main__':
    main()
