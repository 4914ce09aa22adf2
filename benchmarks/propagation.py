"""Forward and forward+backward time of one propagation of each AnchorRec graph, per backend.

    python benchmarks/propagation.py                      # Baby-shaped data, d = 64, 2 threads
    python benchmarks/propagation.py --dataset default --threads 1 --repeats 5

Graphs (SPEC §2, Baby shape): the symmetric user-item graph over U + I nodes (one LightGCN
layer), R (U x I, the user part of a modality view), each item-item kNN graph, and the two fused
products of the ``fast`` backend (the three kNN graphs block-diagonally; R applied to the three
views side by side, d' = 3d). Backends: PyG MessagePassing on ``edge_index`` (``pyg``, the
reference), ``torch.sparse`` COO and CSR with torch's autograd, PyG ``EdgeIndex``, torch-sparse
``SparseTensor`` when installed, and the ``fast`` backend. Competing variants are timed in
interleaved repetitions (medians). GB/s counts the bytes a sparse product must move,
``nnz * (4 d + 12) + rows * 4 d`` (gathered source rows, value + int64 column index, output rows),
next to the copy bandwidth measured here (``clone`` of 256 MiB: read + write). CUDA columns are
added when a GPU is present.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Callable

import torch
from torch import Tensor

from anchorrec_pyg.config import DataConfig
from anchorrec_pyg.nn.lightgcn import user_item_edges
from anchorrec_pyg.nn.propagation import get_backend, propagate_many
from anchorrec_pyg.schema import ITEM_USER, MODALITIES, USER_ITEM, knn_edge_type
from anchorrec_pyg.train.runner import load_data

warnings.filterwarnings('ignore', message='.*[Ss]parse.*')


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """GB/s of a 256 MiB clone (read + write)."""
    x = torch.empty(64 * 2**20, device=device).uniform_()
    y = torch.empty_like(x)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        y.copy_(x)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * x.numel() * 4 / statistics.median(times[1:]) / 1e9


class Graph:
    """One propagation: ``edge_index`` (row 0 source), weights, size and feature width."""

    def __init__(self, name: str, edge_index: Tensor, edge_weight: Tensor, size: tuple[int, int],
                 width: int) -> None:
        self.name, self.edge_index, self.edge_weight = name, edge_index, edge_weight
        self.size, self.width = size, width

    def bytes(self) -> int:
        nnz = self.edge_index.size(1)
        return nnz * (4 * self.width + 12) + self.size[1] * 4 * self.width


def coo_operator(graph: Graph) -> Callable[[Tensor], Tensor]:
    matrix = torch.sparse_coo_tensor(graph.edge_index.flip(0), graph.edge_weight,
                                     (graph.size[1], graph.size[0])).coalesce()
    return lambda x: torch.sparse.mm(matrix, x)


def edge_index_operator(graph: Graph) -> Callable[[Tensor], Tensor]:
    from torch_geometric import EdgeIndex
    index = EdgeIndex(graph.edge_index.flip(0), sparse_size=(graph.size[1], graph.size[0]))
    index, perm = index.sort_by('row')
    weight = graph.edge_weight[perm]
    return lambda x: index.matmul(x, input_value=weight)


def sparse_tensor_operator(graph: Graph) -> Callable[[Tensor], Tensor]:
    from torch_sparse import SparseTensor
    matrix = SparseTensor(row=graph.edge_index[1], col=graph.edge_index[0],
                          value=graph.edge_weight, sparse_sizes=(graph.size[1], graph.size[0]))
    return lambda x: matrix @ x


def backend_operator(name: str) -> Callable[[Graph], Callable[[Tensor], Tensor]]:
    def build(graph: Graph) -> Callable[[Tensor], Tensor]:
        adj = get_backend(name).adjacency(graph.edge_index, graph.edge_weight, graph.size)
        return lambda x: adj @ x
    return build


def available_backends() -> dict[str, Callable[[Graph], Callable[[Tensor], Tensor]]]:
    backends = {
        'pyg (MessagePassing)': backend_operator('pyg'),
        'torch COO': coo_operator,
        'torch_csr': backend_operator('torch_csr'),
        'PyG EdgeIndex': edge_index_operator,
    }
    try:
        import torch_sparse  # noqa: F401
        backends['torch-sparse SparseTensor'] = sparse_tensor_operator
    except ImportError:
        pass
    backends['fast'] = backend_operator('fast')
    return backends


def fused_operators(graphs: dict[str, Graph], dim: int):
    """The two fused products of the fast backend, each next to the same products done as three
    separate calls (pyg and fast): ``(Graph for byte counting, {name: operator})``."""
    knn = [graphs[f'kNN {m}'] for m in MODALITIES]
    r = graphs['R (U x I)']
    num_items = knn[0].size[0]
    block_index = torch.cat([g.edge_index + i * num_items for i, g in enumerate(knn)], dim=1)
    block = Graph('3 kNN block-diag', block_index, torch.cat([g.edge_weight for g in knn]),
                  (3 * num_items, 3 * num_items), dim)
    wide = Graph('R x 3 views side by side', r.edge_index, r.edge_weight, r.size, 3 * dim)
    block_ops, wide_ops = {}, {}
    for name in ('pyg', 'fast'):
        backend = get_backend(name)
        adjs = [backend.adjacency(g.edge_index, g.edge_weight, g.size) for g in knn]
        r_adj = backend.adjacency(r.edge_index, r.edge_weight, r.size)
        label = 'pyg (MessagePassing), 3 calls' if name == 'pyg' else 'fast, 3 calls'
        block_ops[label] = (lambda x, a=adjs: torch.cat([m @ v for m, v in zip(a, x.chunk(3))]))
        wide_ops[label] = (lambda x, a=r_adj: torch.cat([a @ v for v in x.chunk(3, dim=1)],
                                                        dim=1))
        if name == 'fast':
            block_ops['fast (fused)'] = (
                lambda x, a=adjs: torch.cat(propagate_many(a, list(x.chunk(3)))))
            wide_ops['fast (fused)'] = (lambda x, a=r_adj: torch.cat(
                propagate_many([a] * 3, list(x.chunk(3, dim=1))), dim=1))
    return [(block, block_ops), (wide, wide_ops)]


def time_ops(ops: dict[str, Callable[[Tensor], Tensor]], x: Tensor, device: torch.device,
             repeats: int) -> dict[str, tuple[float, float]]:
    """Median forward and forward+backward seconds of each operator, interleaved."""
    grad = torch.randn(1, device=device)
    forward: dict[str, list[float]] = {k: [] for k in ops}
    both: dict[str, list[float]] = {k: [] for k in ops}
    for rep in range(repeats + 1):
        for name, op in ops.items():
            with torch.no_grad():
                synchronize(device)
                start = time.perf_counter()
                op(x)
                synchronize(device)
                forward[name].append(time.perf_counter() - start)
            xg = x.detach().requires_grad_()
            synchronize(device)
            start = time.perf_counter()
            out = op(xg)
            out.backward(grad.expand_as(out))
            synchronize(device)
            both[name].append(time.perf_counter() - start)
    return {k: (statistics.median(forward[k][1:]), statistics.median(both[k][1:])) for k in ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', default='baby', help='synthetic preset (default: baby)')
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(DataConfig(root=None, name=args.dataset), MODALITIES, log=False)
    num_users, num_items = int(data['user'].num_nodes), int(data['item'].num_nodes)
    ui, iu = data[USER_ITEM], data[ITEM_USER]
    ei, ew = user_item_edges(ui.edge_index, ui.edge_weight, iu.edge_index, iu.edge_weight,
                             num_users)
    n = num_users + num_items
    graphs = {'user-item (U+I)': Graph('user-item (U+I)', ei, ew, (n, n), args.dim),
              'R (U x I)': Graph('R (U x I)', iu.edge_index, iu.edge_weight,
                                 (num_items, num_users), args.dim)}
    for m in MODALITIES:
        store = data[knn_edge_type(m)]
        graphs[f'kNN {m}'] = Graph(f'kNN {m}', store.edge_index, store.edge_weight,
                                   (num_items, num_items), args.dim)

    devices = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available()
                                       else [])
    print(f'# Propagation, {args.dataset} shape: U={num_users} I={num_items}, d={args.dim}, '
          f'{args.threads} CPU threads, load average {os.getloadavg()[0]:.1f} '
          f'(medians of {args.repeats} interleaved repetitions)')
    for device in devices:
        bandwidth = copy_bandwidth(device, args.repeats)
        print(f'\n## {device.type}: measured copy bandwidth {bandwidth:.1f} GB/s\n')
        print('| graph | nnz | backend | forward ms | fwd+bwd ms | fwd GB/s | vs pyg fwd+bwd |')
        print('|---|---|---|---|---|---|---|')
        backends = available_backends()
        rows = [(g, {name: build(_on(g, device)) for name, build in backends.items()})
                for g in graphs.values()]
        rows += fused_operators({k: _on(g, device) for k, g in graphs.items()}, args.dim)
        reference: dict[str, float] = {}
        for graph, ops in rows:
            x = torch.randn(graph.size[0], graph.width, device=device)
            times = time_ops(ops, x, device, args.repeats)
            for name, (fwd, both) in times.items():
                if name.startswith('pyg'):
                    reference[graph.name] = both
                ratio = reference.get(graph.name)
                speedup = f'{ratio / both:.1f}x' if ratio else 'n/a'
                print(f'| {graph.name} | {graph.edge_index.size(1)} | {name} | {fwd * 1e3:.2f} '
                      f'| {both * 1e3:.2f} | {graph.bytes() / fwd / 1e9:.1f} | {speedup} |')
        if 'torch-sparse SparseTensor' not in backends:
            print('\n(torch-sparse is not installed: no SparseTensor rows)')
    if len(devices) == 1:
        print('\nCUDA: not measured (no GPU on this machine); the script adds CUDA tables when '
              'torch.cuda.is_available().')


def _on(graph: Graph, device: torch.device) -> Graph:
    return Graph(graph.name, graph.edge_index.to(device), graph.edge_weight.to(device),
                 graph.size, graph.width)


if __name__ == '__main__':
    main()
