r"""``anchorrec-pyg compare``: several models, one dataset, one protocol, one table.

Every model is trained by the same :class:`~anchorrec_pyg.train.runner.ExperimentRunner` (same
data layer, sampler, trainer, full-ranking evaluator and validation-only selection, SPEC §5) on
the same ``data:`` and ``eval:`` settings, each with its own published grid and training
settings, read from its published configuration file (:func:`published_config_path`):

* on a paper dataset (``data.name`` in :data:`PAPER_DATASETS`) the model's file for it:
  ``configs/<name>.yaml`` for AnchorRec, ``configs/<model>/<name>.yaml`` for the others when it
  exists (AlignRec), else ``configs/baselines/<model>.yaml``;
* on any other dataset (the embedded default, your own) the same files for Baby: the published
  grids do not depend on the dataset.

``--budget N`` trains at most ``N`` combinations of each model's grid: the model's best-known
settings (the values of its file, :func:`published_combination`) first, then the first ``N - 1``
others of a fixed random permutation of the grid (:func:`budget_indices`, seed
:data:`BUDGET_SEED`), so the choice is deterministic and a larger budget keeps the runs of a
smaller one. ``--epochs`` caps ``train.epochs`` of every model (early stopping on validation,
``--patience``, ends runs sooner). ``--set`` overrides a key of every model's configuration; a
``model.<key>`` override goes to the models that have that key.

Every table has a popularity reference row (:func:`popularity_row`: same data, splits and
metrics, scored by the same evaluator, not trained); a model whose selected run does not beat
it, or whose selected runs reached the epoch cap, is flagged in the table and the log.

The output folder holds one run folder per model (Contract 4) and::

    compare.json      the comparison's identity (data, eval, each model's configuration) and rows
    comparison.md     the table (Markdown), also printed
    comparison.csv    the same numbers, one row per model
    comparison.png    test Recall/NDCG@10/20 with the standard deviation over seeds as error
                      bars (needs matplotlib, the ``plots`` extra)

Rerunning the command on the same folder resumes: a finished (model, combination, seed) run is
not trained again (the runner's checkpoints). A folder created for another dataset, evaluation
or model configuration is refused, so results never mix.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anchorrec_pyg.config import (
    DEFAULT_MODEL,
    ExperimentConfig,
    config_to_dict,
    first_difference,
    load_config,
    parse_override,
    resolved_identity,
    run_identity,
)
from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.io import (
    LOCK_FILE,
    atomic_write,
    atomic_write_text,
    default_out_dir,
    lock_folder,
)

logger = logging.getLogger(__name__)

__all__ = [
    'PAPER_DATASETS',
    'TABLE_METRICS',
    'budget_indices',
    'published_combination',
    'published_config_path',
    'compare_configs',
    'run_comparison',
    'format_table',
    'popularity_row',
    'add_parsers',
]

CONFIGS_DIR = Path(__file__).resolve().parent / 'configs'
"""The published configurations, shipped with the package (package data; in a source checkout
a link to the repository's ``configs/``); ``--configs`` points elsewhere."""

PAPER_DATASETS = ('baby', 'sports', 'office', 'games')
REFERENCE_DATASET = 'baby'
BASELINES_DIR = 'baselines'
BUDGET_SEED = 0
TABLE_METRICS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')
RANK_METRIC = 'recall@20'
POPULARITY = 'popularity'
IDENTITY_FILE = 'compare.json'
TABLE_MD, TABLE_CSV, CHART_PNG = 'comparison.md', 'comparison.csv', 'comparison.png'
PLOTS_HINT = ("pip install 'anchorrec-pyg[plots]' (matplotlib) and rerun the same command to "
              f'also get {CHART_PNG}')


def published_combination(config: ExperimentConfig, path: Path | str = 'the config') -> int:
    r"""The index in :meth:`~anchorrec_pyg.config.ExperimentConfig.combinations` of the
    combination equal to :obj:`config`'s own settings (its ``model:`` and ``train:`` values of
    the grid's keys): the model's best-known settings, which a budget evaluates first.

    Raises:
        ConfigError: if a grid key's own value is not among the grid's values (naming
            :obj:`path`, the key and both).
    """
    raw = config_to_dict(config)
    own = {}
    for key, values in config.grid.items():
        node: Any = raw
        for part in key.split('.'):
            node = node[part]
        if node not in values:
            raise ConfigError(f'{path}: {key} is {node!r}, not one of the grid values {values}; '
                              f'budgets start from the config\'s own settings: add it to the '
                              f'grid or set one of them')
        own[key] = node
    return config.combinations().index(own)


def budget_indices(total: int, budget: int | None, first: int = 0) -> list[int]:
    r"""The grid combinations kept by ``--budget``: all of them without a budget (or when
    ``budget >= total``), else :obj:`first` (the published settings,
    :func:`published_combination`) followed by the first ``budget - 1`` others of a fixed random
    permutation of ``range(total)`` (seed :data:`BUDGET_SEED`), sorted. A larger budget keeps
    every combination of a smaller one."""
    if budget is not None and budget < 1:
        raise ConfigError(f'--budget must be >= 1 (got {budget})')
    if not 0 <= first < total:
        raise ConfigError(f'combination {first} is not one of the {total} grid combinations')
    if budget is None or budget >= total:
        return list(range(total))
    order = np.random.default_rng(BUDGET_SEED).permutation(total)
    rest = [int(c) for c in order if c != first]
    return sorted([first, *rest[:budget - 1]])


def published_config_path(model: str, dataset: str, configs_dir: Path = CONFIGS_DIR) -> Path:
    r"""The published configuration of :obj:`model` for :obj:`dataset` (see the module
    docstring for the lookup).

    Raises:
        ConfigError: if no file is found (naming the paths tried).
    """
    name = dataset if dataset in PAPER_DATASETS else REFERENCE_DATASET
    if model == DEFAULT_MODEL:
        candidates = [configs_dir / f'{name}.yaml']
    else:
        candidates = [configs_dir / model / f'{name}.yaml',
                      configs_dir / BASELINES_DIR / f'{model}.yaml']
    for path in candidates:
        if path.is_file():
            return path
    tried = ', '.join(str(p) for p in candidates)
    raise ConfigError(f'no published config for model {model!r} (tried {tried}); pass '
                      f'--configs DIR or --model-config {model}=FILE')


def _model_has_key(model: str, key: str) -> bool:
    from anchorrec_pyg.models.registry import get_model_class
    fields = {f.name for f in dataclasses.fields(get_model_class(model).Config)}
    return key.split('.')[1] in fields


def compare_configs(
    models: Sequence[str],
    base: ExperimentConfig,
    overrides: Sequence[str] = (),
    model_configs: dict[str, str] | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] | None = None,
    configs_dir: Path = CONFIGS_DIR,
    patience: int | None = None,
) -> dict[str, ExperimentConfig]:
    r"""Each model's configuration for the comparison: its published file (or
    ``model_configs[model]``) with the ``data`` and ``eval`` sections of :obj:`base`, then
    :obj:`overrides` (``--set KEY=VALUE``; ``model.<key>`` only where the model has the key),
    :obj:`epochs` (the cap), :obj:`patience` and :obj:`seeds`.

    Raises:
        ConfigError: for an unknown model (listing the valid ones), an override no model
            accepts, an invalid file, or one whose own settings are not a point of its grid
            (:func:`published_combination`).
    """
    from anchorrec_pyg.models.registry import MODELS
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model {unknown[0]!r}; available: {', '.join(MODELS)}")
    model_configs = dict(model_configs or {})
    stray = [m for m in model_configs if m not in models]
    if stray:
        raise ConfigError(f'--model-config {stray[0]}=...: {stray[0]!r} is not among the '
                          f"compared models ({', '.join(models)})")
    pairs = [parse_override(text) for text in overrides]
    for key, _ in pairs:
        if key == 'model.name':
            raise ConfigError('--set model.name cannot be used with compare; choose the models '
                              'with --models')
        if key.startswith('model.') and not any(_model_has_key(m, key) for m in models):
            raise ConfigError(f"unknown key {key} for every compared model "
                              f"({', '.join(models)})")
    shared = config_to_dict(base)
    configs = {}
    for model in models:
        path = model_configs.get(model) or published_config_path(
            model, base.data.name, configs_dir)
        changes: dict[str, Any] = {'data': shared['data'], 'eval': shared['eval'], 'out': None}
        if epochs is not None:
            changes['train.epochs'] = epochs
        if patience is not None:
            changes['train.patience'] = patience
        if seeds is not None:
            changes['seeds'] = list(seeds)
        for key, value in pairs:
            if not key.startswith('model.') or _model_has_key(model, key):
                changes[key] = value
        config = load_config(path, changes)
        if config.model_name != model:
            raise ConfigError(f'{path}: model.name is {config.model_name!r}, expected {model!r}')
        published_combination(config, path)
        configs[model] = config
    return configs


