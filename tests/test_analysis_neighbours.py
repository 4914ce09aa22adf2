"""Neighbour quality (SPEC §6): 2-hop paths against B^T B, neighbours against brute force."""
import numpy as np
import pytest
import torch

from anchorrec_pyg.analysis.neighbours import (
    choose_targets,
    compare_neighbours,
    interaction_matrix,
    nearest_neighbours,
    random_neighbours,
    two_hop,
)
from anchorrec_pyg.errors import ConfigError

# users 0..3, items 0..4
EDGES = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 3],
                      [0, 1, 2, 0, 1, 1, 3, 4]])


def test_two_hop_paths_equal_btb_and_its_cosine_form():
    b = torch.zeros(4, 5, dtype=torch.float64)
    b[EDGES[0], EDGES[1]] = 1
    btb = b.T @ b
    matrix = interaction_matrix(EDGES, 4, 5)
    targets = torch.tensor([0, 1, 4])
    neighbours = torch.tensor([[1, 2], [0, 3], [0, 1]])
    result = two_hop(matrix, targets, neighbours)
    expected = btb[targets.unsqueeze(1), neighbours].numpy()
    np.testing.assert_allclose(result['paths'], expected)
    assert result['paths'].tolist() == [[2, 1], [2, 1], [0, 0]]
    degree = b.sum(0)
    norm = expected / np.sqrt(degree[targets].unsqueeze(1).numpy() * degree[neighbours].numpy())
    np.testing.assert_allclose(result['paths_norm'], norm)
    # cosine of the interaction columns
    assert result['paths_norm'][0, 0] == pytest.approx(
        torch.nn.functional.cosine_similarity(b[:, 0], b[:, 1], dim=0).item())


def test_nearest_and_random_neighbours_exclude_the_target():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 5, 29])
    found = nearest_neighbours(x, targets, 3)
    unit = torch.nn.functional.normalize(x, dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float('inf'))
    assert found.tolist() == sim[targets].topk(3, dim=1).indices.tolist()
    rand = random_neighbours(30, targets, 3, seed=1)
    pairs = zip(targets.tolist(), rand.tolist())
    assert all(t not in row and len(set(row)) == 3 for t, row in pairs)
    assert rand.tolist() == random_neighbours(30, targets, 3, seed=1).tolist()


def test_compare_neighbours_rows_and_raw_similarity():
    # space a places item 1 next to item 0; both runs use the same targets
    a = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [-1, 0], [0, -1]])
    raw = {'text': torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1], [1, 1]])}
    result = compare_neighbours({'a': a, 'b': -a}, EDGES, 4, raw, torch.tensor([0]), n=1)
    assert result['neighbours']['a'] == [[1]] and result['neighbours']['b'] == [[1]]
    rows = {r['run']: r for r in result['rows']}
    assert set(rows) == {'a', 'b', 'random'}
    assert rows['a']['paths_mean'] == 2.0 and rows['a']['sim_text_mean'] == pytest.approx(1.0)
    assert rows['a']['paths_std'] == 0.0
    assert result['measures'] == ['paths', 'paths_norm', 'sim_text']


def test_choose_targets():
    assert choose_targets(10, items=[3, 1]).tolist() == [3, 1]
    sample = choose_targets(10, 4, seed=0)
    assert len(set(sample.tolist())) == 4 and sample.tolist() == choose_targets(10, 4).tolist()
    assert choose_targets(5, 100).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match='--items: item id 10'):
        choose_targets(10, items=[10])
