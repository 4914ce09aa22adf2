r"""Data-parallel training on :mod:`torch.distributed` (``train.nproc``, ``anchorrec-pyg train
--nproc N``).

``anchorrec-pyg train --nproc N`` starts N worker processes on this machine with torchrun's
launcher (:func:`torch.distributed.launcher.api.elastic_launch`, the engine of
``python -m torch.distributed.run``: a c10d rendezvous on 127.0.0.1, no restarts); each worker
runs ``anchorrec-pyg train`` with the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ...),
joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank) and trains:

* every process draws the same global batch of ``train.batch_size`` rows (the same generator)
  and keeps its contiguous share of ``batch_size / nproc`` rows
  (:class:`~anchorrec_pyg.train.batches.Shard`); its loss uses ``batch_size / nproc`` as the
  L2 divisor ``B``, so that the averaged gradient of a loss that is a mean (BPR) or a sum over
  ``B`` (L2) over rows is the one-process gradient of the global batch. The learning rate is
  therefore the one-process rate (no scaling rule). Terms that couple a batch's rows (AAL's
  in-batch InfoNCE, AMP's pairwise similarities) are computed on each process's share, as in
  any data-parallel contrastive training without gathering;
* gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel` around the
  model's forward *and* loss (:class:`LossStep`), with ``static_graph`` (the parameters a
  configuration uses do not change between steps; a term switched off leaves its parameters
  without gradient). AnchorRec's feature tables take their gradient through a custom
  autograd function writing into a kept buffer (:mod:`anchorrec_pyg.nn.feature_grad`): DDP
  reduces it like any gradient. With row-sparse updates (``train.sparse_updates``) the node
  tables' sparse gradients are left out of DDP (which expects sparse gradients only from
  ``nn.Embedding(sparse=True)`` modules) and averaged by a sparse all-reduce of their own
  (:meth:`DistContext.average_sparse_gradients`; gloo has one, NCCL does not, so that
  combination is refused). When the last batch of an epoch does not split evenly, the
  average of the processes' means weights its rows slightly unequally (the one difference
  from one process on the same global batches);
* process 0 alone evaluates (full graph), keeps the best weights, writes checkpoints and the
  run folder; the others receive the validation metrics (so early stopping agrees) and the
  test metrics. On start (and ``--resume``) process 0's state is sent to all;
* the process group has a timeout (``train.dist_timeout_s``) and torchrun's agent stops every
  process as soon as one exits: a dead or failing process ends the job with one line and a
  non-zero status instead of a hang.

For several machines, run torchrun yourself on each (the README has the line); the workers
find the rendezvous in the environment.
"""
from __future__ import annotations

import datetime
import logging
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from anchorrec_pyg.errors import AnchorRecError, ConfigError

__all__ = ['DistContext', 'LossStep', 'in_worker', 'worker_context', 'launch', 'free_port',
           'DistributedError', 'sparse_nccl_refusal']

logger = logging.getLogger(__name__)


class DistributedError(AnchorRecError):
    r"""A process of a multi-process run failed or lost contact with the others."""


