"""The kNN closure's fan-out (train.knn_fanout): at every closure level each item keeps
min(s, k_i) of its k_i incoming kNN edges, drawn from the batch source's seeded generator, with
weights times k_i / s_i, so that A_m X_m at the batch's items is an unbiased estimate of the
whole graph's (averaged over seeded draws against the whole graph, with a tolerance that the
plain weights fail); the smoothness divides by the factors; -1 keeps today's exact closure
(tests/test_subgraph.py, tests/test_sampled_exact.py); bad values are one line from the CLI."""
import logging

import pytest
import torch

from anchorrec_pyg.cli import main
from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import AnchorRec, SampledView
from anchorrec_pyg.schema import USER_ITEM, knn_edge_type
from anchorrec_pyg.train import Trainer
from anchorrec_pyg.train.batches import SampledBatches
from anchorrec_pyg.train.sampler import TripletSampler

B = 6
VIEWS = {'mm': SampledView(2), 'text': SampledView(1, users=False),
         'image': SampledView(2, users=False, negatives=False)}


def _batches(data, knn_fanout, views=VIEWS, seed=0):
    triplets = TripletSampler(data[USER_ITEM].edge_index, int(data['item'].num_nodes),
                              batch_size=B)
    return SampledBatches(data, triplets, [-1, -1], seed=seed, views=views,
                          knn_fanout=knn_fanout)


def _subgraph(batches, epoch=1):
    """The first batch of an epoch: the triples are the same for every epoch (the run's
    generator is seeded alike), the kNN draws come from the epoch's sampler seed."""
    return next(batches.epoch(torch.Generator().manual_seed(0), epoch))


def _in_degree(data, modality):
    edge_index = data[knn_edge_type(modality)].edge_index
    return torch.bincount(edge_index[1], minlength=int(data['item'].num_nodes))


def _levels(sub, modality):
    """The destinations (global ids) of each closure level and the edges' positions."""
    store = sub[knn_edge_type(modality)]
    start, levels = 0, []
    for count in store.num_sampled_edges:
        span = torch.arange(start, start + int(count))
        levels.append((sub['item'].n_id[store.edge_index[1, span]], span))
        start += int(count)
    return levels


@pytest.mark.parametrize('s', [1, 2])
def test_each_level_item_keeps_min_s_k_edges_with_rescaled_weights(sparse_knn_data, s):
    data = sparse_knn_data
    exact, _, _, _ = _subgraph(_batches(data, -1))
    sub, _, _, _ = _subgraph(_batches(data, s))
    for m, needs in VIEWS.items():
        edge_type = knn_edge_type(m)
        store, degree = sub[edge_type], _in_degree(data, m)
        levels = _levels(sub, m)
        assert len(levels) == needs.hops
        # level 0 is the exact closure's level 0 (the batch's items), whatever the fan-out
        exact_level0 = _levels(exact, m)[0][0]
        assert set(levels[0][0].tolist()) == set(exact_level0.tolist())
        src = sub['item'].n_id[store.edge_index[0]]
        dst = sub['item'].n_id[store.edge_index[1]]
        assert torch.equal(data[edge_type].edge_index[:, store.e_id], torch.stack([src, dst]))
        closed, previous = set(), set()
        for depth, (targets, span) in enumerate(levels):
            items, drawn = torch.unique(targets, return_counts=True)
            assert torch.equal(drawn, degree[items].clamp(max=s))
            assert not closed & set(items.tolist())  # every item draws once
            if depth > 0:  # the next level: the previous level's drawn sources, not yet closed
                assert set(items.tolist()) == previous - closed
            closed |= set(items.tolist())
            previous = set(src[span].tolist())
        factor = degree[dst].float() / degree[dst].clamp(max=s).float()
        assert bool((factor > 1).any())
        torch.testing.assert_close(store.edge_scale, factor)
        torch.testing.assert_close(store.edge_weight,
                                   data[edge_type].edge_weight[store.e_id] * factor)


