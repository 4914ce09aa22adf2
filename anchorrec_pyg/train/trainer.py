r"""One training run (SPEC §4-§5): Adam with MMRec's learning-rate decay, validation every
``eval_every`` epochs, early stopping, the best epoch's weights kept, and test metrics computed
once, with those weights, at the end.

The learning rate of epoch :math:`e` (0-based) is
:math:`\mathrm{lr} \cdot \mathrm{lr\_decay}^{\,e / \mathrm{lr\_decay\_every}}`
(:class:`torch.optim.lr_scheduler.LambdaLR`, stepped after every epoch). An epoch draws a fresh
permutation of the training interactions and fresh negatives
(:class:`~anchorrec_pyg.train.sampler.TripletSampler`), then for every batch runs the forward
pass on the graph its batch source gives (``train.mode``: the full graph, or a sampled subgraph
around the batch, :mod:`anchorrec_pyg.train.batches`), the model's loss (with the configured
:math:`B`, SPEC §4) and one optimiser step (:mod:`anchorrec_pyg.train.optim`: PyTorch's fused
Adam over every parameter, or, with ``train.sparse_updates`` in sampled mode, lazy row-sparse
Adam (:class:`~anchorrec_pyg.train.optim.RowAdam`) over the subgraph's rows of the node tables
and Adam over the rest). Evaluation always runs the
full-graph forward.

The trainer is model-agnostic: it needs only the :class:`~anchorrec_pyg.models.base.RecModel`
contract, plus two optional hooks a model may define:

* ``needs_negatives = False``: batches carry positive pairs only (``neg`` is :obj:`None`).
* ``on_epoch_start(data, epoch, generator)``: called before each epoch with the run's
  generator (e.g. to resample a pruned graph), so that the hook stays reproducible and resumable.

With a :class:`~anchorrec_pyg.train.distributed.DistContext` of several processes the trainer
is one data-parallel process (:mod:`anchorrec_pyg.train.distributed`): its share of every
batch, gradients averaged by ``DistributedDataParallel``, evaluation and files on process 0.

Checkpoints (:mod:`anchorrec_pyg.train.checkpoint`) hold the model, optimizer, scheduler, the
epoch, the best-so-far record and weights, the history and every RNG state, so a killed run
resumed with ``resume=True`` reaches the same final metrics as an uninterrupted run on CPU.
"""
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch_geometric.data import HeteroData