def _identity(base: ExperimentConfig, configs: dict[str, ExperimentConfig]) -> dict[str, Any]:
    shared = run_identity(config_to_dict(base))
    return {
        'data': shared['data'],
        'eval': shared['eval'],
        'models': {m: run_identity(config_to_dict(c)) for m, c in configs.items()},
    }


def _check_folder(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    r"""Refuses a folder created for another dataset, evaluation or model configuration;
    returns the identity to store (the stored models plus the new ones)."""
    path = out / IDENTITY_FILE
    if not path.is_file():
        if out.exists() and any(entry.name != LOCK_FILE for entry in out.iterdir()):
            raise ConfigError(f'{out} is not empty and holds no {IDENTITY_FILE}: not a compare '
                              f'folder; choose another --out')
        return identity
    try:
        stored = json.loads(path.read_text())['identity']
        shared = resolved_identity({'data': stored['data'], 'eval': stored['eval']})
        models = {m: resolved_identity(c) for m, c in stored.get('models', {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f'{path}: malformed ({IDENTITY_FILE} of a compare folder expected)') \
            from None
    except ConfigError as e:
        raise ConfigError(f'{path}: a configuration it holds is not valid in this version ({e}); '
                          f'choose another --out') from None
    for section in ('data', 'eval'):
        diff = first_difference(shared[section], identity[section], f'{section}.')
        if diff is not None:
            raise ConfigError(f'{out} holds a comparison on other {section} settings ({diff}); '
                              f'results cannot be mixed: choose another --out')
    for model, config in identity['models'].items():
        if model in models:
            diff = first_difference(models[model], config)
            if diff is not None:
                raise ConfigError(f'{out} holds {model} trained with another configuration '
                                  f'({diff}); results cannot be mixed: pass the same options '
                                  f'or choose another --out')
    return {**identity, 'models': {**models, **identity['models']}}


def _check_modalities(model: str, config: ExperimentConfig) -> None:
    r"""Loads :obj:`model`'s data once before any training, so that a missing feature file
    fails first, naming the model and the file."""
    from anchorrec_pyg.train.runner import load_data, required_modalities
    modalities = required_modalities(config)
    try:
        load_data(config.data, modalities, log=False)
    except DataError as e:
        needs = ', '.join(modalities) if modalities else 'the interactions'
        raise DataError(f'{model} needs {needs}: {e}') from None


def _epoch_time(folder: Path) -> float:
    r"""Mean training time of one epoch (seconds) over every run of a model's folder."""
    from anchorrec_pyg.train.runner import HISTORY_FILE
    with open(folder / HISTORY_FILE, newline='') as f:
        times = [float(row['train_time_s']) for row in csv.DictReader(f)]
    return float(np.mean(times)) if times else float('nan')


def popularity_row(base: ExperimentConfig) -> dict[str, Any]:
    r"""The popularity reference row: :class:`~anchorrec_pyg.train.evaluator.PopularityScorer`
    evaluated by the same :class:`~anchorrec_pyg.train.evaluator.Evaluator` as every model (same
    data, splits, cut-offs and masking, SPEC §5) on validation and test. It has no seeds: its
    standard deviations are 0."""
    from anchorrec_pyg.train.evaluator import Evaluator, PopularityScorer
    from anchorrec_pyg.train.runner import load_data, mean_std
    data = load_data(base.data, (), log=False)
    evaluator = Evaluator(data, base.eval.ks, base.eval.batch_size)
    scorer = PopularityScorer(data)
    return {'model': POPULARITY, 'status': 'reference',
            'valid': mean_std([evaluator.evaluate(scorer, data, 'valid')]),
            'test': mean_std([evaluator.evaluate(scorer, data, 'test')])}


def _check_against(row: dict[str, Any], reference: dict[str, Any], cap: int,
                   metric: str) -> list[str]:
    r"""The flags of a trained model's row: its selected runs do not beat the popularity
    reference (on test :data:`RANK_METRIC`, the ranking, or on validation :obj:`metric`, the
    selection), or some reached the epoch cap without early stopping (maybe under-trained).
    Each flag is also logged as a warning."""
    flags = []
    below = [split for split, key in (('test', RANK_METRIC), ('valid', metric))
             if row[split][key] <= reference[split][key]]
    if below:
        flags.append(f"not above popularity ({', '.join(below)})")
        logger.warning('%s: its selected run does not beat the popularity reference (test %s '
                       '%.4f vs %.4f, valid %s %.4f vs %.4f)', row['model'], RANK_METRIC,
                       row['test'][RANK_METRIC], reference['test'][RANK_METRIC], metric,
                       row['valid'][metric], reference['valid'][metric])
    capped = sum(not stopped for stopped in row['stopped_early'])
    if capped:
        flags.append(f"epoch cap {cap} reached ({capped}/{len(row['stopped_early'])} runs)")
        logger.warning('%s: %d of its %d selected runs reached the epoch cap (%d) without '
                       'stopping early: it may be under-trained (raise --epochs)', row['model'],
                       capped, len(row['stopped_early']), cap)
    return flags


def run_comparison(
    models: Sequence[str],
    configs: dict[str, ExperimentConfig],
    base: ExperimentConfig,
    out: Path,
    budget: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    r"""Trains every model (its published settings, then the rest of its grid reduced by
    :obj:`budget`, :func:`budget_indices`) in ``<out>/<model>/``, resuming finished runs, adds
    the popularity reference row (:func:`popularity_row`), flags the models that do not beat it
    or that reached the epoch cap, and writes ``compare.json``, the table and (with
    matplotlib) the chart.

    The folder is locked for the whole comparison (a second process is refused, naming this
    one's pid).

    Returns:
        One row per model and the reference, ranked by test Recall@20 (see
        :func:`format_table`).
    """
    missing = [m for m in TABLE_METRICS if int(m.split('@')[1]) not in base.eval.ks]
    if missing:
        raise ConfigError(f'eval.ks must include 10 and 20 for the comparison table (got '
                          f'{base.eval.ks})')
    identity = _check_folder(out, _identity(base, configs))
    for model in models:
        _check_modalities(model, configs[model])
    with lock_folder(out):
        return _compare_locked(models, configs, base, out, identity, budget, progress)


def _compare_locked(models: Sequence[str], configs: dict[str, ExperimentConfig],
                    base: ExperimentConfig, out: Path, identity: dict[str, Any],
                    budget: int | None, progress: bool) -> list[dict[str, Any]]:
    from anchorrec_pyg.train.runner import ExperimentRunner
    from anchorrec_pyg.train.trainer import NonFiniteLossError
    atomic_write_text(out / IDENTITY_FILE, json.dumps({'identity': identity}, indent=2) + '\n')

    rows = []
    for model in models:
        config = configs[model]
        folder = out / model
        combinations = config.combinations()
        first = published_combination(config)
        indices = budget_indices(len(combinations), budget, first)
        logger.info('%s: its published settings (c%03d %s) and %d more of %d grid combinations '
                    'x %d seeds', model, first, json.dumps(combinations[first]),
                    len(indices) - 1, len(combinations), len(config.seeds))
        runner = ExperimentRunner(config, out=folder, progress=progress, combinations=indices,
                                  resume=(folder / 'config.yaml').is_file())
        row: dict[str, Any] = {'model': model, 'combinations': len(indices),
                               'grid_size': len(combinations), 'seeds': list(config.seeds),
                               'epoch_cap': config.train.epochs}
        try:
            summary = runner.run()
        except NonFiniteLossError as e:
            logger.error('%s: every combination diverged (%s)', model, e)
            rows.append({**row, 'status': 'diverged'})
            continue
        selected = summary['selected']
        row.update(status='ok', selected=selected['params'],
                   published=selected['combination'] == f'c{first:03d}',
                   valid=summary['valid'], test=summary['test'],
                   best_epochs=selected['best_epochs'], epochs_run=selected['epochs_run'],
                   stopped_early=selected['stopped_early'], epoch_time_s=_epoch_time(folder))
        rows.append(row)

    reference = popularity_row(base)
    for row in rows:
        if row['status'] == 'ok':
            row['flags'] = _check_against(row, reference, row['epoch_cap'], base.eval.metric)
    rows = rank_rows([*rows, reference])
    table = format_table(rows, base)
    atomic_write_text(out / TABLE_MD, table)
    atomic_write_text(out / TABLE_CSV, _csv_table(rows))
    atomic_write_text(out / IDENTITY_FILE,
                      json.dumps({'identity': identity, 'rows': rows}, indent=2) + '\n')
    write_chart(rows, base, out / CHART_PNG)
    return rows


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r"""Sorts the models and the popularity reference by test Recall@20 (mean over seeds,
    descending; diverged models last) and numbers the ranks."""
    scored = sorted((r for r in rows if r['status'] in ('ok', 'reference')),
                    key=lambda r: (-r['test'][RANK_METRIC], r['model']))
    ranked = [{**r, 'rank': i} for i, r in enumerate(scored, start=1)]
    return ranked + [{**r, 'rank': None} for r in rows if r['status'] == 'diverged']


def _params(params: dict[str, Any]) -> str:
    return ', '.join(f'{k.split(".", 1)[1]}={v}' for k, v in params.items()) or '(config)'


def _stopped(row: dict[str, Any]) -> str:
    pairs = zip(row['epochs_run'], row['best_epochs'])
    return ', '.join(f'{run} ({best})' for run, best in pairs)


def format_table(rows: list[dict[str, Any]], base: ExperimentConfig) -> str:
    r"""The Markdown table: one row per model, test Recall/NDCG@10/20 as mean ± std over seeds
    of the combination selected on validation Recall@20, the validation score that selected
    it, the epoch each selected run stopped at (and its best epoch), the mean epoch time, the
    selected hyper-parameters (``published``: the model's own settings) and the flags of
    :func:`run_comparison`; the popularity reference ranked among them."""
    metric = base.eval.metric
    header = ['rank', 'model', *[_label(m) for m in TABLE_METRICS], f'valid {_label(metric)}',
              'stopped (best) epoch', 'epoch (s)', 'runs', 'selected', 'flags']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
    for r in rows:
        if r['status'] == 'reference':
            cells = [str(r['rank']), f"*{r['model']}*",
                     *[_mean_std(r['test'], m) for m in TABLE_METRICS],
                     _mean_std(r['valid'], metric), '-', '-', 'reference, not trained', '-', '']
            lines.append('| ' + ' | '.join(cells) + ' |')
            continue
        runs = f"{r['combinations']}/{r['grid_size']} x {len(r['seeds'])}"
        if r['status'] != 'ok':
            cells = ['-', r['model'], *['diverged'] * len(TABLE_METRICS), '-', '-', '-', runs,
                     '-', '']
        else:
            selected = _params(r['selected']) + (' (published)' if r['published'] else '')
            cells = [str(r['rank']), r['model'],
                     *[_mean_std(r['test'], m) for m in TABLE_METRICS],
                     _mean_std(r['valid'], metric), _stopped(r), f"{r['epoch_time_s']:.2f}",
                     runs, selected, '; '.join(f'⚠ {f}' for f in r['flags'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    data = base.data
    where = (f'synthetic preset {data.name!r}' if data.root is None
             else f'{data.root}/{data.name}')
    seeds = next((r['seeds'] for r in rows if 'seeds' in r), [])
    caption = (f'Dataset: {where}. Test metrics (full ranking, SPEC §5) of the combination '
               f'selected on validation {_label(metric)}, mean ± std over {len(seeds)} seed'
               f"{'s' if len(seeds) != 1 else ''} {seeds}; *{POPULARITY}*: items ranked by "
               f'training interactions, same splits and metrics, not trained; stopped (best) '
               f'epoch: per seed, the epoch the selected run stopped at (early stopping on '
               f'validation, or the epoch cap) and its best validation epoch; runs = '
               f'combinations trained / grid size x seeds, the first being the published '
               f'settings; epoch (s) = mean training time of one epoch; ⚠ not above popularity: '
               f'the selected run does not beat the popularity reference; ⚠ epoch cap: a '
               f'selected run reached the cap before early stopping ended it (it may be '
               f'under-trained).')
    return '\n'.join(lines) + '\n\n' + caption + '\n'


def _label(metric: str) -> str:
    name, k = metric.split('@')
    return {'recall': 'Recall', 'ndcg': 'NDCG', 'precision': 'Precision', 'map': 'MAP',
            'hit': 'HitRate'}[name] + f'@{k}'


def _mean_std(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.4f} ± {metrics[f'{key}_std']:.4f}"


def _csv_table(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ['rank', 'model', 'status']
    for split in ('test', 'valid'):
        for m in TABLE_METRICS:
            columns += [f'{split}_{m}', f'{split}_{m}_std']
    columns += ['epochs_run', 'best_epochs', 'stopped_early', 'epoch_time_s', 'combinations',
                'grid_size', 'seeds', 'selected', 'published', 'flags']
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    for r in rows:
        record = {'rank': r['rank'], 'model': r['model'], 'status': r['status']}
        if r['status'] != 'reference':
            record.update(combinations=r['combinations'], grid_size=r['grid_size'],
                          seeds=json.dumps(r['seeds']))
        if r['status'] in ('ok', 'reference'):
            for split in ('test', 'valid'):
                for m in TABLE_METRICS:
                    record[f'{split}_{m}'] = r[split][m]
                    record[f'{split}_{m}_std'] = r[split][f'{m}_std']
        if r['status'] == 'ok':
            record.update(epochs_run=json.dumps(r['epochs_run']),
                          best_epochs=json.dumps(r['best_epochs']),
                          stopped_early=json.dumps(r['stopped_early']),
                          epoch_time_s=r['epoch_time_s'], selected=json.dumps(r['selected']),
                          published=r['published'], flags=json.dumps(r['flags']))
        writer.writerow(record)
    return buffer.getvalue()


def write_chart(rows: list[dict[str, Any]], base: ExperimentConfig, path: Path) -> bool:
    r"""Writes the bar chart (test Recall/NDCG@10/20, error bars = std over seeds) to
    :obj:`path`; without matplotlib logs how to get it and returns ``False``."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning('matplotlib is not installed, so %s was not written: %s', path.name,
                       PLOTS_HINT)
        return False
    ok = [r for r in rows if r['status'] in ('ok', 'reference')]
    width = 0.8 / max(len(ok), 1)
    x = np.arange(len(TABLE_METRICS))
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 2.0 + 0.3 * len(ok) * len(x))), 4.2))
    try:
        for i, r in enumerate(ok):
            means = [r['test'][m] for m in TABLE_METRICS]
            stds = [r['test'][f'{m}_std'] for m in TABLE_METRICS]
            reference = r['status'] == 'reference'
            ax.bar(x + (i - (len(ok) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                   label=f"{r['model']} (reference)" if reference else r['model'],
                   color='0.6' if reference else None, hatch='//' if reference else None)
        ax.set_xticks(x, [_label(m) for m in TABLE_METRICS])
        ax.set_ylabel('test score (mean ± std over seeds)')
        ax.set_title(f'{base.data.name}: test metrics, models selected on validation '
                     f'{_label(base.eval.metric)}')
        ax.legend(fontsize='small')
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120))
    finally:
        plt.close(fig)
    return True


# Command line ################################################################################

COMPARE_EXAMPLES = '''examples:
  anchorrec-pyg compare --budget 1 --epochs 200 --patience 10      # published settings
  anchorrec-pyg compare --models anchorrec alignrec lightgcn --budget 4 --out runs/cmp
  anchorrec-pyg compare --out runs/cmp ...same options...           # rerun: resumes, skips done
  anchorrec-pyg compare --set data.name=baby --set data.root=~/mmrec-data --budget 8

Each model uses its published grid and training settings (configs/<dataset>.yaml for AnchorRec,
configs/alignrec/<dataset>.yaml, configs/baselines/<model>.yaml; on datasets other than
baby/sports/office/games the Baby files). --budget N trains N combinations per model: its
published settings first, then a fixed random subset of its grid (nested as N grows); --epochs E
caps every model's training at E epochs (early stopping ends runs sooner, see --patience). Every
table has a popularity reference row; a model whose selected run does not beat it, or that
reached the epoch cap, is flagged in the table and the log.'''


def _parse_model_configs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, path = item.partition('=')
        if not sep or not model or not path:
            raise ConfigError(f'malformed --model-config {item!r}: expected MODEL=FILE')
        out[model.strip().lower()] = path
    return out


def cmd_compare(args: argparse.Namespace) -> None:
    from anchorrec_pyg.models.registry import MODELS
    models = [m.lower() for m in args.models] if args.models else list(MODELS)
    if len(set(models)) != len(models):
        raise ConfigError(f"--models lists a model twice ({' '.join(args.models)})")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f'--epochs must be >= 1 (got {args.epochs})')
    if args.budget is not None and args.budget < 1:
        raise ConfigError(f'--budget must be >= 1 (got {args.budget})')
    if args.patience is not None and args.patience < 1:
        raise ConfigError(f'--patience must be >= 1 (got {args.patience})')
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f'train.device={args.device}')
    base = load_config(args.config, [o for o in overrides
                                     if o.partition('=')[0].strip().startswith(('data.',
                                                                                'eval.'))])
    configs_dir = Path(args.configs) if args.configs else CONFIGS_DIR
    configs = compare_configs(models, base, overrides, _parse_model_configs(args.model_config),
                              args.epochs, args.seeds, configs_dir, args.patience)
    out = Path(args.out) if args.out else default_out_dir(f'compare-{base.data.name}')
    rows = run_comparison(models, configs, base, out, args.budget, progress=not args.quiet)
    print(format_table(rows, base), end='')
    chart = out / CHART_PNG
    print(f'results: {out} ({TABLE_MD}, {TABLE_CSV}'
          f"{', ' + CHART_PNG if chart.is_file() else ''})")
    if not chart.is_file():
        print(f'no chart: {PLOTS_HINT}')


def cmd_models(args: argparse.Namespace) -> None:
    print(models_listing())


def models_listing() -> str:
    r"""One line per registered model: its name, the feature tables it needs, its
    description."""
    from anchorrec_pyg.models.registry import MODELS
    rows = []
    for name, cls in MODELS.items():
        needs = ', '.join(cls.required_modalities(cls.Config())) or 'ids only'
        rows.append((name, f'[{needs}]', cls.description))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return '\n'.join(f'{a:<{w0}}  {b:<{w1}}  {c}' for a, b, c in rows)


def add_parsers(sub: Any) -> None:
    r"""Registers the ``compare`` and ``models`` subcommands on the CLI's subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    compare = sub.add_parser(
        'compare', formatter_class=formatter,
        help='train several models on one dataset and write one comparison table',
        description='Train every model (default: all) on one dataset with its published grid '
        '(or a --budget-reduced one) and seeds, select each on validation, and write one table '
        f'(Markdown and CSV: test Recall/NDCG@10/20, mean ± std over seeds, with the selected '
        f'hyper-parameters) and a bar chart ({CHART_PNG}, with the plots extra). Rerunning on '
        'the same --out resumes and skips finished runs.', epilog=COMPARE_EXAMPLES)
    compare.add_argument('--models', metavar='MODEL', nargs='+',
                         help='models to compare (default: all; see `anchorrec-pyg models`)')
    compare.add_argument('--config', metavar='FILE',
                         help='a config whose data: and eval: sections define the dataset and '
                         'the evaluation (default: the embedded default dataset)')
    compare.add_argument('--set', metavar='KEY=VALUE', action='append', default=[],
                         dest='overrides',
                         help='override a key of every model\'s config (repeatable; model.KEY '
                         'goes to the models that have KEY)')
    compare.add_argument('--model-config', metavar='MODEL=FILE', action='append', default=[],
                         help='use FILE instead of MODEL\'s published config (repeatable)')
    compare.add_argument('--configs', metavar='DIR',
                         help=f'folder of the published configs (default: {CONFIGS_DIR})')
    compare.add_argument('--budget', metavar='N', type=int,
                         help="train at most N grid combinations per model: its published "
                         "settings (the config's own values) first, then N-1 drawn from the "
                         'grid (deterministic, nested)')
    compare.add_argument('--epochs', metavar='E', type=int,
                         help='cap every model at E epochs (train.epochs); early stopping on '
                         'validation ends runs sooner')
    compare.add_argument('--patience', metavar='P', type=int,
                         help='stop a run after P validations without a better eval.metric '
                         '(train.patience of every model; default: each model\'s published '
                         'patience)')
    compare.add_argument('--seeds', metavar='SEED', type=int, nargs='+',
                         help='override the seeds of every model (default: the published five)')
    compare.add_argument('--out', metavar='DIR',
                         help='output folder (default: runs/compare-<dataset>-<timestamp>); '
                         'rerunning on it resumes')
    compare.add_argument('--device', choices=('cpu', 'cuda', 'auto'),
                         help='where to compute (default: each config\'s train.device)')
    compare.add_argument('--quiet', action='store_true',
                         help='only warnings and the results (no progress bars or epoch lines)')
    compare.set_defaults(func=cmd_compare)

    models = sub.add_parser('models', help='list the available models',
                            description='List the models of the registry (model.name), the '
                            'feature tables each needs and a one-line description.')
    models.add_argument('--quiet', action='store_true', help='no effect (listing only)')
    models.set_defaults(func=cmd_models)
