r"""The experiment runner: every grid combination times every seed, selection on validation,
and the run folder of Contract 4.

For each combination :math:`c` of the ``grid`` and each seed :math:`s`, one
:class:`~anchorrec_pyg.train.trainer.Trainer` run keeps its best validation epoch (SPEC §5).
The chosen combination is the one with the highest **validation** ``eval.metric``
(Recall@20 by default) averaged over seeds; test metrics never take part in the choice (MMRec's
runner picks by test score, which leaks the test set). The chosen combination's validation and
test metrics are reported as mean and standard deviation over seeds (population standard
deviation, 0 for one seed).

Run folder (Contract 4)::

    <out>/config.yaml      the resolved configuration (with its grid and seeds)
    <out>/summary.json     {"valid": {"recall@20": mean, "recall@20_std": std, ...},
                            "test": {...}, "selected": {"params": ..., ...}, ...}
    <out>/runs.csv         one row per combination x seed: parameters, valid and test metrics
    <out>/history.csv      every run's per-epoch records, with the run id
    <out>/runs/<run_id>/   checkpoint.pt (+ checkpoint.pt.sha256), history.csv, metrics.json,
                           config.yaml
    <out>/.lock            present while a process runs in the folder (fcntl.flock)

Every file is written whole (:func:`anchorrec_pyg.io.atomic_write`).
"""
import csv
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.config import (
    DataConfig,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    first_difference,
    run_identity,
    stored_identity,
)
from anchorrec_pyg.errors import AnchorRecError, CheckpointError, ConfigError
from anchorrec_pyg.io import (
    LOCK_FILE,
    atomic_write_text,
    check_writable_folder,
    default_out_dir,
    is_temporary,
    lock_folder,
    remove_empty_folders,
    remove_temporary_files,
)
from anchorrec_pyg.train.distributed import DistContext
from anchorrec_pyg.train.trainer import NonFiniteLossError, Trainer, TrainResult

logger = logging.getLogger(__name__)

CONFIG_FILE = 'config.yaml'
SUMMARY_FILE = 'summary.json'
RUNS_FILE = 'runs.csv'
HISTORY_FILE = 'history.csv'
CHECKPOINT_FILE = 'checkpoint.pt'
METRICS_FILE = 'metrics.json'
RUNS_DIR = 'runs'


def required_modalities(config: ExperimentConfig) -> Tuple[str, ...]:
    r"""The feature tables to load: ``data.modalities``, or the model's own."""
    from anchorrec_pyg.models.registry import get_model_class
    if config.data.modalities is not None:
        return tuple(config.data.modalities)
    return tuple(get_model_class(config.model_name).required_modalities(config.model))


def load_data(data: DataConfig, modalities: Sequence[str], log: bool = True) -> HeteroData:
    r"""The :class:`HeteroData` (Contract 1) described by :obj:`data`, with :obj:`modalities`.

    With ``data.root`` null, the synthetic preset ``data.name`` is generated once into the
    package cache first.
    """
    from anchorrec_pyg.data import MMRecDataset, ensure_default_dataset
    root, name = data.root, data.name
    if root is None:
        root, name = ensure_default_dataset(preset=data.name)
    dataset = MMRecDataset(
        root, name, modalities=tuple(modalities), k=data.knn_k, mm_source=data.mm_source,
        inter_file=data.inter_file, image_file=data.image_file, text_file=data.text_file,
        mm_dir=data.mm_dir, mm_file=data.mm_file, processed_dir=data.processed_dir, log=log)
    return dataset[0]


def build_model(config: ExperimentConfig, data: HeteroData, seed: int) -> torch.nn.Module:
    r"""The model of :obj:`config`, its parameters initialised from :obj:`seed`."""
    from anchorrec_pyg.models.registry import get_model_class
    torch.manual_seed(seed)
    return get_model_class(config.model_name)(data, config.model)


def _csv_text(rows: List[Dict[str, Any]], first: Sequence[str] = ()) -> str:
    columns = list(first)
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                         for k, v in row.items()})
    return buffer.getvalue()


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + '\n'


def mean_std(results: Sequence[Dict[str, float]]) -> Dict[str, float]:
    r"""``{key: mean, key_std: std}`` over :obj:`results` (population std, 0 for one)."""
    out: Dict[str, float] = {}
    for key in results[0]:
        values = np.array([r[key] for r in results], dtype=np.float64)
        out[key] = float(values.mean())
        out[f'{key}_std'] = float(values.std())
    return out


