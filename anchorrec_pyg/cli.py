r"""The ``anchorrec-pyg`` command: train, evaluate and recommend.

Every user mistake (:class:`~anchorrec_pyg.errors.AnchorRecError`) is printed as one line,
``anchorrec-pyg: error: <message>``, on stderr with exit status 2 and no traceback.
"""
import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from anchorrec_pyg import catalogue_cli, compare
from anchorrec_pyg.analysis import cli as analysis_cli
from anchorrec_pyg.errors import AnchorRecError, ConfigError

PROG = 'anchorrec-pyg'
METRIC_LABELS = {
    'recall': 'Recall',
    'ndcg': 'NDCG',
    'precision': 'Precision',
    'map': 'MAP',
    'hit': 'HitRate',
}

TRAIN_EXAMPLES = f'''examples:
  {PROG} train                                  # AnchorRec on the embedded default dataset
  {PROG} train --config configs/baby.yaml --set data.root=~/mmrec-data
  {PROG} train --set model.n_layers=2 --set train.epochs=100 --out runs/ar
  {PROG} train --set "grid.train.lr=[0.001,0.0005]" --set "seeds=[999,777]"
  {PROG} train --out runs/ar --resume           # continue a killed run
  {PROG} train --nproc 2                        # two data-parallel processes (torchrun)
  {PROG} train --set train.mode=sampled --set "train.fanout=[20,10]"   # sampled subgraphs

--set KEY=VALUE overrides one config key (dotted, the value read as YAML); see
configs/default.yaml for every key and its default.'''

EVALUATE_EXAMPLES = f'''examples:
  {PROG} evaluate runs/anchorrec-default-20250101-120000
  {PROG} evaluate runs/ar/runs/c000-s999 --split test
  {PROG} evaluate runs/ar/runs/c000-s999/checkpoint.pt --device cpu

A run folder means its selected combination's best seed (summary.json: selected.best_run).'''

RECOMMEND_EXAMPLES = f'''examples:
  {PROG} recommend runs/anchorrec-default-20250101-120000 --users 0 1 2
  {PROG} recommend runs/ar --users 5 17 --k 10 --output top10.csv
  {PROG} recommend serve/shop --all-users --k 20 --output top20.csv   # an export folder

Training items of each user are never recommended; a user with fewer candidate items than k
gets all of them (with a note). Ids are the dataset's: the original ids when it was made by
featurize (user_map.csv, item_map.csv). An export folder with items.faiss is searched through
the index (exact; --no-index for the dense product). The CSV has the columns
user, rank, item, score.'''


