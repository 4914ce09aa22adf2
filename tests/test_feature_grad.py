"""The feature-table projection with a kept gradient buffer: the values and gradients of
``F.linear``, the buffer reused across steps, exact accumulation, hooks and autograd.grad."""
import torch
import torch.nn.functional as F

from anchorrec_pyg.models.anchorrec import AnchorRec
from anchorrec_pyg.nn.feature_grad import GradBuffer, buffered_linear, buffered_rows


def setup():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(7, 5, dtype=torch.float64, generator=gen)
    linear = torch.nn.Linear(5, 3).double()
    weights = [torch.randn(7, 3, dtype=torch.float64, generator=gen) for _ in range(2)]
    return table, linear, weights


def test_values_and_gradients_equal_linear():
    table, linear, (w, _) = setup()
    x = table.clone().requires_grad_()
    out = buffered_linear(x, linear, GradBuffer())
    torch.testing.assert_close(out, F.linear(table, linear.weight, linear.bias))
    (out * w).sum().backward()
    ref_x = table.clone().requires_grad_()
    ref_params = [p.detach().clone().requires_grad_() for p in (linear.weight, linear.bias)]
    (F.linear(ref_x, *ref_params) * w).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(linear.weight.grad, ref_params[0].grad)
    torch.testing.assert_close(linear.bias.grad, ref_params[1].grad)


def test_buffer_is_reused_between_steps_with_fresh_values():
    table, linear, weights = setup()
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    pointers = []
    for w in weights:
        x.grad = None  # zero_grad(set_to_none=True)
        (buffered_linear(x, linear, buffer) * w).sum().backward()
        torch.testing.assert_close(x.grad, w @ linear.weight.detach())
        pointers.append(x.grad.data_ptr())
    assert pointers[0] == pointers[1] == buffer.tensor.data_ptr()


def test_accumulation_over_two_backward_passes_is_exact():
    table, linear, (w1, w2) = setup()
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    (buffered_linear(x, linear, buffer) * w1).sum().backward()
    (buffered_linear(x, linear, buffer) * w2).sum().backward()  # x.grad holds the buffer
    torch.testing.assert_close(x.grad, (w1 + w2) @ linear.weight.detach())


def test_hooks_autograd_grad_and_double_backward():
    table, linear, (w, _) = setup()
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    seen = []
    x.register_hook(lambda g: seen.append(g.clone()))
    (grad, ) = torch.autograd.grad((buffered_linear(x, linear, buffer) * w).sum(), x)
    expected = w @ linear.weight.detach()
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(seen[0], expected)
    assert x.grad is None  # autograd.grad does not accumulate
    # create_graph: the input gradient stays differentiable in the weight
    (grad, ) = torch.autograd.grad((buffered_linear(x, linear, buffer) * w).sum(), x,
                                   create_graph=True)
    (second, ) = torch.autograd.grad(grad.sum(), linear.weight)
    torch.testing.assert_close(second, w.sum(0)[:, None].expand(3, 5))


def test_non_leaf_or_frozen_inputs_take_the_plain_linear():
    table, linear, _ = setup()
    frozen = buffered_linear(table, linear, GradBuffer())
    assert frozen.grad_fn.name() == 'AddmmBackward0'
    x = table.clone().requires_grad_()
    derived = buffered_linear(x * 2, linear, GradBuffer())
    assert derived.grad_fn.name() == 'AddmmBackward0'


def test_anchorrec_training_step_is_the_same_with_and_without_the_buffer(tiny_data):
    """Two Adam steps with the buffer on and off give the same parameters (to float rounding:
    the weight gradient is computed as (X^T dY)^T instead of dY^T X)."""
    from anchorrec_pyg.train.sampler import TripletSampler
    sampler = TripletSampler(tiny_data['user', 'interacts', 'item'].edge_index,
                             int(tiny_data['item'].num_nodes), 64)
    batches = list(sampler.epoch(torch.Generator().manual_seed(0)))[:2]
    states = []
    for flag in (True, False):
        torch.manual_seed(0)
        model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8, feature_grad_buffer=flag))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
        for users, pos, neg in batches:
            optimizer.zero_grad(set_to_none=True)
            total, _ = model.loss(tiny_data, model(tiny_data), users, pos, neg)
            total.backward()
            optimizer.step()
        states.append(model.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], rtol=1e-5, atol=1e-6, msg=key)


