r"""``anchorrec-pyg analyze <what>``: the expressiveness analyses (SPEC §6) and the
feature-quality evaluations (SPEC §8) as commands.

Every command writes the numbers behind its picture as JSON and CSV, and the picture as PNG when
matplotlib is installed (``pip install 'anchorrec-pyg[plots]'``; without it the command says so
and still writes the numbers), into ``--out`` (default ``./analysis``), atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.io import check_writable_folder
from anchorrec_pyg.schema import USER_ITEM

PROG = 'anchorrec-pyg analyze'
DEFAULT_OUT = 'analysis'

EXAMPLES = {
    'overlap': f'''examples:
  {PROG} overlap runs/ar --out figs
  {PROG} overlap runs/ar --k 20 --spaces raw_mm H_mm h_mm C Z''',
    'neighbours': f'''examples:
  {PROG} neighbours runs/anchorrec runs/alignrec --labels AnchorRec AlignRec --out figs
  {PROG} neighbours runs/ar --items 3 17 42 --num-neighbours 3''',
    'collapse': f'''examples:
  {PROG} collapse runs/ar --out figs
  {PROG} collapse runs/ar --method pca --plot-spaces H_mm H_text H_image''',
    'features': f'''examples:
  {PROG} features ~/mmrec-data/baby --out figs
  {PROG} features ~/mmrec-data/baby --features clip=clip_feat.npy --shrink 10
  {PROG} features default                       # the embedded default dataset
  {PROG} features --mask-modality runs/ar       # masking evaluation of a trained run''',
    'long-tail': f'''examples:
  {PROG} long-tail runs/anchorrec runs/lightgcn --labels AnchorRec LightGCN
  {PROG} long-tail runs/ar --buckets 10 --ks 10 20''',
}


def _print_written(paths: Sequence[Optional[Path]]) -> None:
    from anchorrec_pyg.analysis.results import NO_MATPLOTLIB
    for path in paths:
        if path is not None:
            print(f'wrote {path}')
    if any(path is None for path in paths):
        print(NO_MATPLOTLIB)


def _out_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f'--out {out} exists and is not a folder')
    check_writable_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _load_runs(args: argparse.Namespace, raw: bool = True) -> List[Any]:
    from anchorrec_pyg.analysis.spaces import check_same_dataset, load_run, parse_labels
    labels = parse_labels(getattr(args, 'labels', None), args.runs)
    runs = [load_run(path, label, args.device, raw=raw) for path, label in zip(args.runs, labels)]
    names = [run.label for run in runs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f'two runs are both labelled {duplicate!r}; name them with --labels')
    check_same_dataset(runs)
    return runs


def _run_info(runs: Sequence[Any]) -> List[Dict[str, Any]]:
    return [{'label': run.label, 'path': str(run.path), 'model': run.config.model_name,
             'dataset': run.config.data.name} for run in runs]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return '-'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


# overlap #######################################################################################

def cmd_overlap(args: argparse.Namespace) -> None:
    from anchorrec_pyg.analysis import plots
    from anchorrec_pyg.analysis.overlap import overlap_matrix
    from anchorrec_pyg.analysis.results import format_table, write_csv, write_figure, write_json
    from anchorrec_pyg.analysis.spaces import select_spaces
    out = _out_dir(args)
    run = _load_runs(args)[0]
    spaces = select_spaces(run.spaces(), args.spaces)
    result = overlap_matrix(spaces, args.k)
    names = [s['name'] for s in result['spaces']]
    payload = {'analysis': 'overlap', 'run': _run_info([run])[0], **result}
    rows = [{'space': a, **{b: result['matrix'][r][c] for c, b in enumerate(names)}}
            for r, a in enumerate(names)]
    written = [write_json(out / 'overlap.json', payload), write_csv(out / 'overlap.csv', rows),
               write_figure(out / 'overlap.png', lambda fig: plots.heatmap(
                   fig, result['matrix'], names,
                   f"{run.label}: top-{args.k} neighbourhood overlap", 'overlap'),
                   size=(1.2 + 0.55 * len(names), 0.6 + 0.5 * len(names)))]
    table = [['', *names]] + [[a, *[_fmt(v, 2) for v in result['matrix'][r]]]
                              for r, a in enumerate(names)]
    print(f"{run.label} ({run.config.model_name}): top-{args.k} neighbourhood overlap of "
          f"{result['num_items']} items (chance {result['chance']:.4f})")
    print(format_table(table))
    _print_written(written)


# neighbours ####################################################################################

MEASURE_TITLES = {
    'paths': '2-hop paths (common users)',
    'paths_norm': 'normalised 2-hop paths',
    'sim_image': 'raw visual cosine',
    'sim_text': 'raw textual cosine',
    'sim_mm': 'raw multimodal cosine',
}


def cmd_neighbours(args: argparse.Namespace) -> None:
    from anchorrec_pyg.analysis import plots
    from anchorrec_pyg.analysis.neighbours import choose_targets, compare_neighbours
    from anchorrec_pyg.analysis.results import format_table, write_csv, write_figure, write_json
    from anchorrec_pyg.analysis.spaces import select_spaces
    out = _out_dir(args)
    runs = _load_runs(args)
    first = runs[0]
    spaces = {run.label: select_spaces(run.spaces(), [args.space], '--space')[args.space].x
              for run in runs}
    targets = choose_targets(first.num_items, args.num_targets, args.items, args.seed)
    result = compare_neighbours(spaces, first.data[USER_ITEM].edge_index,
                                first.num_users, first.raw, targets, args.num_neighbours,
                                args.seed)
    payload = {'analysis': 'neighbours', 'space': args.space, 'runs': _run_info(runs), **result}
    measures = result['measures']
    labels = [row['run'] for row in result['rows']]
    panels = [(MEASURE_TITLES.get(m, m), labels,
               {'mean': [row[f'{m}_mean'] for row in result['rows']]},
               {'mean': [row[f'{m}_std'] for row in result['rows']]}) for m in measures]
    written = [write_json(out / 'neighbours.json', payload),
               write_csv(out / 'neighbours.csv', result['rows']),
               write_figure(out / 'neighbours.png',
                            lambda fig: plots.grouped_bars(fig, panels),
                            size=(3.2 * min(len(panels), 3), 3.0 * -(-len(panels) // 3)))]
    table = [['run', *measures]] + [
        [row['run'], *[f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" for m in measures]]
        for row in result['rows']]
    print(f'top-{args.num_neighbours} neighbours by {args.space} of {targets.numel()} target '
          'items (mean ± std over targets)')
    print(format_table(table))
    _print_written(written)


# collapse ######################################################################################

def cmd_collapse(args: argparse.Namespace) -> None:
    from anchorrec_pyg.analysis import plots
    from anchorrec_pyg.analysis.collapse import (
        collapse_numbers,
        embed_panels,
        plot_groups,
        resolve_method,
    )
    from anchorrec_pyg.analysis.results import (
        format_table,
        load_matplotlib,
        write_csv,
        write_figure,
        write_json,
    )
    from anchorrec_pyg.analysis.spaces import select_spaces
    if args.num_items < 2:
        raise ConfigError(f'--num-items must be >= 2 (got {args.num_items})')
    out = _out_dir(args)
    run = _load_runs(args)[0]
    every = run.spaces()
    spaces = select_spaces(every, args.spaces)
    numbers = collapse_numbers(spaces)
    if args.plot_spaces is not None:
        select_spaces(every, args.plot_spaces, '--plot-spaces')
    panels = plot_groups(every, args.plot_spaces)
    method = resolve_method(args.method)
    embedding = embed_panels(every, panels, args.num_items, method, args.seed)
    payload = {'analysis': 'collapse', 'run': _run_info([run])[0], **numbers,
               'plot': {'method': method, 'items': embedding['items'],
                        'panels': [p['spaces'] for p in embedding['panels']]}}
    points = [{'panel': p, 'space': s, 'item': i, 'x': x, 'y': y}
              for p, panel in enumerate(embedding['panels']) for s, i, x, y in panel['points']]
    written = [write_json(out / 'collapse.json', payload),
               write_csv(out / 'collapse.csv', numbers['spaces']),
               write_csv(out / 'collapse_pairs.csv', numbers['paired_cosine'],
                         columns=['a', 'b', 'paired_cosine']),
               write_csv(out / 'collapse_points.csv', points,
                         columns=['panel', 'space', 'item', 'x', 'y'])]
    if embedding['panels']:
        written.append(write_figure(
            out / 'collapse.png',
            lambda fig: plots.scatter_panels(fig, embedding['panels'], method),
            size=(4.5 * len(embedding['panels']), 4.5)))
    elif load_matplotlib() is not None:
        print('no picture: the run has no two same-dimension modality spaces to embed')
    table = [['space', 'group', 'dim', 'mean cosine', 'effective rank']] + [
        [r['name'], r['group'], str(r['dim']), _fmt(r['mean_cosine']),
         _fmt(r['effective_rank'], 2)] for r in numbers['spaces']]
    print(f'{run.label} ({run.config.model_name}): collapse of {run.num_items} items')
    print(format_table(table))
    if numbers['paired_cosine']:
        print('paired cosine (same item, two spaces): ' + ', '.join(
            f"{p['a']}~{p['b']} {p['paired_cosine']:.3f}" for p in numbers['paired_cosine']))
    _print_written(written)


# features ######################################################################################

def _metric_columns(ks: Sequence[int]) -> List[str]:
    return [f'{m}@{k}' for m in ('recall', 'ndcg') for k in ks]


def cmd_features(args: argparse.Namespace) -> None:
    if args.dataset is None and args.mask_modality is None:
        raise ConfigError('features needs a DATASET_DIR (feature-table evaluation) and/or '
                          '--mask-modality RUN_DIR (masking evaluation of a trained run)')
    out = _out_dir(args)
    written: List[Optional[Path]] = []
    if args.dataset is not None:
        written += _feature_tables(args, out)
    if args.mask_modality is not None:
        written += _masking(args, out)
    _print_written(written)


def _feature_tables(args: argparse.Namespace, out: Path) -> List[Optional[Path]]:
    import time

    from anchorrec_pyg.analysis import plots
    from anchorrec_pyg.analysis.features import evaluate_features, load_feature_folder
    from anchorrec_pyg.analysis.results import format_table, write_csv, write_figure, write_json
    start = time.perf_counter()
    data, tables = load_feature_folder(args.dataset, args.features, args.inter_file,
                                       args.mm_dir)
    rows = evaluate_features(tables, data, args.ks, knn_k=args.knn_k, shrink=args.shrink,
                             progress=not args.quiet, seed=args.seed)
    seconds = time.perf_counter() - start
    payload = {'analysis': 'features', 'dataset': str(args.dataset),
               'num_users': int(data['user'].num_nodes),
               'num_items': int(data['item'].num_nodes), 'knn_k': args.knn_k,
               'shrink': args.shrink, 'ks': list(args.ks), 'wall_time_s': seconds, 'rows': rows}
    k = 20 if 20 in args.ks else max(args.ks)
    test = [r for r in rows if r['split'] == 'test']
    names = list(dict.fromkeys(r['features'] for r in test if r['method'] != 'random'))
    random_row = next(r for r in test if r['method'] == 'random')
    panels = [(f'test {metric.capitalize()}@{k}', names + ['random'],
               {method: [next(r[f'{metric}@{k}'] for r in test
                              if r['features'] == n and r['method'] == method) for n in names]
                + [random_row[f'{metric}@{k}']] for method in ('zero-shot', 'item-cf')},
               None) for metric in ('recall', 'ndcg')]
    written = [write_json(out / 'features.json', payload),
               write_csv(out / 'features.csv', rows),
               write_figure(out / 'features.png', lambda fig: plots.grouped_bars(fig, panels),
                            size=(9.0, 3.6))]
    columns = _metric_columns(args.ks)
    table = [['features', 'dim', 'method', 'split', *columns]] + [
        [str(r['features']), str(r['dim']), str(r['method']), str(r['split']),
         *[_fmt(r[c]) for c in columns]] for r in rows]
    print(f"feature tables of {args.dataset} ({payload['num_users']} users, "
          f"{payload['num_items']} items; item-CF k={args.knn_k}, shrink={args.shrink}): "
          f'{seconds:.1f} s')
    print(format_table(table))
    return written


def _masking(args: argparse.Namespace, out: Path) -> List[Optional[Path]]:
    from anchorrec_pyg.analysis import plots
    from anchorrec_pyg.analysis.features import masked_metrics
    from anchorrec_pyg.analysis.results import format_table, write_csv, write_figure, write_json
    from anchorrec_pyg.analysis.spaces import load_run
    run = load_run(args.mask_modality, None, args.device, raw=False)
    result = masked_metrics(run.model, run.data, args.ks, args.modalities, args.mask_fraction,
                            args.mask_seed, batch_size=run.config.eval.batch_size,
                            progress=not args.quiet)
    payload = {'analysis': 'modality-masking', 'run': _run_info([run])[0],
               'masked_tables': 'for each modality m: the raw table data[item].x_m and the '
               "model's trainable copy (features.m); the kNN graphs are not rebuilt",
               **result}
    k = 20 if 20 in args.ks else max(args.ks)
    test = [r for r in result['rows'] if r['split'] == 'test']
    panels = [(f'test {metric.capitalize()}@{k}', [r['masked'] for r in test],
               {run.label: [r[f'{metric}@{k}'] for r in test]}, None)
              for metric in ('recall', 'ndcg')]
    written = [write_json(out / 'masking.json', payload),
               write_csv(out / 'masking.csv', result['rows']),
               write_figure(out / 'masking.png',
                            lambda fig: plots.grouped_bars(fig, panels, 'masked modality'),
                            size=(8.0, 3.4))]
    columns = _metric_columns(args.ks)
    table = [['masked', 'split', *columns, f'drop recall@{k}']] + [
        [str(r['masked']), str(r['split']), *[_fmt(r[c]) for c in columns],
         _fmt(r.get(f'drop_recall@{k}'))] for r in result['rows']]
    print(f"{run.label} ({run.config.model_name}): modality masking of "
          f"{result['num_masked']} of {run.num_items} items (fraction {args.mask_fraction}, "
          f'seed {args.mask_seed})')
    print(format_table(table))
    return written


# long-tail #####################################################################################

def cmd_long_tail(args: argparse.Namespace) -> None:
    from anchorrec_pyg.analysis import plots
    from anchorrec_pyg.analysis.long_tail import long_tail_metrics, popularity_buckets
    from anchorrec_pyg.analysis.results import format_table, write_csv, write_figure, write_json
    out = _out_dir(args)
    runs = _load_runs(args, raw=False)
    buckets = popularity_buckets(runs[0].data, args.buckets)
    per_run = {run.label: long_tail_metrics(run.output, run.data, buckets, args.ks, args.split,
                                            run.config.eval.batch_size) for run in runs}
    rows = [{'run': label, **row} for label, result in per_run.items() for row in result]
    payload = {'analysis': 'long-tail', 'split': args.split, 'buckets': args.buckets,
               'ks': list(args.ks), 'runs': _run_info(runs), 'rows': rows}
    k = 20 if 20 in args.ks else max(args.ks)
    categories = [r['bucket'] for r in next(iter(per_run.values()))]
    panels = [(f'{args.split} {metric.capitalize()}@{k} by popularity bucket', categories,
               {label: [r[f'{metric}@{k}'] for r in result]
                for label, result in per_run.items()}, None)
              for metric in ('recall', 'ndcg')]
    written = [write_json(out / 'long_tail.json', payload),
               write_csv(out / 'long_tail.csv', rows),
               write_figure(out / 'long_tail.png',
                            lambda fig: plots.grouped_bars(fig, panels,
                                                           'bucket (0 = least popular)'),
                            size=(9.0, 3.6))]
    columns = _metric_columns(args.ks)
    table = [['run', 'bucket', 'items', 'train counts', 'held-out', *columns]] + [
        [r['run'], r['bucket'], str(r['items']), f"{r['min_count']}-{r['max_count']}",
         str(r['held_out']), *[_fmt(r[c]) for c in columns]] for r in rows]
    print(f'{args.split} accuracy by item-popularity bucket ({args.buckets} quantile buckets of '
          'training interaction counts)')
    print(format_table(table))
    _print_written(written)


# parsers #######################################################################################

def add_parsers(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    r"""Registers ``analyze`` and its sub-commands on the ``anchorrec-pyg`` sub-parsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    analyze = sub.add_parser(
        'analyze', formatter_class=formatter,
        help='expressiveness analyses and feature-quality evaluations (PNG + JSON/CSV)',
        description='Analyses of trained runs (SPEC §6: neighbourhood overlap, neighbour '
        'quality, positional collapse, long tail) and of feature tables (SPEC §8: zero-shot, '
        'item-CF, modality masking). Each writes JSON/CSV numbers and a PNG (matplotlib, '
        "pip install 'anchorrec-pyg[plots]') into --out.")
    what = analyze.add_subparsers(dest='analysis', metavar='WHAT')
    what.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument('--out', metavar='DIR', default=DEFAULT_OUT,
                       help=f'output folder (default: ./{DEFAULT_OUT})')
        p.add_argument('--device', choices=('cpu', 'cuda', 'auto'), default='cpu',
                       help='where to compute (default: cpu)')
        p.add_argument('--quiet', action='store_true', help='no progress bars or log lines')

    def parser(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return what.add_parser(name, formatter_class=formatter, help=help_text,
                               description=description, epilog=EXAMPLES[name])

    overlap = parser('overlap', 'neighbourhood overlap between embedding spaces (Fig. 4)',
                     'For every pair of item embedding spaces of a run (raw features, '
                     'H_mm/H_text/H_image, C, projection domain, final Z): the mean over items '
                     'of |N_a(i) ∩ N_b(i)| / k, N = the exact top-k cosine neighbours (the item '
                     'itself excluded). Writes overlap.{json,csv,png}.')
    overlap.add_argument('runs', metavar='RUN_DIR', nargs=1)
    overlap.add_argument('--k', type=int, default=10, help='neighbours per item (default: 10)')
    overlap.add_argument('--spaces', nargs='+', metavar='SPACE',
                         help='spaces to compare, in this order (default: all the run has)')
    common(overlap)
    overlap.set_defaults(func=cmd_overlap)

    neighbours = parser('neighbours', 'quality of the top-3 neighbours across runs (Fig. 5)',
                        'For target items, the top-n neighbours by the final item embedding: '
                        'their 2-hop interaction proximity (item-user-item paths, and '
                        'normalised by sqrt(deg_i deg_j)) and raw visual/textual cosine '
                        'similarity to the target, mean ± std over targets, for every run and '
                        'a random reference. Writes neighbours.{json,csv,png}.')
    neighbours.add_argument('runs', metavar='RUN_DIR', nargs='+')
    neighbours.add_argument('--labels', nargs='+', metavar='LABEL',
                            help='names of the runs (default: folder names)')
    neighbours.add_argument('--num-neighbours', type=int, default=3,
                            help='neighbours per target (default: 3)')
    neighbours.add_argument('--num-targets', type=int, default=1000,
                            help='sampled target items (default: 1000)')
    neighbours.add_argument('--items', type=int, nargs='+', metavar='ITEM',
                            help='target item ids instead of a sample')
    neighbours.add_argument('--space', default='Z',
                            help='embedding space of the neighbours (default: Z, the final '
                            'item embeddings)')
    neighbours.add_argument('--seed', type=int, default=0, help='sampling seed (default: 0)')
    common(neighbours)
    neighbours.set_defaults(func=cmd_neighbours)

    collapse = parser('collapse', 'positional collapse: 2-D plot, mean cosine, effective rank '
                      '(Fig. 1)',
                      'Mean pairwise cosine and effective rank (Roy & Vetterli 2007) of every '
                      'item space, the paired cosine of same-dimension spaces, and a joint 2-D '
                      "embedding (t-SNE with scikit-learn, pip install 'anchorrec-pyg[tsne]'; "
                      'PCA otherwise) of the modality embeddings of the same items. Writes '
                      'collapse.{json,csv,png}, collapse_pairs.csv, collapse_points.csv.')
    collapse.add_argument('runs', metavar='RUN_DIR', nargs=1)
    collapse.add_argument('--spaces', nargs='+', metavar='SPACE',
                          help='spaces to measure (default: all the run has)')
    collapse.add_argument('--plot-spaces', nargs='+', metavar='SPACE',
                          help='spaces to embed jointly (default: the original-space and the '
                          'projection-domain views, one panel each)')
    collapse.add_argument('--num-items', type=int, default=500,
                          help='items sampled for the picture (default: 500)')
    collapse.add_argument('--method', default='auto', choices=('auto', 'tsne', 'pca'),
                          help='2-D embedding (default: auto = t-SNE if scikit-learn is '
                          'installed, else PCA)')
    collapse.add_argument('--seed', type=int, default=0, help='sampling seed (default: 0)')
    common(collapse)
    collapse.set_defaults(func=cmd_collapse)

    features = parser('features', 'feature quality without training: zero-shot, item-CF, '
                      'modality masking (SPEC §8)',
                      'Zero-shot and item-CF full-ranking metrics (SPEC §5) of every feature '
                      'table of an MMRec folder and of --features files; with --mask-modality, '
                      "the drop in a trained run's metrics when a seeded fraction of items has "
                      "one modality's rows (raw table and the model's trainable copy) set to "
                      'zero. Writes features.{json,csv,png} and masking.{json,csv,png}.')
    features.add_argument('dataset', metavar='DATASET_DIR', nargs='?',
                          help='an MMRec folder <root>/<name> (or a synthetic preset: default, '
                          'tiny, baby)')
    features.add_argument('--features', nargs='+', metavar='[NAME=]FILE.npy', default=[],
                          help='extra [I, d] feature tables to evaluate')
    features.add_argument('--inter-file', help='interaction file in the folder (default: '
                          '<name>.inter)')
    features.add_argument('--mm-dir', help='folder of the fused table (default: '
                          '<root>/<name>_beit3)')
    features.add_argument('--knn-k', type=int, default=10,
                          help='item-CF neighbours per item (default: 10)')
    features.add_argument('--shrink', type=float, default=0.0,
                          help='item-CF shrink term (default: 0; MMRec ItemKNNCBF: 10)')
    features.add_argument('--ks', type=int, nargs='+', default=[5, 10, 20, 50],
                          help='cut-offs K (default: 5 10 20 50)')
    features.add_argument('--mask-modality', metavar='RUN_DIR',
                          help='run the modality-masking evaluation of this trained run')
    features.add_argument('--modalities', nargs='+', choices=('mm', 'text', 'image'),
                          help='modalities to mask (default: all the run has)')
    features.add_argument('--mask-fraction', type=float, default=0.5,
                          help='fraction of items masked (default: 0.5)')
    features.add_argument('--mask-seed', type=int, default=0,
                          help='seed of the masked items (default: 0)')
    features.add_argument('--seed', type=int, default=0,
                          help='seed of the random reference ranking (default: 0)')
    common(features)
    features.set_defaults(func=cmd_features)

    long_tail = parser('long-tail', 'Recall/NDCG per item-popularity bucket across runs',
                       'Test Recall@K and NDCG@K per item-popularity bucket (items split by '
                       'training interaction count into equal-size quantile buckets; full '
                       'ranking, only the bucket\'s held-out items judged). Writes '
                       'long_tail.{json,csv,png}.')
    long_tail.add_argument('runs', metavar='RUN_DIR', nargs='+')
    long_tail.add_argument('--labels', nargs='+', metavar='LABEL',
                           help='names of the runs (default: folder names)')
    long_tail.add_argument('--buckets', type=int, default=5,
                           help='popularity buckets (default: 5)')
    long_tail.add_argument('--ks', type=int, nargs='+', default=[20],
                           help='cut-offs K (default: 20)')
    long_tail.add_argument('--split', choices=('valid', 'test'), default='test',
                           help='held-out split (default: test)')
    common(long_tail)
    long_tail.set_defaults(func=cmd_long_tail)
    return analyze
