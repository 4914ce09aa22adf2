"""Neighbourhood overlap (SPEC §6): exact neighbour lists and the overlap on hand-built spaces."""
import pytest
import torch

from anchorrec_pyg.analysis.overlap import neighbour_lists, overlap, overlap_matrix
from anchorrec_pyg.analysis.spaces import Space
from anchorrec_pyg.data.knn import NO_NEIGHBOUR
from anchorrec_pyg.errors import ConfigError


def dense_neighbours(x, k):
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float('inf'))
    return sim.topk(k, dim=1).indices


def test_neighbour_lists_match_dense_topk_without_self():
    x = torch.randn(57, 6, generator=torch.Generator().manual_seed(0))
    lists = neighbour_lists(x, 4)
    expected = dense_neighbours(x, 4)
    assert lists.shape == (57, 4)
    assert (lists != torch.arange(57).unsqueeze(1)).all()
    assert [set(r) for r in lists.tolist()] == [set(r) for r in expected.tolist()]


def test_identical_spaces_overlap_one_and_scaling_does_not_matter():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    spaces = {'a': Space('a', 'raw', x), 'b': Space('b', 'original', 3.0 * x)}
    result = overlap_matrix(spaces, k=5)
    assert result['matrix'] == [[1.0, 1.0], [1.0, 1.0]]
    assert result['chance'] == pytest.approx(5 / 39)
    assert [s['name'] for s in result['spaces']] == ['a', 'b']


def on_circle(degrees):
    angle = torch.tensor(degrees, dtype=torch.float64) * torch.pi / 180
    return torch.stack([angle.cos(), angle.sin()], dim=1)


def test_overlap_known_answer():
    # nearest neighbour by angle: a = 0->1, 1->0, 2->1, 3->2, 4->3;
    # b moves item 4 next to item 3: 0->1, 1->0, 2->1, 3->4, 4->3  => 4 of 5 agree
    a = neighbour_lists(on_circle([0, 10, 30, 60, 100]), 1)
    b = neighbour_lists(on_circle([0, 10, 30, 60, 65]), 1)
    assert a.view(-1).tolist() == [1, 0, 1, 2, 3]
    assert b.view(-1).tolist() == [1, 0, 1, 4, 3]
    assert overlap(a, b) == pytest.approx(4 / 5)
    result = overlap_matrix({'a': Space('a', 'raw', on_circle([0, 10, 30, 60, 100])),
                             'b': Space('b', 'raw', on_circle([0, 10, 30, 60, 65]))}, k=1)
    assert result['matrix'] == [[1.0, pytest.approx(0.8)], [pytest.approx(0.8), 1.0]]


def test_zero_rows_have_no_neighbours_and_count_as_zero():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    x[4] = 0
    lists = neighbour_lists(x, 3)
    assert (lists[4] == NO_NEIGHBOUR).all()
    assert (lists[torch.arange(10) != 4] != 4).all()
    assert overlap(lists, lists) == pytest.approx(9 / 10)


def test_bad_k_and_mismatched_spaces_raise():
    x = torch.randn(6, 2)
    with pytest.raises(ConfigError, match='--k'):
        neighbour_lists(x, 6)
    with pytest.raises(ConfigError, match='different numbers of items'):
        overlap_matrix({'a': Space('a', 'raw', x), 'b': Space('b', 'raw', torch.randn(7, 2))})
