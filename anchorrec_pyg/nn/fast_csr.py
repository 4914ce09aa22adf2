r"""The ``'fast'`` propagation backend: CSR sparse-dense products with a precomputed backward.

Every product of the models is :math:`\mathbf{Y} = \mathbf{A}\mathbf{X}` with a constant
:math:`\mathbf{A}` (the SPEC §2 weights never train), so its only gradient is

.. math::
    \frac{\partial \mathcal{L}}{\partial \mathbf{X}} = \mathbf{A}^\top
    \frac{\partial \mathcal{L}}{\partial \mathbf{Y}}.

:class:`CSRSpMM` is a :class:`torch.autograd.Function` doing exactly that with two CSR matrices
built once per graph: :math:`\mathbf{A}` (rows = targets) for the forward and
:math:`\mathbf{A}^\top` for the backward. The user-item adjacency is symmetric, so both are the
same tensor; the kNN graphs are not (SPEC §2: not symmetrised), so their transpose is built once
next to them. Nothing is transposed, coalesced or converted per step, unlike the autograd of
``torch.sparse.mm`` (which transposes the CSR matrix in every backward).

:meth:`FastCSRBackend.matmul_many` fuses different operators applied in one step (the three kNN
graphs) into one block-diagonal product :math:`\mathrm{diag}(\mathbf{A}_{mm}, \mathbf{A}_{text},
\mathbf{A}_{image})[\mathbf{X}_{mm}; \mathbf{X}_{text}; \mathbf{X}_{image}]`, whose block matrix
is built once. One operator applied to several inputs (the user views
:math:`\mathbf{R}\mathbf{H}_m`) stays one product per input: with the inputs side by side the
backward pass has to split and re-join the ``U x 3d`` gradient, and ``benchmarks/propagation.py``
measured that no faster than three separate products (forward+backward on Baby's shape: 15 vs
32 ms at one thread, medians of 16 vs 18 ms over repeated runs at two).

The kernels are PyTorch's own (MKL sparse on CPU, cuSPARSE on CUDA): no compiled extension.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor

from anchorrec_pyg.nn.propagation import (
    Adjacency,
    PropagationBackend,
    check_edges,
    register_backend,
)

__all__ = ['CSRSpMM', 'CSROperator', 'FastCSRAdjacency', 'FastCSRBackend', 'csr_from_edges']


def csr_from_edges(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A ``torch.sparse_csr_tensor`` of ``shape`` with ``values`` at ``(rows, cols)``; duplicate
    entries are summed (as in the dense matrix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape).coalesce()
        return coo.to_sparse_csr()


def _same_csr(a: Tensor, b: Tensor) -> bool:
    return (a.shape == b.shape and torch.equal(a.crow_indices(), b.crow_indices())
            and torch.equal(a.col_indices(), b.col_indices())
            and torch.equal(a.values(), b.values()))


def _block_diagonal(blocks: Sequence[Tensor]) -> Tensor:
    """The block-diagonal CSR matrix of CSR ``blocks`` (no densification)."""
    crows, cols, values = [blocks[0].crow_indices()[:1]], [], []
    row_offset = nnz_offset = col_offset = 0
    for block in blocks:
        crows.append(block.crow_indices()[1:] + nnz_offset)
        cols.append(block.col_indices() + col_offset)
        values.append(block.values())
        nnz_offset += block.values().numel()
        row_offset += block.size(0)
        col_offset += block.size(1)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
        return torch.sparse_csr_tensor(torch.cat(crows), torch.cat(cols), torch.cat(values),
                                       (row_offset, col_offset))


class CSROperator:
    """A constant sparse matrix and its transpose, both CSR, kept per dtype.

    Args:
        matrix: ``A`` as a CSR tensor.
        transpose: ``A^T`` as a CSR tensor, or ``None`` when ``A`` is symmetric (``A`` is reused).
    """

    def __init__(self, matrix: Tensor, transpose: Tensor | None) -> None:
        self.symmetric = transpose is None
        self.dtype = matrix.dtype
        self._by_dtype: dict[torch.dtype, tuple[Tensor, Tensor]] = {
            matrix.dtype: (matrix, matrix if transpose is None else transpose)
        }
        self.shape = tuple(matrix.shape)

    @classmethod
    def from_edges(cls, rows: Tensor, cols: Tensor, values: Tensor,
                   shape: tuple[int, int]) -> CSROperator:
        """Builds ``A`` (``A[rows, cols] = values``) and ``A^T``, sharing them if equal."""
        values = values.detach()
        matrix = csr_from_edges(rows, cols, values, shape)
        transpose = csr_from_edges(cols, rows, values, (shape[1], shape[0]))
        return cls(matrix, None if _same_csr(matrix, transpose) else transpose)

    def get(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(A, A^T)`` with values of ``dtype`` (converted once, then kept)."""
        pair = self._by_dtype.get(dtype)
        if pair is None:
            matrix, transpose = self._by_dtype[self.dtype]
            converted = matrix.to(dtype)
            pair = (converted, converted if self.symmetric else transpose.to(dtype))
            self._by_dtype[dtype] = pair
        return pair

    def matmul(self, x: Tensor) -> Tensor:
        """``A @ x`` with gradient ``A^T @ grad`` (:class:`CSRSpMM`)."""
        matrix, transpose = self.get(x.dtype)
        return CSRSpMM.apply(x, matrix, transpose)


