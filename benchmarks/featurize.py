r"""featurize and recommend throughput, printed as tables.

1. ``featurize`` end to end (read, clean, k-core, split, encode, write) on a generated raw
   catalogue of ``--items`` items (texts of 8-20 words, 64 x 64 PNG images), one fresh process
   per row so that its peak memory (``ru_maxrss``) is its own: interactions only, text alone,
   images alone. Encoders: the tiny random ones of :mod:`anchorrec_pyg.data.tiny_encoders`
   unless ``--text-encoder`` (e.g. a local all-MiniLM-L6-v2 folder) and ``--vit`` (a ViT of
   ViT-Ti/16's shape, 224 x 224 inputs, random weights: the throughput of a real small image
   model, whose weights this machine cannot download) are given.
2. ``recommend`` for every user of the Baby-shaped preset (19,445 users, 7,050 items): a
   LightGCN trained for ``--epochs`` epochs, exported, ranked top-20 with the dense product and
   with the faiss index (PyG's MIPSKNNIndex); seconds and whether the lists are the same.

    python benchmarks/featurize.py                                   # tiny encoders, 10k items
    python benchmarks/featurize.py --text-encoder ~/all-MiniLM-L6-v2 --vit --items 1000
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = [f'{a}{b}' for a in ('pen', 'ink', 'desk', 'lamp', 'tape', 'clip', 'card', 'note')
         for b in ('', 's', 'er', 'pad', 'box', 'set', 'kit', 'pro', 'max', 'mini', 'plus',
                   'lite', 'duo', 'one', 'xl', 'go', 'air', 'neo', 'eco', 'flex', 'jet',
                   'tab', 'bar', 'dot')]


def write_catalogue(folder: Path, num_items: int, seed: int = 0) -> None:
    from PIL import Image
    rng = random.Random(seed)
    (folder / 'images').mkdir(parents=True, exist_ok=True)
    with open(folder / 'items.tsv', 'w', encoding='utf-8') as f:
        f.write('item\ttitle\timage\n')
        for i in range(num_items):
            title = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
            pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / 'images' / f'{i}.png')
            f.write(f'i{i}\t{title}\timages/{i}.png\n')
    users = max(num_items // 5, 1)
    with open(folder / 'ratings.csv', 'w', encoding='utf-8') as f:
        f.write('user,item\n')
        for u in range(users):  # every item 6 times on average, each user 30 items
            for i in rng.sample(range(num_items), min(30, num_items)):
                f.write(f'u{u},i{i}\n')


CHILD = r'''
import json, resource, sys, time
t = time.perf_counter()
from anchorrec_pyg.cli import main
code = main(sys.argv[1:])
print(json.dumps({'code': code, 'seconds': time.perf_counter() - t,
                  'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def featurize_row(raw: Path, out: Path, extra: list) -> dict:
    args = ['featurize', '--interactions', str(raw / 'ratings.csv'), '--items',
            str(raw / 'items.tsv'), '--out', str(out), '--name', 'bench', '--user-col', 'user',
            '--item-col', 'item', '--min-interactions', '1', '--quiet', *extra]
    done = subprocess.run([sys.executable, '-c', CHILD, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def vit_small(folder: Path) -> Path:
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=224, patch_size=16, hidden_size=192,
                                    num_hidden_layers=12, num_attention_heads=3,
                                    intermediate_size=768)
    transformers.ViTModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={'height': 224, 'width': 224}).save_pretrained(folder)
    return folder


def table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ['  '.join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append('  '.join('-' * w for w in widths))
    lines += ['  '.join(str(c).rjust(w) if j else str(c).ljust(w)
                        for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return '\n'.join(lines)


def bench_featurize(args, work: Path) -> None:
    from anchorrec_pyg.data.tiny_encoders import tiny_image_encoder, tiny_text_encoder
    raw = work / 'raw'
    t = time.perf_counter()
    write_catalogue(raw, args.items)
    print(f'generated {args.items} items in {time.perf_counter() - t:.1f} s')
    text = args.text_encoder or str(tiny_text_encoder(work / 'tiny-text'))
    text_name = Path(text).name if args.text_encoder else 'tiny BERT (1 layer, d=32)'
    image = str(vit_small(work / 'vit') if args.vit else tiny_image_encoder(work / 'tiny-vit'))
    image_name = 'ViT-Ti/16 shape (random weights)' if args.vit else 'tiny ViT (1 layer, d=24)'
    cases = [('interactions only', '-', []),
             ('text', text_name, ['--text-cols', 'title', '--text-encoder', text]),
             ('images', image_name, ['--image-col', 'image', '--image-encoder', image,
                                     '--batch-size', '32'])]
    rows = []
    for name, encoder, extra in cases:
        result = featurize_row(raw, work / f'out-{len(rows)}', extra)
        rows.append([name, encoder, args.items, f"{result['seconds']:.1f}",
                     f"{args.items / result['seconds']:.1f}", f"{result['peak_mb']:.0f}"])
    print(f'\nfeaturize, {args.items} items, {os.cpu_count()} cores (one process per row, '
          'model loading included)')
    print(table(rows, ['features', 'encoder', 'items', 'seconds', 'items/s', 'peak MB']))


def bench_recommend(args, work: Path) -> None:
    import torch

    from anchorrec_pyg.config import load_config
    from anchorrec_pyg.train.export import Recommender, export_run
    from anchorrec_pyg.train.runner import run_experiment
    run = work / 'baby-run'
    config = load_config(None, ['model.name=lightgcn', 'data.name=baby',
                                f'train.epochs={args.epochs}', 'train.device=cpu'])
    t = time.perf_counter()
    run_experiment(config, out=run, progress=False)
    print(f'\ntrained LightGCN on the Baby-shaped preset ({args.epochs} epochs) in '
          f'{time.perf_counter() - t:.0f} s')
    serve = export_run(run, work / 'baby-serve')
    rec = Recommender.from_export(serve)
    users = torch.arange(rec.num_users)
    rows, lists = [], {}
    for name, use_index in (('dense product', False), ('faiss index (MIPSKNNIndex)', True)):
        t = time.perf_counter()
        lists[name] = rec.top_k(users, args.k, use_index=use_index)
        rows.append([name, rec.num_users, args.k, f'{time.perf_counter() - t:.2f}'])
    dense, indexed = lists.values()
    same = sum(d[0] == i[0] for d, i in zip(dense, indexed))
    for row in rows:
        row.append(f'{same}/{rec.num_users}')
    print(f'recommend top-{args.k} for every user, Baby-shaped preset '
          f'({rec.num_users} users, {rec.num_items} items, d = {rec.item_emb.size(1)}), '
          f'{torch.get_num_threads()} threads')
    print(table(rows, ['ranking', 'users', 'k', 'seconds', 'same lists']))
    differ = [(d, i) for d, i in zip(dense, indexed) if d[0] != i[0]]
    if differ:
        same_items = sum(sorted(d[0]) == sorted(i[0]) for d, i in differ)
        gap = max(abs(sd - si) for d, i in differ
                  for a, b, sd, si in zip(d[0], i[0], d[1], i[1]) if a != b)
        print(f'{len(differ)} lists differ: {same_items} of them hold the same items in another '
              f'order; largest score difference at a differing rank: {gap:.1e} (near-ties '
              'decided by float32 rounding: faiss and torch sum the products in another order)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--items', type=int, default=10_000)
    parser.add_argument('--text-encoder', help='a local sentence-transformers folder')
    parser.add_argument('--vit', action='store_true', help='a ViT-Ti/16-shaped image model')
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--k', type=int, default=20)
    parser.add_argument('--skip', choices=('featurize', 'recommend'))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != 'featurize':
            bench_featurize(args, Path(tmp))
        if args.skip != 'recommend':
            bench_recommend(args, Path(tmp))


if __name__ == '__main__':
    main()
