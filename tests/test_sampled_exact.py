"""Sampled subgraphs are exact for the models with modality kNN views (AnchorRec, AlignRec):
with every neighbour (fan-out -1 at each of the model's user-item hops) the batch rows' final
embeddings, every loss term but the smoothness, and every parameter's gradient on the subgraph
equal the whole graph's, at every ``n_layers`` of the published grid; the smoothness (a
whole-graph term) is its definition on the whole graph's ``H_mm`` over the subgraph's edges
between exact items. A closure one kNN level short, or without the users' items, changes the
batch rows (so these tests fail on a wrong closure). LightGCN's and BM3's exactness:
tests/test_subgraph.py, tests/test_sampled_models.py."""
import dataclasses

import pytest
import torch

from anchorrec_pyg.models import AlignRec, AnchorRec, SampledView
from anchorrec_pyg.models.base import exact_view_items
from anchorrec_pyg.schema import USER_ITEM, knn_edge_type
from anchorrec_pyg.train.batches import SampledBatches
from anchorrec_pyg.train.sampler import TripletSampler

B = 6

CASES = [
    (AnchorRec, {}),
    (AnchorRec, {'n_layers': 2}),
    (AnchorRec, {'n_layers': 3, 'fuse_image_view': True}),
    (AnchorRec, {'n_layers': 2, 'raw_from_files': True, 'aal_weight': 0.5, 'amp_weight': 0.5}),
    (AnchorRec, {'amp_weight': 0.0}),
    (AlignRec, {}),
    (AlignRec, {'n_layers': 2, 'raw_from_files': True}),
]


def _batch(data, model, views=None, seed=0):
    triplets = TripletSampler(data[USER_ITEM].edge_index, int(data['item'].num_nodes),
                              batch_size=B)
    batches = SampledBatches(data, triplets, [-1] * model.sampled_hops, seed=seed,
                             views=model.sampled_views if views is None else views,
                             features=model.sampled_features)
    sub, users, pos, neg = next(batches.epoch(torch.Generator().manual_seed(seed), 1))
    glob = (sub['user'].n_id[users], sub['item'].n_id[pos], sub['item'].n_id[neg])
    return sub, (users, pos, neg), glob


def _step(model, data, rows):
    model.zero_grad(set_to_none=True)
    out = model(data)
    total, terms = model.loss(data, out, *rows, batch_size=B)
    total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, terms, grads


def _model(cls, data, config):
    torch.manual_seed(0)
    return cls(data, cls.Config(**config))


@pytest.mark.parametrize('cls, config', CASES)
def test_subgraph_with_every_neighbour_equals_the_whole_graph(sparse_knn_data, cls, config):
    data = sparse_knn_data
    if cls is AnchorRec:
        config = dict(config, smooth_weight=0.0)  # a whole-graph term: checked below
    model = _model(cls, data, config)
    sub, local, glob = _batch(data, model)
    assert sub['item'].num_nodes < data['item'].num_nodes
    full_out, full_terms, full_grads = _step(model, data, glob)
    sub_out, sub_terms, sub_grads = _step(model, sub, local)
    torch.testing.assert_close(sub_out.user[local[0]], full_out.user[glob[0]])
    torch.testing.assert_close(sub_out.item[local[1]], full_out.item[glob[1]])
    torch.testing.assert_close(sub_out.item[local[2]], full_out.item[glob[2]])
    for key, value in full_terms.items():
        torch.testing.assert_close(sub_terms[key], value, rtol=1e-5, atol=1e-7, msg=key)
    assert any(float(v) != 0 for k, v in full_terms.items() if k not in ('bpr', 'reg'))
    assert set(sub_grads) == set(full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(sub_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_anchorrec_views_only_where_the_losses_read_them(sparse_knn_data):
    """The image view (not fused, published) is closed over from the positives only, and not
    at all without AMP; the item rows outside every closure get no view input."""
    model = _model(AnchorRec, sparse_knn_data, {})
    assert model.sampled_views == {'mm': SampledView(1), 'text': SampledView(1),
                                   'image': SampledView(1, users=False, negatives=False)}
    no_amp = _model(AnchorRec, sparse_knn_data, {'amp_weight': 0.0, 'n_layers': 2})
    assert no_amp.sampled_views == {'mm': SampledView(2), 'text': SampledView(2)}
    sub, local, _ = _batch(sparse_knn_data, model)
    image = sub[knn_edge_type('image')].edge_index
    assert set(image[1].tolist()) == set(local[1].tolist())
    out = model(sub)
    sources = set(image[0].tolist())
    others = [i for i in range(sub['item'].num_nodes) if i not in sources]
    assert others and bool((out.views['H_image'][others] == 0).all())


@pytest.mark.parametrize('n_layers', [1, 2])
def test_anchorrec_smoothness_is_the_whole_graphs_on_the_exact_items(sparse_knn_data,
                                                                     n_layers):
    data = sparse_knn_data
    model = _model(AnchorRec, data, {'n_layers': n_layers})
    sub, _, _ = _batch(data, model)
    full_h = model(data).views['H_mm'].detach()
    sub_value = model.smoothness_term(sub, model(sub).views['H_mm'])
    exact = set(sub['item'].n_id[exact_view_items(sub, 'mm')].tolist())
    edges = data[knn_edge_type('mm')]
    keep = torch.tensor([int(j) in exact and int(i) in exact for j, i in edges.edge_index.t()])
    assert 0 < int(keep.sum()) < keep.numel()
    j, i = edges.edge_index[:, keep]
    reference = (edges.edge_weight[keep] * (full_h[i] - full_h[j]).pow(2).sum(-1)).mean()
    torch.testing.assert_close(sub_value, reference, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('wrong', ['one level short', 'without the users\' items'])
def test_a_wrong_closure_changes_the_batch_rows(sparse_knn_data, wrong):
    data = sparse_knn_data
    model = _model(AnchorRec, data, {'n_layers': 2})
    views = model.sampled_views
    if wrong == 'one level short':
        views = {m: dataclasses.replace(v, hops=1) for m, v in views.items()}
        read = ('user', 'item')
    else:
        views = {m: dataclasses.replace(v, users=False) for m, v in views.items()}
        read = ('user', )
    sub, local, glob = _batch(data, model, views)
    full = model(data)
    out = model(sub)
    if 'user' in read:
        assert not torch.allclose(out.user[local[0]], full.user[glob[0]], rtol=1e-4)
    if 'item' in read:
        assert not torch.allclose(out.item[local[1]], full.item[glob[1]], rtol=1e-4)


@pytest.mark.parametrize('raw_from_files', [False, True])
def test_subgraphs_carry_only_the_file_rows_the_model_reads(sparse_knn_data, raw_from_files):
    model = _model(AnchorRec, sparse_knn_data, {'raw_from_files': raw_from_files})
    sub, _, _ = _batch(sparse_knn_data, model)
    keys = {key for key in sub['item'].keys() if key.startswith('x_')}
    assert keys == ({'x_mm', 'x_text', 'x_image'} if raw_from_files else set())
    if raw_from_files:
        assert torch.equal(sub['item'].x_image,
                           sparse_knn_data['item'].x_image[sub['item'].n_id])