def _model_list() -> str:
    from anchorrec_pyg.models.registry import MODELS
    width = max(len(name) for name in MODELS)
    lines = [f'  {name:<{width}}  {getattr(cls, "description", "")}'
             for name, cls in sorted(MODELS.items())]
    return 'models (model.name):\n' + '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of the ``anchorrec-pyg`` command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=formatter,
        description='AnchorRec, AlignRec and baselines for multimodal recommendation on PyTorch '
        'Geometric: train with full-ranking evaluation, evaluate a run, recommend items.',
        epilog=f'examples:\n  {PROG} train\n  {PROG} train --help\n  {PROG} evaluate RUN_DIR\n'
        f'  {PROG} recommend RUN_DIR --users 0 1 2')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument('--device', choices=('cpu', 'cuda', 'auto'),
                       help='where to compute (default: the config\'s train.device, "auto")')
        p.add_argument('--quiet', action='store_true',
                       help='only warnings and the results (no progress bars or epoch lines)')

    train = sub.add_parser(
        'train', formatter_class=formatter, help='train (grid x seeds) and print the metrics',
        description='Train every grid combination with every seed, select the combination by '
        'validation metric (eval.metric, Recall@20), report its test metrics (mean and std over '
        'seeds) and write the run folder (config.yaml, summary.json, runs.csv, history.csv, '
        'runs/<run_id>/checkpoint.pt).',
        epilog=f'{TRAIN_EXAMPLES}\n\n{_model_list()}')
    train.add_argument('--config', metavar='FILE',
                       help='YAML config (default: the packaged defaults, configs/default.yaml)')
    train.add_argument('--set', metavar='KEY=VALUE', action='append', default=[],
                       dest='overrides', help='override a config key (repeatable)')
    train.add_argument('--out', metavar='DIR',
                       help='output folder (default: out: in the config, else '
                       'runs/<model>-<dataset>-<timestamp>)')
    train.add_argument('--resume', action='store_true',
                       help='continue the run in --out (its config.yaml is used)')
    train.add_argument('--nproc', metavar='N', type=int,
                       help='data-parallel processes on this machine, started with torchrun\'s '
                       'launcher (sets train.nproc; train.batch_size stays the global batch)')
    train.add_argument('--master-port', metavar='PORT', type=int, default=0,
                       help='loopback port of the processes\' rendezvous (default: a free one)')
    common(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        'evaluate', formatter_class=formatter, help='evaluate a trained run (full ranking)',
        description='Recompute the full-ranking metrics of a trained run with its best '
        'validation epoch\'s weights.', epilog=EVALUATE_EXAMPLES)
    evaluate.add_argument('run', metavar='RUN_DIR_OR_CHECKPOINT')
    evaluate.add_argument('--split', choices=('valid', 'test'),
                          help='evaluate one split only (default: both)')
    common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    recommend = sub.add_parser(
        'recommend', formatter_class=formatter, help='top-K recommendations of a trained run',
        description='Print or write the top-K items of each user, training items excluded.',
        epilog=RECOMMEND_EXAMPLES)
    recommend.add_argument('run', metavar='RUN_DIR_CHECKPOINT_OR_EXPORT')
    recommend.add_argument('--users', metavar='USER', nargs='+',
                           help='user ids: 0-based as in the .inter file, or the original ids '
                           'when the dataset has a user_map.csv')
    recommend.add_argument('--all-users', action='store_true', help='every user')
    recommend.add_argument('--no-index', action='store_true',
                           help="rank by the dense product even when an export has an index")
    recommend.add_argument('--k', type=int, default=20, help='list length (default: 20)')
    recommend.add_argument('--output', metavar='FILE.csv',
                           help='write user,rank,item,score rows to this CSV instead of printing')
    common(recommend)
    recommend.set_defaults(func=cmd_recommend)
    catalogue_cli.add_parsers(sub)
    compare.add_parsers(sub)
    analysis_cli.add_parsers(sub)
    return parser


def format_metrics(results: Dict[str, Dict[str, float]], ks: Sequence[int],
                   show_std: bool = False) -> str:
    r"""A table with one block per split and one row per metric, one column per :math:`K`;
    ``mean ± std`` (from the ``<key>_std`` entries) with :obj:`show_std`."""
    cells: List[List[str]] = [['', *[f'@{k}' for k in ks]]]
    for split, metrics in results.items():
        cells.append([split, *[''] * len(ks)])
        for name, label in METRIC_LABELS.items():
            row = [f'  {label}']
            for k in ks:
                key = f'{name}@{k}'
                value = f'{metrics[key]:.4f}'
                if show_std:
                    value += f" ± {metrics[f'{key}_std']:.4f}"
                row.append(value)
            cells.append(row)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return '\n'.join('  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in cells)


def cmd_train(args: argparse.Namespace) -> None:
    from anchorrec_pyg.config import load_config
    from anchorrec_pyg.train.runner import CONFIG_FILE, run_experiment
    if args.resume:
        if args.out is None:
            raise ConfigError('--resume needs --out DIR, the folder of the run to continue')
        path = args.config if args.config is not None else Path(args.out) / CONFIG_FILE
        if args.config is None and not Path(path).is_file():
            raise ConfigError(f'--resume: {path} not found; is {args.out} a run folder?')
    else:
        path = args.config
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f'train.device={args.device}')
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f'--nproc must be >= 1 (got {args.nproc})')
        overrides.append(f'train.nproc={args.nproc}')
    config = load_config(path, overrides)
    from anchorrec_pyg.train import distributed
    if distributed.in_worker():
        _train_worker(args, config)
        return
    if config.train.nproc > 1:
        summary = _launch_workers(args, path, overrides, config)
    else:
        summary = run_experiment(config, out=args.out, resume=args.resume,
                                 progress=not args.quiet)
    _print_summary(summary, config)