def _row_steps():
    """Row sets of successive steps: each leaves rows of the one before (0 and 5, then 1 and 6)
    that a stale buffer would still hold; the last repeats a row (summed, as index_select's
    backward sums it)."""
    return [torch.tensor([0, 2, 5]), torch.tensor([1, 2, 6]), torch.tensor([3]),
            torch.tensor([4, 0, 4])]


def _fresh_row_gradient(table, index, w):
    x = table.clone().requires_grad_()
    (x.index_select(0, index) * w).sum().backward()
    return x.grad


def test_row_gather_writes_index_selects_gradient_into_the_buffer_without_stale_rows():
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(7, 5, generator=gen)
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    for index in _row_steps():
        w = torch.randn(len(index), 5, generator=gen)
        x.grad = None  # zero_grad(set_to_none=True)
        out = buffered_rows(x, index, buffer)
        assert torch.equal(out, table[index])
        (out * w).sum().backward()
        expected = _fresh_row_gradient(table, index, w)
        assert torch.equal(x.grad, expected)  # every other row exactly zero
        assert x.grad.data_ptr() == buffer.tensor.data_ptr()  # adopted, no copy
        outside = torch.ones(7, dtype=torch.bool)
        outside[index] = False
        assert bool((buffer.tensor[outside] == 0).all())


def test_row_gather_accumulation_second_gather_and_foreign_writes_stay_exact():
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(7, 5, generator=gen)
    a, b = torch.tensor([0, 2, 5]), torch.tensor([1, 2])
    wa, wb = torch.randn(3, 5, generator=gen), torch.randn(2, 5, generator=gen)
    expected = _fresh_row_gradient(table, a, wa) + _fresh_row_gradient(table, b, wb)
    # over two backward passes (x.grad holds the buffer during the second)
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    (buffered_rows(x, a, buffer) * wa).sum().backward()
    (buffered_rows(x, b, buffer) * wb).sum().backward()
    assert torch.equal(x.grad, expected)
    # two gathers of the table in one backward pass
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    ((buffered_rows(x, a, buffer) * wa).sum() + (buffered_rows(x, b, buffer) * wb).sum()
     ).backward()
    assert torch.equal(x.grad, expected)
    # the gradient changed in place (as DistributedDataParallel writes its average), or the
    # buffer written whole by the projection: the next row write starts from zeros
    for foreign in ('in place', 'projection'):
        x, buffer = table.clone().requires_grad_(), GradBuffer()
        (buffered_rows(x, a, buffer) * wa).sum().backward()
        if foreign == 'in place':
            x.grad.copy_(torch.ones(7, 5))
        else:
            x.grad = None
            linear = torch.nn.Linear(5, 3)
            buffered_linear(x, linear, buffer).sum().backward()
            assert x.grad.data_ptr() == buffer.tensor.data_ptr()
        x.grad = None
        (buffered_rows(x, b, buffer) * wb).sum().backward()
        assert torch.equal(x.grad, _fresh_row_gradient(table, b, wb)), foreign


def test_row_gather_under_autograd_grad_and_create_graph():
    gen = torch.Generator().manual_seed(3)
    table, index = torch.randn(7, 5, generator=gen), torch.tensor([6, 1])
    w = torch.randn(2, 5, generator=gen, requires_grad=True)
    x, buffer = table.clone().requires_grad_(), GradBuffer()
    (grad, ) = torch.autograd.grad((buffered_rows(x, index, buffer) * w).sum(), x,
                                   create_graph=True)
    assert torch.equal(grad, _fresh_row_gradient(table, index, w.detach()))
    (second, ) = torch.autograd.grad(grad.sum(), w)
    assert torch.equal(second, torch.ones(2, 5))
    assert x.grad is None
    assert buffered_rows(table, index, buffer).grad_fn is None  # not a leaf needing grad
