"""Time to generate, process (first load) and reload (cache hit) the synthetic presets with
MMRecDataset, plus each dataset's size and its popularity-ranking Recall@20.

    python benchmarks/dataset_processing.py                  # presets default and baby
    python benchmarks/dataset_processing.py --presets tiny --root /tmp/ds
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from anchorrec_pyg.data import MMRecDataset, generate_synthetic, popularity_recall
from anchorrec_pyg.schema import USER_ITEM, feature_key


def measure(root: Path, preset: str) -> str:
    start = time.perf_counter()
    generate_synthetic(root, preset, preset=preset, seed=0, overwrite=True)
    generate_s = time.perf_counter() - start

    start = time.perf_counter()
    dataset = MMRecDataset(root, preset, force_reload=True, log=False)
    process_s = time.perf_counter() - start
    start = time.perf_counter()
    again = MMRecDataset(root, preset, log=False)
    reload_s = time.perf_counter() - start
    assert again.processed_paths == dataset.processed_paths

    data = again[0]
    store = data[USER_ITEM]
    splits = ('edge_index', 'val_edge_index', 'test_edge_index')
    num_inter = sum(store[key].size(1) for key in splits)
    size_mib = Path(dataset.processed_paths[0]).stat().st_size / 2**20
    dims = '/'.join(str(data['item'][feature_key(m)].size(1)) for m in ('image', 'text', 'mm'))
    return (f'| {preset} | {data["user"].num_nodes} | {data["item"].num_nodes} | {num_inter} '
            f'({store.edge_index.size(1)} train) | {dims} | {generate_s:.2f} | {process_s:.2f} | '
            f'{reload_s:.2f} | {size_mib:.0f} | {popularity_recall(data, 20, "valid"):.4f} | '
            f'{popularity_recall(data, 20, "test"):.4f} |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--presets', default='default,baby')
    parser.add_argument('--root', help='where to write the datasets (default: a temp folder)')
    args = parser.parse_args()
    print(f'{torch.get_num_threads()} threads; process = first MMRecDataset(...) incl. '
          'hashing, reading, 3 kNN graphs (k = 10) and saving; reload = second load (cache hit)')
    print('| preset | users | items | interactions | image/text/mm dim | generate s | '
          'process s | reload s | processed MiB | popularity R@20 valid | test |')
    print('|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|')
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        for preset in args.presets.split(','):
            print(measure(root, preset), flush=True)


if __name__ == '__main__':
    main()