def test_a_fanout_of_k_is_the_exact_closure(sparse_knn_data):
    """k = 3 in the fixture: a fan-out of 3 draws nothing and every factor is 1."""
    exact, *exact_rows = _subgraph(_batches(sparse_knn_data, -1))
    full, *rows = _subgraph(_batches(sparse_knn_data, 3))
    for a, b in zip(exact_rows, rows):
        assert torch.equal(a, b)
    assert torch.equal(exact['item'].n_id, full['item'].n_id)
    for m in VIEWS:
        a, b = exact[knn_edge_type(m)], full[knn_edge_type(m)]
        assert 'edge_scale' not in a
        assert torch.equal(a.e_id, b.e_id) and torch.equal(a.edge_weight, b.edge_weight)


def test_same_seed_same_subgraph_other_seed_another(sparse_knn_data):
    def edges(sub):
        return [sub[knn_edge_type(m)].e_id for m in VIEWS] + [sub['item'].n_id]

    a = edges(_subgraph(_batches(sparse_knn_data, 1, seed=4))[0])
    b = edges(_subgraph(_batches(sparse_knn_data, 1, seed=4))[0])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    others = [edges(_subgraph(_batches(sparse_knn_data, 1, seed=4), epoch=e)[0])
              for e in (2, 3)]
    assert any(not torch.equal(x, y) for other in others for x, y in zip(a, other))


def _model(data, **config):
    torch.manual_seed(0)
    return AnchorRec(data, AnchorRec.Config(n_layers=1, **config)).eval()


def _level0(sub, modality):
    """The batch's items of a view (the first closure level's destinations), local ids in the
    order of their global ids, and the global ids."""
    store = sub[knn_edge_type(modality)]
    local = torch.unique(store.edge_index[1, :int(store.num_sampled_edges[0])])
    glob = sub['item'].n_id[local]
    order = torch.argsort(glob)
    return local[order], glob[order]


def test_anchorrec_views_are_unbiased_over_draws(sparse_knn_data):
    """The mean over seeded draws of H_m = A_m X_m at the batch's items (level 0) approaches the
    whole graph's; with the plain weights (without k_i / s_i) it is about s / k = 1/3 of it."""
    data = sparse_knn_data
    model = _model(data)
    views = model.sampled_views
    draws = 300
    batches = _batches(data, 1, views=views)
    total = {m: 0.0 for m in views}
    plain = {m: 0.0 for m in views}
    items = {}
    with torch.no_grad():
        full = model(data).views
        for epoch in range(draws):
            sub, _, _, _ = _subgraph(batches, epoch)
            out = model(sub).views
            for m in views:
                store = sub[knn_edge_type(m)]
                store.edge_weight = store.edge_weight / store.edge_scale
            unscaled = model(sub).views
            for m in views:
                local, items[m] = _level0(sub, m)
                total[m] = total[m] + out[f'H_{m}'][local]
                plain[m] = plain[m] + unscaled[f'H_{m}'][local]
    for m in views:
        reference = full[f'H_{m}'][items[m]]
        error = ((total[m] / draws - reference).norm() / reference.norm()).item()
        plain_error = ((plain[m] / draws - reference).norm() / reference.norm()).item()
        assert error < 0.15, (m, error)  # Monte Carlo: 0.06-0.08 at 300 draws, 0.02-0.03 at 3000
        assert plain_error > 0.5, (m, plain_error)


def test_smoothness_is_the_ratio_estimator_of_the_exact_items_mean(sparse_knn_data):
    """With the whole graph's H_mm, the mean of the sampled smoothness over draws approaches the
    exact closure's (the same edges between the batch's items, all of them); dividing by the
    edge count instead of the factors would inflate it about k / s = 3 times."""
    data = sparse_knn_data
    model = _model(data)
    with torch.no_grad():
        h = model(data).views['H_mm']
        exact, _, _, _ = _subgraph(_batches(data, -1, views=model.sampled_views))
        reference = float(model.smoothness_term(exact, h[exact['item'].n_id]))
        batches = _batches(data, 1, views=model.sampled_views)
        values, counted = [], []
        for epoch in range(300):
            sub, _, _, _ = _subgraph(batches, epoch)
            values.append(float(model.smoothness_term(sub, h[sub['item'].n_id])))
            scale = sub[knn_edge_type('mm')].edge_scale
            counted.append(values[-1] * float(scale.max()))
    assert reference > 0
    assert sum(values) / len(values) == pytest.approx(reference, rel=0.08)
    assert sum(counted) / len(counted) > 2 * reference


