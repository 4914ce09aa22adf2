"""RowAdam, the lazy row-sparse Adam of train.sparse_updates: torch.optim.SparseAdam's update
(compared over several steps with varying rows), its closed form at steps 1 and 2, untouched
rows never moving, and its state through a weights_only checkpoint."""
import io
import math

import pytest
import torch

from anchorrec_pyg.train import optim
from anchorrec_pyg.train.optim import RowAdam

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-8
ROWS, WIDTH = 40, 6


def _grad(rows, values):
    return torch.sparse_coo_tensor(torch.as_tensor(rows)[None], values, (ROWS, WIDTH))


def _row_sets(seed, steps, dtype=torch.float64):
    """Distinct rows per step in subgraph order (not sorted), never the last 10 rows, one step
    with none, one with a row twice (an uncoalesced gradient whose duplicates sum)."""
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for step in range(steps):
        rows = torch.randperm(ROWS - 10, generator=gen)[:int(torch.randint(1, ROWS - 10, (1, ),
                                                                           generator=gen))]
        if step == 2:
            rows = rows[:0]
        if step == 3:
            rows = torch.cat([rows, rows[:1]])
        sets.append((rows, torch.randn(len(rows), WIDTH, generator=gen, dtype=dtype)))
    return sets


@pytest.fixture(params=[1 << 20, 3 * WIDTH * 8], ids=['one block', 'blocks of 3 rows'])
def block_bytes(request, monkeypatch):
    monkeypatch.setattr(optim, 'ROW_BLOCK_BYTES', request.param)


# float64 rows of 48 bytes go as 16-byte elements, float32 rows of 24 bytes as they are; the two
# optimisers differ only by the order of rounding (fused kernel vs unfused ops)
@pytest.mark.parametrize('dtype, tol', [(torch.float64, {'rtol': 1e-12, 'atol': 1e-15}),
                                        (torch.float32, {'rtol': 1e-5, 'atol': 1e-7})])
def test_row_adam_equals_sparse_adam_over_steps_with_varying_rows(block_bytes, dtype, tol):
    start = torch.randn(ROWS, WIDTH, dtype=dtype, generator=torch.Generator().manual_seed(0))
    ours, theirs = (torch.nn.Parameter(start.clone()) for _ in range(2))
    row_adam, sparse_adam = RowAdam([ours], lr=LR), torch.optim.SparseAdam([theirs], lr=LR)
    touched = torch.zeros(ROWS, dtype=torch.bool)
    for rows, values in _row_sets(1, 8, dtype):
        touched[rows] = True
        for param, optimizer in ((ours, row_adam), (theirs, sparse_adam)):
            param.grad = _grad(rows, values)
            optimizer.step()
        torch.testing.assert_close(ours, theirs, **tol)
        for key in ('exp_avg', 'exp_avg_sq'):
            torch.testing.assert_close(row_adam.state[ours][key], sparse_adam.state[theirs][key],
                                       **tol)
        assert row_adam.state[ours]['step'] == sparse_adam.state[theirs]['step']
    assert not bool(touched.all())  # an untouched row never moves, its moments stay zero
    assert torch.equal(ours[~touched], start[~touched])
    assert not bool(row_adam.state[ours]['exp_avg'][~touched].any())
    assert bool((ours[touched] != start[touched]).any(dim=1).all())


def test_row_adam_closed_form_at_steps_one_and_two(block_bytes):
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(ROWS, WIDTH, dtype=torch.float64, generator=gen)
    g1, g2 = (torch.randn(2, WIDTH, dtype=torch.float64, generator=gen) for _ in range(2))
    param = torch.nn.Parameter(start.clone())
    adam = RowAdam([param], lr=LR)
    param.grad = _grad([5, 9], g1)  # step 1: rows 5 and 9
    adam.step()
    expected = start.clone()
    expected[[5, 9]] -= LR * g1 / (g1.abs() + EPS / math.sqrt(1 - B2))
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-15)
    row9 = param[9].detach().clone()
    param.grad = _grad([5, 17], g2)  # step 2: row 5 again, row 17 first, row 9 absent
    adam.step()
    scale = LR * math.sqrt(1 - B2**2) / (1 - B1**2)
    m5 = B1 * (1 - B1) * g1[0] + (1 - B1) * g2[0]
    v5 = B2 * (1 - B2) * g1[0]**2 + (1 - B2) * g2[0]**2
    expected[5] -= scale * m5 / (v5.sqrt() + EPS)
    # the bias correction counts the table's steps, not the row's
    expected[17] -= scale * (1 - B1) * g2[1] / (math.sqrt(1 - B2) * g2[1].abs() + EPS)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-15)
    assert torch.equal(param[9], row9)  # lazy: absent at step 2, not moved


def test_row_adam_state_round_trips_through_a_weights_only_checkpoint():
    sets = _row_sets(3, 6)
    start = torch.randn(ROWS, WIDTH, generator=torch.Generator().manual_seed(4))

    def run(param, adam, steps):
        for rows, values in steps:
            param.grad = _grad(rows, values.float())
            adam.step()

    whole = torch.nn.Parameter(start.clone())
    run(whole, RowAdam([whole], lr=LR), sets)
    first = torch.nn.Parameter(start.clone())
    adam = RowAdam([first], lr=LR)
    run(first, adam, sets[:3])
    buffer = io.BytesIO()
    torch.save(adam.state_dict(), buffer)
    buffer.seek(0)
    resumed = torch.nn.Parameter(first.detach().clone())
    again = RowAdam([resumed], lr=LR)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    run(resumed, again, sets[3:])
    assert torch.equal(resumed, whole)
    # SparseAdam's state (checkpoints written before RowAdam) continues the same way
    legacy = torch.nn.Parameter(start.clone())
    sparse_adam = torch.optim.SparseAdam([legacy], lr=LR)
    run(legacy, sparse_adam, sets[:3])
    continued = RowAdam([legacy], lr=LR)
    continued.load_state_dict(sparse_adam.state_dict())
    run(legacy, continued, sets[3:])
    torch.testing.assert_close(legacy.detach(), whole.detach(), rtol=1e-5, atol=1e-7)


def test_row_adam_refuses_a_dense_gradient():
    param = torch.nn.Parameter(torch.zeros(ROWS, WIDTH))
    param.grad = torch.ones(ROWS, WIDTH)
    with pytest.raises(RuntimeError, match='RowAdam needs sparse gradients'):
        RowAdam([param]).step()
