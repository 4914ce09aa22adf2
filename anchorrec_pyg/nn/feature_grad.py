r"""The projection of a trainable feature table with its gradient written into a kept buffer.

AnchorRec trains copies of the raw feature tables (SPEC §3; ``freeze_features`` is the paper's
reading). The first thing the model does with a table :math:`\mathbf{F}` (``I x f``) is the
projection :math:`\mathbf{Y} = \mathbf{F}\mathbf{P}^\top + \mathbf{b}`, so the table's gradient is
the dense ``I x f`` product

.. math::
    \frac{\partial \mathcal{L}}{\partial \mathbf{F}} = \frac{\partial \mathcal{L}}
    {\partial \mathbf{Y}}\,\mathbf{P},

115 MB for the 4096-wide image table of Baby. Autograd allocates it afresh in every backward and
the optimizer's ``zero_grad(set_to_none=True)`` frees it again; on Linux an allocation that large
is a fresh ``mmap`` whose every page faults on first write, which costs several times the product
itself. :class:`BufferedGradLinear` computes the same product into a buffer kept between steps
(``torch.mm(..., out=buffer)``) and hands autograd a view of it; autograd's gradient
accumulation adopts the returned tensor as ``F.grad`` without copying when ``F.grad`` is
``None`` (the optimizer's ``zero_grad(set_to_none=True)``) and adds it in place otherwise, so
hooks, ``torch.autograd.grad`` and ``DistributedDataParallel`` behave as with
``torch.nn.functional.linear``, whose values it computes.

The one difference: the gradient tensor of one backward pass is overwritten by the next
(as an optimizer's in-place update overwrites parameters); clone it to keep it across steps.
When ``F.grad`` itself still holds the buffer (gradients accumulated over several backward
passes) a fresh tensor is used for that pass, so accumulation stays exact. Under
``create_graph=True`` the ordinary differentiable product is used.

**Rows of a table** (a sampled subgraph's rows, ``train.mode: sampled``). When the model gathers
some rows :math:`\mathbf{F}[\mathbf{n}]` of a table (``index_select``), the table's gradient is
:math:`\partial\mathcal{L}/\partial\mathbf{F}[\mathbf{n}]` scattered into an ``I x f`` tensor
of zeros, which autograd again allocates (and the page faults fill) at every step, the size of
the catalogue whatever the subgraph. :class:`BufferedRowGather` (:func:`buffered_rows`) writes it
into the same kind of kept buffer instead, in which only the rows written by its last backward
pass are non-zero: it zeroes those rows (``index_fill_``), then adds the new ones
(``index_add_``, as ``index_select``'s backward does into its zeros), so each step costs the
rows it touches, and the gradient is bit for bit ``index_select``'s. The buffer records its
version counter after each write; if anything else wrote into it since (a full-table product
into the same :class:`GradBuffer`, an in-place change of the gradient such as
``DistributedDataParallel``'s averaged copy) it is zeroed whole before the next write. The same
rules as above hold: the gradient tensor is overwritten by the next backward pass; a fresh tensor
is used when ``F.grad`` holds the buffer, for a second gather of the same table in the same
backward pass, and under ``create_graph=True``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['BufferedGradLinear', 'BufferedRowGather', 'GradBuffer', 'buffered_linear',
           'buffered_rows']


class GradBuffer:
    """The kept gradient buffer of one feature table (allocated on first use, reallocated when
    the table's shape, dtype or device changes), written whole (:class:`BufferedGradLinear`) or
    by rows (:class:`BufferedRowGather`)."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None
        #: The rows of the last row write (:meth:`scatter_rows`), the only non-zero ones while
        #: the buffer's version counter is still :attr:`version`.
        self.rows: Tensor | None = None
        self.version = -1
        #: The autograd graph task of the last row write (one write per backward pass).
        self.task = -1

    def _fits(self, x: Tensor) -> bool:
        """Whether the buffer exists with ``x``'s shape, dtype and device."""
        t = self.tensor
        return t is not None and t.shape == x.shape and t.dtype == x.dtype and t.device == x.device

    def like(self, x: Tensor) -> Tensor:
        """A tensor with ``x``'s shape, dtype and device (its contents are overwritten)."""
        if not self._fits(x):
            self.tensor = torch.empty_like(x, memory_format=torch.contiguous_format)
            self.rows = None
        return self.tensor

    def held_by(self, x: Tensor) -> bool:
        """Whether ``x.grad`` is the buffer (gradients accumulated over backward passes)."""
        return (self.tensor is not None and x.grad is not None and
                x.grad.untyped_storage().data_ptr() == self.tensor.untyped_storage().data_ptr())

    def scatter_rows(self, x: Tensor, index: Tensor, grad: Tensor) -> Tensor:
        """``zeros_like(x).index_add_(0, index, grad)``, computed in the buffer: the rows of the
        previous row write are zeroed (the whole buffer if it was written otherwise since),
        then ``grad`` is added at ``index``; returns a view of the buffer."""
        if not self._fits(x):
            self.tensor = torch.zeros_like(x, memory_format=torch.contiguous_format)
        elif self.rows is None or self.tensor._version != self.version:
            self.tensor.zero_()
        else:
            self.tensor.index_fill_(0, self.rows, 0)
        t = self.tensor
        t.index_add_(0, index, grad)
        self.rows, self.version = index.clone(), t._version
        return t.view_as(t)


class BufferedGradLinear(torch.autograd.Function):
    r""":math:`\mathbf{Y} = \mathbf{X}\mathbf{W}^\top + \mathbf{b}` whose input gradient
    :math:`\partial\mathbf{Y}\,\mathbf{W}` is computed into ``buffer`` (see the module
    docstring); ``weight`` and ``bias`` get ordinary gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,
                buffer: GradBuffer) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.buffer = buffer
        ctx.has_bias = bias is not None
        if bias is None:
            return x @ weight.t()
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            buffer = ctx.buffer.like(x)
            if torch.is_grad_enabled() or ctx.buffer.held_by(x):
                grad_x = grad.mm(weight)
            else:
                grad_x = torch.mm(grad, weight, out=buffer).view_as(buffer)
        # (X^T dY)^T: the long dimension I as the inner one of a column-major product runs
        # about 1.5x faster on CPU BLAS than dY^T X for a 4096-wide table
        grad_weight = x.t().mm(grad).t() if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def buffered_linear(x: Tensor, linear: torch.nn.Linear, buffer: GradBuffer) -> Tensor:
    """``linear(x)``, with ``x``'s gradient computed into ``buffer`` when ``x`` is a leaf that
    requires grad and autograd is recording (the plain ``linear(x)`` otherwise)."""
    if not (x.is_leaf and x.requires_grad and torch.is_grad_enabled()):
        return linear(x)
    return BufferedGradLinear.apply(x, linear.weight, linear.bias, buffer)


class BufferedRowGather(torch.autograd.Function):
    r""":math:`\mathbf{F}[\mathbf{n}]` (``index_select`` along rows) whose gradient, the rows of
    :math:`\partial\mathbf{Y}` added at :math:`\mathbf{n}` into zeros, is written into
    ``buffer`` (:meth:`GradBuffer.scatter_rows`, see the module docstring)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, buffer: GradBuffer) -> Tensor:
        ctx.save_for_backward(table, index)
        ctx.buffer = buffer
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        table, index = ctx.saved_tensors
        buffer = ctx.buffer
        task = torch._C._current_graph_task_id()
        if torch.is_grad_enabled() or buffer.held_by(table) or buffer.task == task:
            # index_select's own backward
            return grad.new_zeros(table.shape).index_add_(0, index, grad), None, None
        buffer.task = task
        return buffer.scatter_rows(table, index, grad), None, None


def buffered_rows(table: Tensor, index: Tensor, buffer: GradBuffer) -> Tensor:
    """``table.index_select(0, index)``, with ``table``'s gradient written into ``buffer`` when
    ``table`` is a leaf that requires grad and autograd is recording (the plain
    ``index_select`` otherwise)."""
    if not (table.is_leaf and table.requires_grad and torch.is_grad_enabled()):
        return table.index_select(0, index)
    return BufferedRowGather.apply(table, index, buffer)