def _train_worker(args: argparse.Namespace, config) -> None:
    import tempfile

    from anchorrec_pyg.train import distributed
    from anchorrec_pyg.train.runner import run_experiment
    train = config.train
    dist = distributed.worker_context(train.nproc, train.device, train.dist_timeout_s)
    if dist.is_main:
        run_experiment(config, out=args.out, resume=args.resume, progress=not args.quiet,
                       dist=dist)
        return
    logging.getLogger('anchorrec_pyg').setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix=f'anchorrec-rank{dist.rank}-') as scratch:
        # resume=False: process 0 sends the resumed state (Trainer.fit)
        run_experiment(config, out=scratch, resume=False, progress=False, dist=dist)


def _launch_workers(args: argparse.Namespace, path, overrides: List[str], config) -> Dict:
    import json

    from anchorrec_pyg.io import default_out_dir
    from anchorrec_pyg.train import distributed
    from anchorrec_pyg.train.runner import SUMMARY_FILE, load_data, required_modalities
    out = Path(args.out or config.out or
               default_out_dir(f'{config.model_name}-{config.data.name}'))
    if not args.resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f'output folder {out} is not empty; pass --resume to continue the '
                          f'run in it or choose another --out')
    import torch
    train, grid = config.train, config.grid
    cuda = train.device.startswith('cuda') or (train.device == 'auto' and
                                               torch.cuda.is_available())
    if cuda and (train.sparse_updates or True in grid.get('train.sparse_updates', [])):
        raise ConfigError(distributed.sparse_nccl_refusal(train.nproc))
    distributed.free_port(args.master_port)
    # build the processed dataset once, before the processes read it
    load_data(config.data, required_modalities(config), log=not args.quiet)
    worker_argv = ['train', '--out', str(out)]
    if path is not None:
        worker_argv += ['--config', str(path)]
    for override in overrides:
        worker_argv += ['--set', override]
    worker_argv += ['--resume'] if args.resume else []
    worker_argv += ['--quiet'] if args.quiet else []
    logging.getLogger(__name__).info(
        'starting %d processes (torch.distributed.run, rendezvous on 127.0.0.1)',
        config.train.nproc)
    distributed.launch(config.train.nproc, worker_argv, args.master_port)
    return json.loads((out / SUMMARY_FILE).read_text())


def _print_summary(summary: Dict, config) -> None:
    selected = summary['selected']
    seeds = len(selected['seeds'])
    params = ', '.join(f'{k}={v}' for k, v in selected['params'].items()) or 'config as given'
    print(f"{summary['model']} on {summary['dataset']}: selected {params} by validation "
          f"{summary['metric']} ({seeds} seed{'s' if seeds > 1 else ''}"
          f"{', mean ± std' if seeds > 1 else ''})")
    print(format_metrics({'valid': summary['valid'], 'test': summary['test']}, config.eval.ks,
                         show_std=seeds > 1))
    print(f"results: {summary['out']}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from anchorrec_pyg.train.evaluator import Evaluator
    from anchorrec_pyg.train.runner import load_trained_model
    model, data, config = load_trained_model(args.run, args.device)
    evaluator = Evaluator(data, config.eval.ks, config.eval.batch_size, progress=not args.quiet)
    splits = [args.split] if args.split else ['valid', 'test']
    results = {split: evaluator.evaluate(model, data, split) for split in splits}
    print(format_metrics(results, config.eval.ks))


def cmd_recommend(args: argparse.Namespace) -> None:
    catalogue_cli.recommend(args)


def configure_logging(quiet: bool) -> None:
    r"""Sends the package's log records (INFO, or WARNING with :obj:`quiet`) to stderr, one
    message per line; replaces the handler of an earlier call."""
    logger = logging.getLogger('anchorrec_pyg')
    for handler in [h for h in logger.handlers if getattr(h, '_anchorrec_cli', False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(message)s'))
    handler._anchorrec_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Runs the command line :obj:`argv` (default: ``sys.argv[1:]``); returns the exit
    status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    try:
        args.func(args)
    except AnchorRecError as e:
        message = ' '.join(str(e).split())
        print(f'{PROG}: error: {message}', file=sys.stderr)
        return 2
    except RuntimeError as e:
        from anchorrec_pyg.train import distributed
        if not distributed.in_worker():
            raise
        # a collective failed: another process died, hung past train.dist_timeout_s or
        # broke the connection
        message = ' '.join(str(e).split())[:300]
        print(f"{PROG}: error: process {os.environ.get('RANK')}: lost the other processes "
              f'({message})', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ' (continue with --resume --out DIR)' if args.command == 'train' else ''
        print(f'{PROG}: interrupted{hint}', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
