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
  :class:`RowAdam`; the other parameters by Adam as above. :class:`RowAdam` is *lazy* Adam,
  :class:`torch.optim.SparseAdam`'s update: a row's moments and its parameters change only at
  the steps whose subgraph holds the row, so the moments of absent rows are not decayed, while
  the bias correction counts every step of the table. At the first step both give the same
  update to the rows present (up to where :math:`\epsilon` enters: Adam divides by
  :math:`\sqrt{\hat v} + \epsilon`, lazy Adam by :math:`(\sqrt{v} + \epsilon)/\sqrt{1-\beta_2^t}`)
  and neither moves the other rows; later, Adam keeps moving a row absent from the batch by
  its decaying first moment, lazy Adam does not. SPEC has no weight decay (the L2 term is in
  the loss, on the batch's rows), so nothing else differs. A step's optimiser work is
  proportional to the subgraph's rows, not the catalogue: :class:`RowAdam` gathers the rows
  of the parameter and both moments in blocks of about 1 MiB, runs PyTorch's fused Adam
  kernel on each block and writes the rows back: on CPU, one thread, a 28,200 x 4,096 table,
  3.7-3.9x fused dense Adam's cost per updated row with 5-100% of the rows in the gradient
  (SparseAdam, which coalesces the gradient and then makes about twenty unfused passes with
  fresh temporaries: 28-37x; ``benchmarks/row_adam.py``, docs/scale.md). So the row-sparse
  update is the cheaper one when a step touches under about a quarter of a table's rows.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from anchorrec_pyg.errors import AnchorRecError

__all__ = ['RunOptimizer', 'RowAdam', 'FUSED_ADAM_DEVICES']

#: Devices on which Adam runs as one fused kernel over all parameters (the same update as the
#: per-tensor loop, in one pass over the parameters instead of about ten).
FUSED_ADAM_DEVICES = ('cpu', 'cuda')

#: The bytes of one tensor's block of rows that :class:`RowAdam` updates at a time on CPU: the
#: parameter's, both moments' and the gradient's rows of a block stay in the cache between
#: the gather, the fused update and the write-back.
ROW_BLOCK_BYTES = 1 << 20


class RowAdam(torch.optim.Optimizer):
    r"""Lazy Adam over the rows that a parameter's sparse gradient holds: the update of
    :class:`torch.optim.SparseAdam`, computed by PyTorch's fused Adam kernel on the gathered
    rows.

    At the :math:`t`-th step of a table (every step at which it has a gradient, whichever its
    rows), for each row :math:`r` of the gradient :math:`g`:

    .. math::
        m_r \leftarrow \beta_1 m_r + (1-\beta_1) g_r, \qquad
        v_r \leftarrow \beta_2 v_r + (1-\beta_2) g_r^2, \qquad
        \theta_r \leftarrow \theta_r - \mathrm{lr}\,
        \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\frac{m_r}{\sqrt{v_r} + \epsilon},

    the other rows unchanged (SparseAdam's placement of :math:`\epsilon`: the fused kernel's
    :math:`\sqrt{v/(1-\beta_2^t)} + \epsilon'` with :math:`\epsilon' = \epsilon /
    \sqrt{1-\beta_2^t}`). The gradient's rows are used as they are when distinct (a subgraph's
    gradient, ``torch.nn.functional.embedding(..., sparse=True)``), coalesced otherwise. On
    CPU the rows go in blocks of :data:`ROW_BLOCK_BYTES` per tensor (gather, fused update,
    write-back, while the block is in the cache); elsewhere all at once. The state (``step``,
    ``exp_avg``, ``exp_avg_sq``) is SparseAdam's, so the two load each other's state dicts.

    Args:
        params: The tables (their gradients must be sparse).
        lr (float): The learning rate.
        betas (tuple): :math:`(\beta_1, \beta_2)`.
        eps (float): :math:`\epsilon`.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {'lr': lr, 'betas': betas, 'eps': eps})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group['betas']
            for param in group['params']:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError('RowAdam needs sparse gradients')
                state = self.state[param]
                if not state:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state['exp_avg_sq'] = torch.zeros_like(param,
                                                           memory_format=torch.preserve_format)
                state['step'] += 1
                rows, values = _distinct_rows(param.grad)
                if rows.numel():
                    _update_rows(param, rows, values, state['exp_avg'], state['exp_avg_sq'],
                                 int(state['step']), float(group['lr']), beta1, beta2,
                                 group['eps'])
        return loss


def _distinct_rows(grad: Tensor) -> Tuple[Tensor, Tensor]:
    """The rows of a sparse gradient and their values (``[n, ...]``, contiguous), each row
    once: as they are when the indices are distinct, else coalesced."""
    if not grad.is_coalesced():
        index = grad._indices()[0]
        if torch.unique(index).numel() != index.numel():
            grad = grad.coalesce()
    return grad._indices()[0], grad._values().contiguous()


def _update_rows(param: Tensor, rows: Tensor, values: Tensor, exp_avg: Tensor,
                 exp_avg_sq: Tensor, step: int, lr: float, beta1: float, beta2: float,
                 eps: float) -> None:
    """:class:`RowAdam`'s update of ``param``'s ``rows`` (distinct) by their gradient rows
    ``values``, at the table's ``step``-th step."""
    n, width = rows.numel(), values[0].numel()
    block = n
    if param.device.type == 'cpu':
        block = max(1, ROW_BLOCK_BYTES // max(1, width * values.element_size()))
    work = param.new_empty((3, min(block, n), width))
    tables = [t.view(t.size(0), width) for t in (param, exp_avg, exp_avg_sq)]
    wide_tables, wide_work = _wide_rows(tables), _wide_rows(list(work))
    step_tensor = torch.tensor(float(step), device=param.device)
    eps_fused = eps / math.sqrt(1 - beta2**step)
    for start in range(0, n, block):
        index = rows[start:start + block]
        k = index.numel()
        for table, rows_block in zip(wide_tables, wide_work):
            torch.index_select(table, 0, index, out=rows_block[:k])
        p, m, v = work[:, :k]
        torch._fused_adam_([p], [values[start:start + k].view(k, width)], [m], [v], [],
                           [step_tensor], lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0,
                           eps=eps_fused, amsgrad=False, maximize=False)
        for table, rows_block in zip(wide_tables, wide_work):
            table.index_put_((index, ), rows_block[:k])


def _wide_rows(tables: List[Tensor]) -> List[Tensor]:
    """The 2-D ``tables`` with each row's bytes read as 16-byte elements (``complex128``) when
    every row's width and address allow it (else as they are): the row gathers and
    write-backs copy element by element (``index_put_`` on CPU), so wider elements move a row
    in fewer steps; the bytes, and so the values, are the same."""
    if all(t.is_contiguous() and (t.size(1) * t.element_size()) % 16 == 0 and
           t.data_ptr() % 16 == 0 for t in tables):
        return [t.view(torch.complex128) for t in tables]
    return tables


class RunOptimizer:
    r"""Adam over the dense parameters and, with :obj:`sparse_tables`, :class:`RowAdam` (lazy
    Adam) over those tables, on one learning-rate schedule.

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
        self.sparse: Optional[RowAdam] = None
        if dense or not self.sparse_tables:
            self.dense = torch.optim.Adam(dense, lr=lr,
                                          fused=device.type in FUSED_ADAM_DEVICES)
        if self.sparse_tables:
            self.sparse = RowAdam(list(self.sparse_tables.values()), lr=lr)
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
        (:class:`RowAdam`'s, the same layout as SparseAdam's) when present, and ``scheduler``
        (one schedule, shared)."""
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
