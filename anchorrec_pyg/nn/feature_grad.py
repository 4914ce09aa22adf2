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
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['BufferedGradLinear', 'GradBuffer', 'buffered_linear']


class GradBuffer:
    """The kept gradient buffer of one feature table (allocated on first use, reallocated when
    the table's shape, dtype or device changes)."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None

    def like(self, x: Tensor) -> Tensor:
        """A tensor with ``x``'s shape, dtype and device (its contents are overwritten)."""
        t = self.tensor
        if t is None or t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
            self.tensor = t = torch.empty_like(x, memory_format=torch.contiguous_format)
        return t


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
            held = x.grad is not None and (x.grad.untyped_storage().data_ptr() ==
                                           buffer.untyped_storage().data_ptr())
            if torch.is_grad_enabled() or held:
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