class ExperimentRunner:
    r"""Trains every combination of :obj:`config.grid` with every seed and writes the run
    folder.

    Args:
        config (ExperimentConfig): The experiment.
        out (str or Path, optional): The output folder; defaults to ``config.out`` or
            :func:`anchorrec_pyg.io.default_out_dir` (``runs/<model>-<dataset>-<timestamp>``).
        resume (bool, optional): Continue the run in :obj:`out` (its ``config.yaml`` must equal
            :obj:`config`); finished runs are not retrained. (default: :obj:`False`)
        progress (bool, optional): Show progress bars. (default: :obj:`False`)
        combinations (list of int, optional): Train only these indices of
            :meth:`~anchorrec_pyg.config.ExperimentConfig.combinations` (a reduced search; run
            ids keep the full grid's numbering). (default: :obj:`None`, all)
        dist (DistContext, optional): This process's place in a data-parallel run (the
            processes other than 0 are given a scratch :obj:`out`: only process 0 writes the run
            folder).
    """
    def __init__(
        self,
        config: ExperimentConfig,
        out: Union[str, os.PathLike, None] = None,
        resume: bool = False,
        progress: bool = False,
        combinations: Optional[Sequence[int]] = None,
        dist: DistContext = DistContext(),
    ) -> None:
        out = out if out is not None else config.out
        self.out = (Path(out) if out is not None
                    else default_out_dir(f'{config.model_name}-{config.data.name}'))
        self.config = config_from_dict({**config_to_dict(config), 'out': str(self.out)})
        self.resume = resume
        self.progress = progress
        self.subset = None if combinations is None else sorted(set(combinations))
        self.dist = dist
        self._data: Dict[str, HeteroData] = {}

    def _check_folder(self) -> None:
        r"""Refuses an output folder this run may not write, after removing the temporary
        files of a killed writer (called with the folder's lock held, before anything is
        written)."""
        config_path = self.out / CONFIG_FILE
        if self.resume:
            if not config_path.is_file():
                raise CheckpointError(f'{self.out}: nothing to resume (no {CONFIG_FILE})')
            diff = first_difference(stored_identity(config_path),
                                    run_identity(config_to_dict(self.config)))
            if diff is not None:
                raise ConfigError(f'{config_path}: the run being resumed has another '
                                  f'configuration ({diff}); resume without --config/--set or '
                                  f'pass the same ones')
        elif self._killed_before_checkpoint():
            logger.info('%s: removing what a run of this configuration killed before its '
                        'first checkpoint left', self.out)
            self._remove_unfinished()
        elif any(entry.name != LOCK_FILE and not is_temporary(entry)
                 for entry in self.out.iterdir()):
            raise ConfigError(f'output folder {self.out} is not empty; pass --resume to '
                              f'continue the run in it or choose another --out')
        remove_temporary_files(self.out)

    def _killed_before_checkpoint(self) -> bool:
        r"""Whether :obj:`out` holds exactly what a fresh run of this configuration writes
        before its first checkpoint (``config.yaml`` and ``runs/<id>/config.yaml``, plus the
        lock and temporary files), as a run killed then (SIGKILL: no clean-up) leaves it:
        nothing to keep, so the plain rerun replaces it."""
        def entries(folder: Path) -> List[Path]:
            return [e for e in folder.iterdir() if e.name != LOCK_FILE and not is_temporary(e)]

        top = entries(self.out)
        runs = self.out / RUNS_DIR
        if sorted(e.name for e in top) != sorted([CONFIG_FILE, RUNS_DIR]) or not runs.is_dir():
            return False
        started = entries(runs)
        if not started or not all(e.is_dir() and [f.name for f in entries(e)] == [CONFIG_FILE]
                                  for e in started):
            return False
        try:
            stored = stored_identity(self.out / CONFIG_FILE)
        except AnchorRecError:
            return False
        return first_difference(stored, run_identity(config_to_dict(self.config))) is None

    def _remove_unfinished(self) -> None:
        r"""After a fresh run failed before its first checkpoint, removes what it wrote (the
        folder was empty or missing), so that the fixed rerun finds nothing in its way."""
        if self.resume or any((self.out / RUNS_DIR).glob(f'*/{CHECKPOINT_FILE}')):
            return
        for entry in self.out.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def data_for(self, config: ExperimentConfig) -> HeteroData:
        r"""The dataset of :obj:`config`, loaded once per distinct data configuration."""
        modalities = required_modalities(config)
        key = json.dumps([asdict(config.data), modalities], sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(config.data, modalities, log=self.progress)
        return self._data[key]

    def _train_one(self, run_id: str, run_config: ExperimentConfig, seed: int) -> TrainResult:
        run_dir = self.out / RUNS_DIR / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(run_config))
        data = self.data_for(run_config)
        model = build_model(run_config, data, seed)
        trainer = Trainer(model, data, run_config.train, run_config.eval, seed,
                          checkpoint_path=run_dir / CHECKPOINT_FILE,
                          run_config=config_to_dict(run_config), progress=self.progress,
                          log_prefix=run_id, dist=self.dist)
        result = trainer.fit(resume=self.resume)
        atomic_write_text(run_dir / HISTORY_FILE, _csv_text(result.history))
        return result

    def run(self) -> Dict[str, Any]:
        r"""Trains everything, writes the run folder and returns the summary.

        The configuration, the data of every combination and the output folder are checked
        before anything is written; the folder is locked for the whole run (a second process
        is refused, naming this one's pid); a fresh run that fails before its first checkpoint
        removes what it wrote.
        """
        start = time.perf_counter()
        config = self.config
        combinations = config.combinations()
        indices = range(len(combinations)) if self.subset is None else self.subset
        if not indices or not all(0 <= c < len(combinations) for c in indices):
            raise ConfigError(f'combinations must be indices of the {len(combinations)} grid '
                              f'combinations, got {self.subset}')
        check_writable_folder(self.out)
        for c in indices:
            self.data_for(config.single_run(combinations[c], config.seeds[0]))
        created = next((folder for folder in reversed([self.out, *self.out.parents])
                        if not folder.exists()), None)
        failed = checked = False
        try:
            with lock_folder(self.out):
                try:
                    self._check_folder()
                    checked = True
                    atomic_write_text(self.out / CONFIG_FILE, dump_config(config))
                    return self._run(config, combinations, indices, start)
                except Exception:
                    failed = True
                    if checked:
                        self._remove_unfinished()
                    raise
        finally:
            if failed and created is not None:
                remove_empty_folders(self.out, created)

    def _run(self, config: ExperimentConfig, combinations: List[Dict[str, Any]],
             indices: Sequence[int], start: float) -> Dict[str, Any]:
        metric = config.eval.metric
        rows: List[Dict[str, Any]] = []
        history: List[Dict[str, Any]] = []
        results: Dict[int, List[Tuple[str, TrainResult]]] = {}
        errors: List[str] = []
        total = len(indices) * len(config.seeds)
        for c in indices:
            params = combinations[c]
            for seed in config.seeds:
                run_id = f'c{c:03d}-s{seed}'
                logger.info('run %d/%d %s %s', len(rows) + 1, total, run_id,
                            json.dumps(params) if params else '')
                row: Dict[str, Any] = {'run_id': run_id, 'combination': f'c{c:03d}',
                                       'seed': seed, **params}
                run_config = config.single_run(params, seed)
                try:
                    result = self._train_one(run_id, run_config, seed)
                except NonFiniteLossError as e:
                    if total == 1:
                        raise
                    logger.error('%s diverged: %s', run_id, e)
                    errors.append(f'{run_id}: {e}')
                    rows.append({**row, 'status': 'diverged'})
                    continue
                results.setdefault(c, []).append((run_id, result))
                row.update(status='ok', best_epoch=result.best_epoch,
                           epochs_run=result.epochs_run)
                row.update({f'valid_{k}': v for k, v in result.valid.items()})
                row.update({f'test_{k}': v for k, v in result.test.items()})
                rows.append(row)
                history += [{'run_id': run_id, 'combination': f'c{c:03d}', 'seed': seed, **r}
                            for r in result.history]
                metrics = {'run_id': run_id, 'params': params, 'seed': seed,
                           **{k: v for k, v in asdict(result).items() if k != 'history'}}
                atomic_write_text(self.out / RUNS_DIR / run_id / METRICS_FILE,
                                  _json_text(metrics))
                atomic_write_text(self.out / RUNS_FILE, _csv_text(rows))

        complete = [c for c in indices if len(results.get(c, [])) == len(config.seeds)]
        if not complete:
            raise NonFiniteLossError(f'every combination diverged; first: {errors[0]}')
        scores = {c: float(np.mean([r.valid[metric] for _, r in results[c]])) for c in complete}
        chosen = max(complete, key=lambda c: (scores[c], -c))
        runs = results[chosen]
        best_run = max(runs, key=lambda rr: rr[1].valid[metric])[0]
        summary = {
            'model': config.model_name,
            'dataset': config.data.name,
            'metric': metric,
            'valid': mean_std([r.valid for _, r in runs]),
            'test': mean_std([r.test for _, r in runs]),
            'selected': {
                'combination': f'c{chosen:03d}',
                'params': combinations[chosen],
                'seeds': list(config.seeds),
                'run_ids': [run_id for run_id, _ in runs],
                'best_run': best_run,
                'best_epochs': [r.best_epoch for _, r in runs],
                'epochs_run': [r.epochs_run for _, r in runs],
                'stopped_early': [r.stopped_early for _, r in runs],
            },
            'combinations': [{
                'combination': f'c{c:03d}',
                'params': combinations[c],
                'status': 'ok' if c in complete else 'diverged',
                **({f'valid_{metric}': scores[c]} if c in complete else {}),
            } for c in indices],
            'num_runs': total,
            'out': str(self.out),
            'wall_time_s': time.perf_counter() - start,
        }
        atomic_write_text(self.out / RUNS_FILE, _csv_text(rows))
        atomic_write_text(self.out / HISTORY_FILE, _csv_text(history))
        atomic_write_text(self.out / SUMMARY_FILE, _json_text(summary))
        logger.info('selected %s %s by validation %s %.4f; wrote %s', summary['selected'][
            'combination'], json.dumps(combinations[chosen]), metric, scores[chosen], self.out)
        return summary