class CSRSpMM(torch.autograd.Function):
    r""":math:`\mathbf{Y} = \mathbf{A}\mathbf{X}` for a constant CSR :math:`\mathbf{A}` whose
    transpose is given, so that the backward :math:`\mathbf{A}^\top\,\partial\mathbf{Y}` needs no
    per-step transpose. Only ``x`` receives a gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, matrix: Tensor, transpose: Tensor) -> Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return torch.sparse.mm(ctx.transpose, grad.contiguous()), None, None


class FastCSRAdjacency(Adjacency):
    """An adjacency of the ``'fast'`` backend: a :class:`CSROperator` (rows = targets)."""

    def __init__(self, backend: FastCSRBackend, operator: CSROperator,
                 size: tuple[int, int]) -> None:
        self.backend = backend
        self.operator = operator
        self.size = size

    def matmul(self, x: Tensor) -> Tensor:
        return self.operator.matmul(x)


@register_backend
class FastCSRBackend(PropagationBackend):
    """CSR products with a precomputed transpose for the backward, fusing the products of
    distinct operators into one block-diagonal product; see the module docstring.

    Args:
        max_fused: how many block-diagonal operators are kept (built on first use).
    """

    name = 'fast'

    def __init__(self, max_fused: int = 8) -> None:
        self.max_fused = max_fused
        self._fused: OrderedDict[tuple[int, ...], tuple[tuple[Adjacency, ...], CSROperator]] = (
            OrderedDict())

    def __getstate__(self) -> dict[str, int]:
        return {'max_fused': self.max_fused}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state['max_fused'])

    def adjacency(self, edge_index: Tensor, edge_weight: Tensor,
                  size: tuple[int, int]) -> Adjacency:
        check_edges(edge_index, edge_weight, size)
        num_src, num_dst = int(size[0]), int(size[1])
        operator = CSROperator.from_edges(edge_index[1], edge_index[0], edge_weight,
                                          (num_dst, num_src))
        return FastCSRAdjacency(self, operator, (num_src, num_dst))

    def matmul_many(self, adjs: Sequence[Adjacency], xs: Sequence[Tensor]) -> list[Tensor]:
        """``[a @ x for a, x in zip(adjs, xs)]``, distinct operators as one block-diagonal
        product."""
        if len(adjs) < 2 or any(x.dim() != 2 for x in xs) or len({x.dtype for x in xs}) > 1:
            return super().matmul_many(adjs, xs)
        if len({x.size(1) for x in xs}) == 1 and len({id(a) for a in adjs}) == len(adjs):
            operator = self._block_operator(adjs)
            rows = [adj.size[1] for adj in adjs]
            return list(torch.split(operator.matmul(torch.cat(list(xs), dim=0)), rows, dim=0))
        return super().matmul_many(adjs, xs)

    def _block_operator(self, adjs: Sequence[Adjacency]) -> CSROperator:
        key = tuple(id(adj) for adj in adjs)
        entry = self._fused.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], adjs)):
            self._fused.move_to_end(key)
            return entry[1]
        operators = [adj.operator for adj in adjs]
        pairs = [op.get(operators[0].dtype) for op in operators]
        matrix = _block_diagonal([pair[0] for pair in pairs])
        symmetric = all(op.symmetric for op in operators)
        operator = CSROperator(matrix,
                               None if symmetric else _block_diagonal([p[1] for p in pairs]))
        self._fused[key] = (tuple(adjs), operator)
        while len(self._fused) > self.max_fused:
            self._fused.popitem(last=False)
        return operator