@dataclass(frozen=True)
class DistContext:
    r"""This process's place in a multi-process run (``world == 1``: a single process)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def broadcast(self, obj: Any) -> Any:
        r"""Process 0's :obj:`obj` on every process (itself without a process group)."""
        if not self.active:
            return obj
        holder = [obj if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def mean(self, values: Tensor) -> Tensor:
        r"""The mean of :obj:`values` over the processes."""
        if not self.active:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world

    def data_parallel(self, module: torch.nn.Module, device: torch.device,
                      ignore: Sequence[str] = ()) -> torch.nn.Module:
        r""":obj:`module` in :class:`~torch.nn.parallel.DistributedDataParallel` (static graph),
        its parameters named in :obj:`ignore` left out (sent from process 0 here instead, and
        averaged by :meth:`average_sparse_gradients`); :obj:`module` itself when no other
        parameter needs gradient."""
        from torch.nn.parallel import DistributedDataParallel
        params = dict(module.named_parameters())
        for name in ignore:
            dist.broadcast(params[name].data, src=0)
        if not any(p.requires_grad for n, p in params.items() if n not in ignore):
            return module
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
        return DistributedDataParallel(
            module, device_ids=[device.index] if device.type == 'cuda' else None,
            static_graph=True)

    def average_sparse_gradients(self, tables: Iterable[Tensor]) -> None:
        r"""Replaces each table's sparse gradient by its mean over the processes (a sparse
        all-reduce: the union of the processes' rows); nothing with one process."""
        if not self.active:
            return
        for table in tables:
            grad = table.grad
            if grad is None:  # all-reduced all the same, so that the processes stay in step
                grad = torch.sparse_coo_tensor(
                    torch.empty(1, 0, dtype=torch.long, device=table.device),
                    table.new_empty((0, ) + table.shape[1:]), table.shape)
            grad = grad.coalesce()
            dist.all_reduce(grad)
            table.grad = grad / self.world


def sparse_nccl_refusal(nproc: int) -> str:
    r"""The one-line refusal of row-sparse updates with several CUDA processes."""
    return (f'train.sparse_updates: row-sparse updates with --nproc {nproc} on CUDA need a sparse '
            'all-reduce, which NCCL does not provide; set train.sparse_updates=false or train '
            'on CPU (gloo)')


class LossStep(torch.nn.Module):
    r"""The model's forward pass and loss as one module, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` sees the parameters the loss uses."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, graph: Any, users: Tensor, pos: Tensor, neg: Optional[Tensor],
                batch_size: int) -> Any:
        out = self.model(graph)
        return self.model.loss(graph, out, users, pos, neg, batch_size=batch_size)


def in_worker() -> bool:
    r"""Whether this process was started by torchrun as one of several."""
    return int(os.environ.get('WORLD_SIZE', '1')) > 1 and 'RANK' in os.environ


def worker_context(nproc: int, device_name: str, timeout_s: float) -> DistContext:
    r"""Joins the process group of a torchrun worker (gloo, or NCCL when training on CUDA)."""
    world = int(os.environ['WORLD_SIZE'])
    if world != nproc:
        raise ConfigError(f'train.nproc is {nproc} but {world} processes were started; set '
                          f'train.nproc to the total number of processes')
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    cuda = device_name.startswith('cuda') or (device_name == 'auto' and
                                              torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo',
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world=world, local_rank=local_rank)


def free_port(port: int = 0) -> int:
    r"""A TCP port free on 127.0.0.1: :obj:`port` if it is free (one-line
    :class:`ConfigError` otherwise), any free one for 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(('127.0.0.1', port))
        except OSError:
            raise ConfigError(f'--master-port {port} is already in use on 127.0.0.1; choose '
                              'another or omit --master-port for a free one') from None
        return s.getsockname()[1]


def launch(nproc: int, worker_argv: Sequence[str], port: int = 0) -> None:
    r"""Runs ``anchorrec-pyg <worker_argv>`` in :obj:`nproc` processes with torchrun's launcher
    on a loopback rendezvous; raises :class:`DistributedError` (one line) if any fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    port = free_port(port)
    for name in ('torch.distributed.elastic', 'torch.distributed.launcher'):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if 'OMP_NUM_THREADS' not in os.environ:
        os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=f'anchorrec-pyg-{os.getpid()}', rdzv_backend='c10d',
                          rdzv_endpoint=f'127.0.0.1:{port}', max_restarts=0,
                          monitor_interval=0.2, start_method='spawn')
    try:
        elastic_launch(config, sys.executable)('-m', 'anchorrec_pyg.cli', *worker_argv)
    except ChildFailedError as e:
        failures: List[Any] = sorted(e.failures.values(), key=lambda f: f.timestamp)
        first = failures[0]
        code = first.exitcode
        if code is not None and code < 0:
            try:
                how = f'was killed by {signal.Signals(-code).name}'
            except ValueError:
                how = f'was killed by signal {-code}'
        else:
            how = f'exited with status {code}'
        raise DistributedError(f'process {first.local_rank} of {nproc} {how}; the others were '
                               'stopped (continue with --resume --out DIR)') from None
    except (RuntimeError, pickle.PicklingError) as e:
        raise DistributedError(f'the {nproc} processes could not start: '
                               f"{' '.join(str(e).split())[:300]}") from None