@pytest.mark.parametrize('value', [0, -2, 1.5, [3], True, 'x'])
def test_bad_values_are_refused(value):
    with pytest.raises(ConfigError, match=r'^train\.knn_fanout must be'):
        TrainConfig(mode='sampled', knn_fanout=value)


@pytest.mark.parametrize('value', ['0', '-2', '1.5', '[3]'])
def test_cli_bad_knn_fanout_is_one_line(capsys, tmp_path, value):
    out = tmp_path / 'run'
    assert main(['train', '--set', 'data.name=tiny', '--set', 'train.mode=sampled', '--set',
                 f'train.knn_fanout={value}', '--device', 'cpu', '--quiet',
                 '--out', str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('anchorrec-pyg: error: train.knn_fanout must')
    assert not out.exists()


@pytest.mark.parametrize('mode, n_layers, expected', [
    ('sampled', 1, 'kNN fan-out 2 (incoming kNN edges per item and level, weights x k_i/s_i):'),
    ('sampled', 2, 'weights x k_i/s_i) [more than one kNN step: each item draws once, so the '
                   'views keep a self-loop bias, docs/scale.md]:'),
    ('full', 2, 'full graph per batch (train.knn_fanout=2 ignored: it applies to '
                'train.mode=sampled only)'),
])
def test_the_batches_log_line_names_the_knn_fanout(tiny_data, caplog, mode, n_layers,
                                                   expected):
    torch.manual_seed(0)
    model = AnchorRec(tiny_data, AnchorRec.Config(n_layers=n_layers))
    with caplog.at_level(logging.INFO, logger='anchorrec_pyg.train.trainer'):
        Trainer(model, tiny_data, TrainConfig(mode=mode, fanout=[5, 2], knn_fanout=2,
                                              device='cpu'), EvalConfig(ks=[20]), seed=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('batches: ')]
    assert len(lines) == 1 and expected in lines[0]


def test_two_levels_keep_the_self_loop_bias_docs_scale_md_states(sparse_knn_data):
    """n = 2: an item's draw serves both steps of the path through its own self-loop, so the
    mean of A_sub^2 X at the batch's items is A^2 X plus, per item i (k_i edges, s drawn,
    self-loop weight w_ii, c = k_i / s), w_ii [(c - 1) w_ii x_i + (k_i (s - 1) / (s (k_i - 1))
    - 1) sum_{l != i} w_il x_l] (docs/scale.md); every other path is unbiased."""
    data, s, draws = sparse_knn_data, 2, 600
    n = int(data['item'].num_nodes)
    batches = _batches(data, s, views={'text': SampledView(2)})
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    store = data[knn_edge_type('text')]
    adj = torch.sparse_coo_tensor(store.edge_index.flip(0), store.edge_weight.double(), (n, n))
    k = _in_degree(data, 'text').double()
    loop = store.edge_index[0] == store.edge_index[1]
    w_ii = torch.zeros(n, dtype=torch.float64)
    w_ii[store.edge_index[1, loop]] = store.edge_weight[loop].double()
    ax = adj @ x
    a2x = adj @ ax
    drawn = k.clamp(max=s)
    bias = w_ii[:, None] * ((k / drawn - 1)[:, None] * w_ii[:, None] * x +
                            (k * (drawn - 1) / (drawn * (k - 1)) - 1)[:, None]
                            * (ax - w_ii[:, None] * x))
    total = 0.0
    for epoch in range(draws):
        sub, _, _, _ = _subgraph(batches, epoch)
        edges, m = sub[knn_edge_type('text')], int(sub['item'].num_nodes)
        sub_adj = torch.sparse_coo_tensor(edges.edge_index.flip(0), edges.edge_weight.double(),
                                          (m, m))
        local, items = _level0(sub, 'text')
        total = total + (sub_adj @ (sub_adj @ x[sub['item'].n_id]))[local]
    mean, reference = total / draws, a2x[items]
    # measured: the bias 0.21 of |A^2 X|, the mean 0.21 off A^2 X and 0.035 off A^2 X + bias
    assert float(bias[items].norm() / reference.norm()) > 0.15
    assert float((mean - reference).norm() / reference.norm()) > 0.15
    assert float((mean - reference - bias[items]).norm() / reference.norm()) < 0.08
