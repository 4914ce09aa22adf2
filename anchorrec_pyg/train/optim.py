r"""The optimiser of a run (SPEC §4: Adam, no weight decay, the learning rate decayed as
:math:`\mathrm{lr} \cdot \mathrm{lr\_decay}^{\,e / \mathrm{lr\_decay\_every}}` after every
epoch by :class:`torch.optim.lr_scheduler.LambdaLR`).

* **Dense** (``train.mode: full``, or ``train.sparse_updates: false``): one
  :class:`torch.optim.Adam` over every parameter (fused on CPU and CUDA), the published
  optimiser. Every step reads and writes every row of every table, its gradient and both
  moments, whichever rows the batch touched.
* **Row-sparse** (``train.sparse_updates``, ``train.mode: sampled`` only): the
  model's node tables (:meth:`~anchorrec_pyg.models.base.RecModel.node_tables`: ID tables and
  trainable feature copies) get sparse gradients holding the subgraph's rows only
  (:func:`~anchorrec_pyg.models.base.row_sparse_gradients`) and are updated by
  :class:`torch.optim.SparseAdam`; the other parameters by Adam as above. SparseAdam is *lazy*
  Adam: a row's moments and its parameters change only at the steps whose subgraph holds the
  row, so the moments of absent rows are not decayed, while the bias correction counts every
  step of the table. At the first step both give the same update to the rows present (up to
  where :math:`\epsilon` enters: Adam divides by :math:`\sqrt{\hat v} + \epsilon`, SparseAdam
  by :math:`(\sqrt{v} + \epsilon)/\sqrt{1-\beta_2^t}`) and neither moves the other rows;
  later, Adam keeps moving a row absent from the batch by its decaying first moment, SparseAdam
  does not. SPEC has no weight decay (the L2 term is in the loss, on the batch's rows), so
  nothing else differs. A step's optimiser work is proportional to the subgraph, not the
  catalogue, but per row it is far dearer: on CPU, SparseAdam (coalescing the gradient, then
  about twenty unfused passes with fresh temporaries) costs 20-35x fused Adam per updated
  row, so the row-sparse update is the faster one only when a step touches a few percent of
  the tables' rows (docs/scale.md).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from anchorrec_pyg.errors import AnchorRecError

__all__ = ['RunOptimizer', 'FUSED_ADAM_DEVICES']

#: Devices on which Adam runs as one fused kernel over all parameters (the same update as the
#: per-tensor loop, in one pass over the parameters instead of about ten).
FUSED_ADAM_DEVICES = ('cpu', 'cuda')


class RunOptimizer:
    r"""Adam over the dense parameters and, with :obj:`sparse_tables`, SparseAdam over those
    tables, on one learning-rate schedule.

    Args:
        model (torch.nn.Module): The model.
        lr (float): The initial learning rate (``train.lr``).
        lr_decay (float): ``train.lr_decay``.
        lr_decay_every (float): ``train.lr_decay_every``.
        device (torch.device): Where the parameters are (fused Adam on CPU and CUDA).
        sparse_tables (dict, optional): Parameter name -> table updated row-sparse; their
            gradients must be sparse (empty: dense Adam over every parameter).
    """

    def __init__(self, model: torch.nn.Module, lr: float, lr_decay: float,
                 lr_decay_every: float, device: torch.device,
                 sparse_tables: Optional[Dict[str, torch.nn.Parameter]] = None) -> None:
        self.sparse_tables = dict(sparse_tables or {})
        sparse_ids = {id(p) for p in self.sparse_tables.values()}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids]
        self.dense: Optional[torch.optim.Adam] = None
        self.sparse: Optional[torch.optim.SparseAdam] = None
        if dense or not self.sparse_tables:
            self.dense = torch.optim.Adam(dense, lr=lr,
                                          fused=device.type in FUSED_ADAM_DEVICES)
        if self.sparse_tables:
            self.sparse = torch.optim.SparseAdam(list(self.sparse_tables.values()), lr=lr)
        self.optimizers: List[torch.optim.Optimizer] = [
            o for o in (self.dense, self.sparse) if o is not None]
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(
                o, lambda epoch: lr_decay**(epoch / lr_decay_every))
            for o in self.optimizers
        ]

    @property
    def lr(self) -> float:
        r"""The current learning rate."""
        return self.optimizers[0].param_groups[0]['lr']

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        r"""One update; refuses a dense gradient on a row-sparse table in one line."""
        for name, table in self.sparse_tables.items():
            if table.grad is not None and not table.grad.is_sparse:
                raise AnchorRecError(
                    f'train.sparse_updates: the table {name} got a dense gradient (the model '
                    'reads it other than through node_rows on the subgraph); set '
                    'train.sparse_updates=false')
        for optimizer in self.optimizers:
            optimizer.step()

    def end_epoch(self) -> None:
        r"""Decays the learning rate (after every epoch)."""
        for scheduler in self.schedulers:
            scheduler.step()

    def clear(self) -> None:
        r"""Frees the moments (a finished run needs none)."""
        for optimizer in self.optimizers:
            optimizer.state.clear()

    def state_dict(self) -> Dict[str, Any]:
        r"""The checkpoint entries: ``optimizer`` (Adam's), ``sparse_optimizer``
        (SparseAdam's) when present, and ``scheduler`` (one schedule, shared)."""
        state: Dict[str, Any] = {'scheduler': self.schedulers[0].state_dict()}
        if self.dense is not None:
            state['optimizer'] = self.dense.state_dict()
        if self.sparse is not None:
            state['sparse_optimizer'] = self.sparse.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.dense is not None:
            self.dense.load_state_dict(state['optimizer'])
        if self.sparse is not None:
            self.sparse.load_state_dict(state['sparse_optimizer'])
        for scheduler in self.schedulers:
            scheduler.load_state_dict(state['scheduler'])
