"""Collapse measures (SPEC §6): mean pairwise cosine, effective rank, paired cosine, 2-D plot."""
import math

import pytest
import torch

from anchorrec_pyg.analysis.collapse import (
    collapse_numbers,
    effective_rank,
    embed_2d,
    embed_panels,
    mean_pairwise_cosine,
    paired_cosine,
    plot_groups,
)
from anchorrec_pyg.analysis.spaces import Space


def test_collapsed_space_has_mean_cosine_one_and_effective_rank_one():
    row = torch.tensor([0.3, -1.2, 2.0, 0.5])
    collapsed = row.repeat(50, 1)
    assert mean_pairwise_cosine(collapsed) == pytest.approx(1.0, abs=1e-12)
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=1e-9)
    # multiples of one direction are collapsed too (cosine ignores the length)
    scaled = collapsed * torch.linspace(0.5, 3, 50).unsqueeze(1)
    assert mean_pairwise_cosine(scaled) == pytest.approx(1.0, abs=1e-12)
    assert effective_rank(scaled) == pytest.approx(1.0, abs=1e-9)


def test_orthonormal_space_has_full_effective_rank_and_zero_mean_cosine():
    eye = torch.eye(8)
    assert effective_rank(eye) == pytest.approx(8.0)
    assert mean_pairwise_cosine(eye) == pytest.approx(0.0, abs=1e-12)
    # antipodal pairs: mean cosine -1/(n-1)
    pair = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(pair) == pytest.approx(-1.0)


def test_effective_rank_matches_the_definition_on_random_tables():
    for shape in ((30, 7), (5, 12)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        sigma = torch.linalg.svdvals(x)
        p = sigma / sigma.sum()
        expected = math.exp(-(p * p.log()).sum().item())
        assert effective_rank(x) == pytest.approx(expected, rel=1e-9)
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def test_mean_pairwise_cosine_matches_brute_force_and_skips_zero_rows():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    unit = torch.nn.functional.normalize(x, dim=1)
    sim = unit @ unit.T
    expected = (sim.sum() - sim.diagonal().sum()) / (20 * 19)
    with_zero = torch.cat([x, torch.zeros(3, 5, dtype=torch.float64)])
    assert mean_pairwise_cosine(with_zero) == pytest.approx(expected.item(), rel=1e-12)
    assert math.isnan(mean_pairwise_cosine(torch.zeros(3, 2)))


def test_paired_cosine_and_numbers_table():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    assert paired_cosine(x, 2 * x) == pytest.approx(1.0)
    assert paired_cosine(x, -x) == pytest.approx(-1.0)
    spaces = {'raw_text': Space('raw_text', 'raw', torch.randn(10, 3)),
              'H_mm': Space('H_mm', 'original', x), 'H_text': Space('H_text', 'original', x),
              'h_mm': Space('h_mm', 'projection', -x)}
    numbers = collapse_numbers(spaces)
    assert [r['name'] for r in numbers['spaces']] == list(spaces)
    # only same-group, same-dimension pairs
    assert numbers['paired_cosine'] == [{'a': 'H_mm', 'b': 'H_text',
                                         'paired_cosine': pytest.approx(1.0)}]


def test_plot_panels_and_pca_embedding():
    g = torch.Generator().manual_seed(3)
    spaces = {n: Space(n, grp, torch.randn(30, 6, generator=g)) for n, grp in [
        ('raw_mm', 'raw'), ('C', 'original'), ('H_mm', 'original'), ('H_text', 'original'),
        ('H_image', 'original'), ('h_mm', 'projection'), ('h_id', 'projection'),
        ('h_text', 'projection')]}
    assert plot_groups(spaces) == [['H_mm', 'H_text', 'H_image'], ['h_mm', 'h_text']]
    assert plot_groups(spaces, ['C', 'h_id']) == [['C', 'h_id']]
    result = embed_panels(spaces, [['H_mm', 'H_text']], num_items=12, method='pca', seed=0)
    assert len(result['items']) == 12 and len(set(result['items'])) == 12
    points = result['panels'][0]['points']
    assert len(points) == 24 and {p[0] for p in points} == {'H_mm', 'H_text'}
    # PCA coordinates: centred projections on the two leading directions
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    coords = torch.from_numpy(embed_2d(x, 'pca'))
    centred = x - x.mean(0)
    assert coords.pow(2).sum() == pytest.approx(
        torch.linalg.svdvals(centred)[:2].pow(2).sum().item())
    assert coords[:, 0].var() >= coords[:, 1].var()