from anchorrec_pyg.config import EvalConfig, TrainConfig, first_difference, resolved_identity
from anchorrec_pyg.errors import AnchorRecError, CheckpointError, ConfigError
from anchorrec_pyg.io import remove_file
from anchorrec_pyg.models.base import RecModel, row_gradient_buffers, row_sparse_gradients
from anchorrec_pyg.nn.feature_grad import GradBuffer
from anchorrec_pyg.schema import USER_ITEM
from anchorrec_pyg.train.allocator import keep_freed_memory
from anchorrec_pyg.train.batches import FullBatches, SampledBatches, Shard
from anchorrec_pyg.train.checkpoint import (
    best_weights_path,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from anchorrec_pyg.train.distributed import DistContext, LossStep, sparse_nccl_refusal
from anchorrec_pyg.train.evaluator import Evaluator
from anchorrec_pyg.train.optim import RunOptimizer
from anchorrec_pyg.train.sampler import TripletSampler

logger = logging.getLogger(__name__)


class NonFiniteLossError(AnchorRecError, FloatingPointError):
    r"""A loss became NaN or infinite; the message names the epoch, the batch and the term."""


@dataclass
class TrainResult:
    r"""The outcome of one run.

    Attributes:
        best_epoch: The epoch with the best validation ``eval.metric`` (1-based).
        epochs_run: The number of epochs trained.
        valid: Validation metrics at :obj:`best_epoch`.
        test: Test metrics of the :obj:`best_epoch` weights.
        stopped_early: Whether early stopping ended the run.
        history: One record per epoch (``epoch``, ``lr``, ``loss``, each loss term,
            ``train_time_s``, ``eval_time_s`` and ``valid_<metric>`` on evaluated epochs).
    """
    best_epoch: int
    epochs_run: int
    valid: Dict[str, float]
    test: Dict[str, float]
    stopped_early: bool
    history: List[Dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    r"""``'auto'`` -> CUDA when available, else CPU; other names are checked for
    availability."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available "
                          f"(use 'cpu' or 'auto')")
    if name == 'mps' and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but MPS is not available (use 'cpu' or 'auto')")
    return torch.device(name)


def checkpoint_weights(state: Dict[str, Any],
                       path: Union[str, os.PathLike, None] = None) -> Dict[str, torch.Tensor]:
    r"""The weights a checkpoint offers for evaluation: the best validation epoch's (a finished
    run stores only those; a partial run the best so far, kept in the file beside the
    checkpoint :obj:`path` (:func:`~anchorrec_pyg.train.checkpoint.best_weights_path`), or the
    latest before any evaluation)."""
    if state['finished']:
        return state['model']
    if state.get('best_model') is not None:
        return state['best_model']
    best_epoch = state.get('best', {}).get('epoch', 0)
    if best_epoch == 0:
        return state['model']
    if path is None:
        raise CheckpointError('this partial run keeps its best weights beside its checkpoint: '
                              'pass the checkpoint path')
    return load_weights(best_weights_path(path), best_epoch)


class Trainer:
    r"""Trains one model on one dataset with one seed.

    Args:
        model (RecModel): The model, already built (seeded) on :obj:`data`.
        data (HeteroData): The dataset (Contract 1).
        train (TrainConfig): Optimiser, schedule, stopping and device settings.
        eval (EvalConfig): Cut-offs, selection metric and user batch size.
        seed (int): Seeds the run's generator (shuffling, negatives, epoch hooks).
        checkpoint_path (str or Path, optional): Where the resumable checkpoint is written;
            :obj:`None` writes none.
        run_config (dict, optional): The resolved configuration of this run, stored in the
            checkpoint (to rebuild the model later) and compared on resume.
        progress (bool, optional): Show progress bars. (default: :obj:`False`)
        log_prefix (str, optional): Prepended to every log line (e.g. the run id).
        dist (DistContext, optional): This process's place in a data-parallel run (default:
            a single process).
    """
    def __init__(
        self,
        model: RecModel,
        data: HeteroData,
        train: TrainConfig,
        eval: EvalConfig,
        seed: int,
        checkpoint_path: Union[str, os.PathLike, None] = None,
        run_config: Optional[Dict[str, Any]] = None,
        progress: bool = False,
        log_prefix: str = '',
        dist: DistContext = DistContext(),
    ) -> None:
        self.train_cfg = train
        self.dist = dist
        self.eval_cfg = eval
        self.seed = int(seed)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.run_config = run_config or {}
        self.progress = progress
        self.log_prefix = f'[{log_prefix}] ' if log_prefix else ''

        if train.num_threads is not None:
            torch.set_num_threads(train.num_threads)
        if train.keep_freed_memory and keep_freed_memory():
            logger.info('%sallocator: freed memory is kept for reuse (train.keep_freed_memory)',
                        self.log_prefix)
        self.device = resolve_device(train.device)
        if self.device.type == 'cuda' and dist.active:
            self.device = torch.device('cuda', dist.local_rank)
        self.model = model.to(self.device)
        shard = Shard(dist.rank, dist.world)
        self.sampler = TripletSampler(
            data[USER_ITEM].edge_index, int(data['item'].num_nodes), train.batch_size,
            with_negatives=model.needs_negatives)
        self.batches: Union[FullBatches, SampledBatches]
        if train.mode == 'sampled':
            refusal = model.sampled_refusal
            if refusal:
                raise ConfigError(f'train.mode=sampled: {type(model).__name__} cannot train on '
                                  f'sampled subgraphs ({refusal}); use train.mode=full')
            hops = model.sampled_hops
            if hops is not None and len(train.fanout) != hops:
                key = getattr(model.config, 'ui_layers_key', 'n_ui_layers')
                raise ConfigError(f'train.fanout has {len(train.fanout)} hop(s) but '
                                  f'{type(model).__name__} propagates {hops} user-item layer(s) '
                                  f'(model.{key}={hops}): give one fan-out per layer')
            self.batches = SampledBatches(copy.copy(data).cpu(), self.sampler, train.fanout,
                                          self.seed, shard, self.device, model.sampled_views,
                                          model.sampled_features, train.knn_fanout)
        self.data = data.to(self.device)
        if train.mode == 'full':
            self.batches = FullBatches(self.data, self.sampler, shard)
        ignored = (f' (train.knn_fanout={train.knn_fanout} ignored: it applies to '
                   'train.mode=sampled only)' if train.mode == 'full' and train.knn_fanout != -1
                   else '')
        logger.info('%sbatches: %s%s', self.log_prefix, self.batches.description, ignored)
        # every process's loss divides its L2 term by its share of B (see train.distributed)
        self.loss_batch_size = train.batch_size // dist.world
        self.sparse_tables = self.model.node_tables() if train.sparse_updates else {}
        # sampled mode, dense updates: the node tables' gradients (the subgraph's rows) are
        # written into kept buffers, not into a fresh table of zeros per step (same values)
        self.row_buffers = [(table, GradBuffer()) for table in self.model.node_tables().values()
                            if train.mode == 'sampled' and not train.sparse_updates]
        if self.sparse_tables and dist.active and self.device.type == 'cuda':
            raise ConfigError(sparse_nccl_refusal(dist.world))
        self.step: torch.nn.Module = LossStep(self.model)
        if dist.active:
            logger.info('%s%s', self.log_prefix, train.data_parallel)
            self.step = dist.data_parallel(self.step, self.device,
                                           [f'model.{name}' for name in self.sparse_tables])
        self.evaluator = Evaluator(data, eval.ks, eval.batch_size, progress=progress)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.optimizer = RunOptimizer(self.model, train.lr, train.lr_decay,
                                      train.lr_decay_every, self.device, self.sparse_tables)
        if self.sparse_tables:
            logger.info('%soptimizer: RowAdam (lazy Adam) over the subgraph rows of %s, '
                        'Adam over the other parameters', self.log_prefix,
                        ', '.join(self.sparse_tables))

        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_valid: Dict[str, float] = {}
        self.best_weights: Optional[Dict[str, torch.Tensor]] = None
        self.bad_evals = 0
        self.stopped_early = False
        self.history: List[Dict[str, float]] = []

    # Checkpoints #############################################################################

    def _rng_state(self) -> Dict[str, Any]:
        state = {'generator': self.generator.get_state(), 'torch': torch.get_rng_state()}
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state['generator'])
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])

    def _save_checkpoint(self, result: Optional[TrainResult] = None) -> None:
        r"""Writes the resumable state, or, with :obj:`result`, the finished run (best weights
        and results only)."""
        if self.checkpoint_path is None or not self.dist.is_main:
            return
        finished = result is not None
        state = {
            'config': self.run_config,
            'seed': self.seed,
            'epoch': self.epoch,
            'finished': finished,
            'history': self.history,
            'best': {
                'epoch': self.best_epoch,
                'score': self.best_score,
                'valid': self.best_valid,
                'bad_evals': self.bad_evals,
                'stopped_early': self.stopped_early,
            },
            'model': self.model.state_dict(),
        }
        if finished:
            state['result'] = {k: v for k, v in asdict(result).items() if k != 'history'}
        else:
            state['best_model'] = self.best_weights
            state.update(self.optimizer.state_dict())
            state['rng'] = self._rng_state()
        save_checkpoint(self.checkpoint_path, state)

    def _restore(self, state: Dict[str, Any]) -> Optional[TrainResult]:
        r"""Restores a checkpoint; returns the result if the run had already finished."""
        try:
            stored = resolved_identity(state['config'])
        except ConfigError as e:
            raise CheckpointError(f'{self.checkpoint_path}: its configuration is not valid in '
                                  f'this version ({e}); use another --out') from None
        diff = first_difference(stored, resolved_identity(self.run_config))
        if diff is not None:
            raise CheckpointError(f'{self.checkpoint_path}: written for another configuration '
                                  f'({diff}); resume with the same config or use another --out')
        best = state['best']
        self.epoch = state['epoch']
        self.history = list(state['history'])
        self.best_epoch, self.best_score = best['epoch'], best['score']
        self.best_valid, self.bad_evals = dict(best['valid']), best['bad_evals']
        self.stopped_early = best['stopped_early']
        self.model.load_state_dict(state['model'])
        if state['finished']:
            return TrainResult(history=self.history, **state['result'])
        self.best_weights = state['best_model']
        self.optimizer.load_state_dict(state)
        self._set_rng_state(state['rng'])
        return None

    def _keep_best_weights(self) -> None:
        r"""Keeps the current weights as the best so far: in the file beside the checkpoint
        when the run has one (like MMRec's saved model; no second copy of the weights in
        memory, which for AnchorRec's trainable feature tables is most of them), in memory
        otherwise; only process 0 keeps them."""
        if not self.dist.is_main:
            return
        if self.checkpoint_path is None:
            self.best_weights = copy.deepcopy(self.model.state_dict())
        else:
            save_weights(best_weights_path(self.checkpoint_path), self.model.state_dict(),
                         self.best_epoch)
            self.best_weights = None

    def _best_weights(self) -> Dict[str, torch.Tensor]:
        if self.best_weights is not None:
            return self.best_weights
        return load_weights(best_weights_path(self.checkpoint_path), self.best_epoch)

    def _remove_best_weights(self) -> None:
        if self.checkpoint_path is not None:
            remove_file(best_weights_path(self.checkpoint_path))

    # Training ################################################################################

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        from tqdm.auto import tqdm
        model, data = self.model, self.data
        model.on_epoch_start(data, epoch, self.generator)
        model.train()
        sums: Dict[str, torch.Tensor] = {}
        num_batches = len(self.batches)
        batches = tqdm(self.batches.epoch(self.generator, epoch), total=num_batches,
                       desc=f'{self.log_prefix}epoch {epoch}', leave=False,
                       disable=not self.progress)
        for batch, (graph, users, pos, neg) in enumerate(batches, start=1):
            users, pos = users.to(self.device), pos.to(self.device)
            neg = None if neg is None else neg.to(self.device)
            self.optimizer.zero_grad()
            with row_sparse_gradients(self.sparse_tables.values()), \
                    row_gradient_buffers(self.row_buffers):
                total, terms = self.step(graph, users, pos, neg, self.loss_batch_size)
            if not bool(torch.isfinite(total)):
                value = float(total.detach())
                bad = [f'{k}={float(v)}' for k, v in terms.items()
                       if not math.isfinite(float(v))]
                culprit = ', '.join(bad) if bad else f'total={value}'
                raise NonFiniteLossError(
                    f'non-finite loss at epoch {epoch}, batch {batch}/{num_batches}: {culprit} '
                    f'(total={value}); lower train.lr or check the input features')
            total.backward()
            self.dist.average_sparse_gradients(self.sparse_tables.values())
            self.optimizer.step()
            for key, value in {'loss': total.detach(), **terms}.items():
                sums[key] = sums.get(key, 0.0) + value.detach()
        keys = list(sums)
        means = self.dist.mean(torch.stack([torch.as_tensor(sums[k]) for k in keys]))
        return {key: float(value) / num_batches for key, value in zip(keys, means)}

    def _log_epoch(self, record: Dict[str, float], improved: bool) -> None:
        terms = ' '.join(f'{k} {v:.4f}' for k, v in record.items()
                         if k not in ('epoch', 'lr', 'loss', 'train_time_s', 'eval_time_s')
                         and not k.startswith('valid_'))
        line = (f"{self.log_prefix}epoch {int(record['epoch'])}/{self.train_cfg.epochs} | "
                f"loss {record['loss']:.4f} ({terms}) | lr {record['lr']:.3g} | "
                f"{record['train_time_s']:.1f}s")
        metric = self.eval_cfg.metric
        if f'valid_{metric}' in record:
            k = metric.partition('@')[2]
            line += (f" + eval {record['eval_time_s']:.1f}s | valid {metric} "
                     f"{record[f'valid_{metric}']:.4f} ndcg@{k} {record[f'valid_ndcg@{k}']:.4f}")
            line += ' *' if improved else ''
        logger.info(line)

    def fit(self, resume: bool = False) -> TrainResult:
        r"""Trains until ``train.epochs`` or early stopping, then evaluates the best epoch's
        weights on test (the model holds them afterwards; the optimizer's state is released).

        Args:
            resume (bool, optional): Continue from :obj:`checkpoint_path` if it exists (a
                finished run returns its stored result). (default: :obj:`False`)

        Raises:
            NonFiniteLossError: If a loss term becomes NaN or infinite.
            CheckpointError: If the checkpoint is unreadable, unsafe or from another config.
        """
        state = None
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists() and \
                self.dist.is_main:
            state = load_checkpoint(self.checkpoint_path)
        state = self.dist.broadcast(state)
        if state is not None:
            done = self._restore(state)
            if done is not None:
                logger.info('%srun already finished (best epoch %d)', self.log_prefix,
                            done.best_epoch)
                self._remove_best_weights()  # left behind if the run was killed just then
                return done
            logger.info('%sresuming after epoch %d', self.log_prefix, self.epoch)

        cfg = self.train_cfg
        while self.epoch < cfg.epochs and not self.stopped_early:
            epoch = self.epoch + 1
            lr = self.optimizer.lr
            start = time.perf_counter()
            record: Dict[str, float] = {'epoch': epoch, 'lr': lr, **self._train_epoch(epoch)}
            self.optimizer.end_epoch()
            record['train_time_s'] = time.perf_counter() - start

            improved = False
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                start = time.perf_counter()
                valid = (self.evaluator.evaluate(self.model, self.data, 'valid')
                         if self.dist.is_main else None)
                valid = self.dist.broadcast(valid)
                record['eval_time_s'] = time.perf_counter() - start
                record.update({f'valid_{k}': v for k, v in valid.items()})
                score = valid[self.eval_cfg.metric]
                if math.isnan(score):
                    raise NonFiniteLossError(f'validation {self.eval_cfg.metric} is NaN after '
                                             f'epoch {epoch}: the embeddings hold NaN values')
                improved = score > self.best_score
                if improved:
                    self.best_score, self.best_epoch, self.best_valid = score, epoch, valid
                    self._keep_best_weights()
                    self.bad_evals = 0
                else:
                    self.bad_evals += 1
                    self.stopped_early = (cfg.patience is not None
                                          and self.bad_evals >= cfg.patience)
            self.epoch = epoch
            self.history.append(record)
            self._log_epoch(record, improved)
            if epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs and \
                    not self.stopped_early:
                self._save_checkpoint()

        if self.stopped_early:
            logger.info('%sstopped early after epoch %d: no better validation %s in %d '
                        'evaluations', self.log_prefix, self.epoch, self.eval_cfg.metric,
                        self.bad_evals)
        # the finished run needs no optimizer state: free Adam's moments (two copies of the
        # parameters) before the best weights are read back
        self.optimizer.clear()
        test = None
        if self.dist.is_main:
            self.model.load_state_dict(self._best_weights())
            test = self.evaluator.evaluate(self.model, self.data, 'test')
        test = self.dist.broadcast(test)
        result = TrainResult(best_epoch=self.best_epoch, epochs_run=self.epoch,
                             valid=self.best_valid, test=test, stopped_early=self.stopped_early,
                             history=self.history)
        self._save_checkpoint(result)
        self._remove_best_weights()
        logger.info('%sbest epoch %d: valid %s %.4f, test %s %.4f', self.log_prefix,
                    self.best_epoch, self.eval_cfg.metric, self.best_valid[self.eval_cfg.metric],
                    self.eval_cfg.metric, test[self.eval_cfg.metric])
        return result