def run_experiment(
    config: ExperimentConfig,
    out: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    progress: bool = False,
    dist: DistContext = DistContext(),
) -> Dict[str, Any]:
    r"""Runs :obj:`config` (see :class:`ExperimentRunner`) and returns the summary written to
    ``<out>/summary.json``."""
    return ExperimentRunner(config, out, resume, progress, dist=dist).run()


def resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    r"""The checkpoint named by :obj:`path`: a ``checkpoint.pt`` file, a run's folder
    (``runs/<run_id>``) or an experiment folder (its selected best run)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    summary_path = path / SUMMARY_FILE
    if summary_path.is_file():
        try:
            best = json.loads(summary_path.read_text())['selected']['best_run']
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f'{summary_path}: malformed summary (no selected.best_run)')
        return path / RUNS_DIR / str(best) / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f'no such run folder or checkpoint: {path}')
    raise CheckpointError(f'{path}: neither a checkpoint file nor a run folder (no '
                          f'{CHECKPOINT_FILE} or {SUMMARY_FILE} in it)')


def load_trained_model(
    path: Union[str, os.PathLike],
    device: Optional[str] = None,
) -> Tuple[torch.nn.Module, HeteroData, ExperimentConfig]:
    r"""Rebuilds a trained model from a checkpoint or run folder (see
    :func:`resolve_checkpoint`): its configuration, its dataset and the best epoch's weights.

    Returns:
        ``(model, data, config)`` with the model in evaluation mode on :obj:`device`
        (default: the run's ``train.device``).
    """
    from anchorrec_pyg.train.checkpoint import load_checkpoint
    from anchorrec_pyg.train.trainer import checkpoint_weights, resolve_device
    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    try:
        config = config_from_dict(state['config'])
    except ConfigError as e:
        raise CheckpointError(f'{checkpoint}: stored configuration is invalid ({e})') from None
    data = load_data(config.data, required_modalities(config), log=False)
    model = build_model(config, data, int(state.get('seed', 0)))
    try:
        model.load_state_dict(checkpoint_weights(state, checkpoint))
    except RuntimeError as e:
        reason = ' '.join(str(e).split())[:200]
        raise CheckpointError(f'{checkpoint}: weights do not fit the model ({reason})') from None
    target = resolve_device(device or config.train.device)
    model = model.to(target).eval()
    return model, data.to(target), config
