"""Sampled subgraphs (train.mode: sampled): contents against a brute-force k-hop on the tiny
graph, fan-out limits, determinism by seed, the kNN closure, the rescaled weights, and training
on subgraphs against the full-graph trainer."""
import pytest
import torch
from torch_geometric.loader import LinkLoader

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import LightGCN, SampledView
from anchorrec_pyg.train import Trainer
from anchorrec_pyg.train.batches import SampledBatches, Shard
from anchorrec_pyg.train.sampler import TripletSampler
from anchorrec_pyg.train.subgraph import (
    ITEM_USER,
    USER_ITEM,
    KnnClosure,
    RescaledWeights,
    UserItemNeighborSampler,
    knn_edge_types,
    sampling_view,
)
from anchorrec_pyg.schema import knn_edge_type


def _seeds(data, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ui = data[USER_ITEM].edge_index
    pick = torch.randperm(ui.size(1), generator=g)[:n]
    users, pos = ui[0, pick], ui[1, pick]
    neg = torch.randint(int(data['item'].num_nodes), (n, ), generator=g)
    return users, pos, neg


def _subgraph(data, fanout, users, pos, neg, seed=0, views=None):
    view = sampling_view(data)
    sampler = UserItemNeighborSampler(view, fanout, torch.Generator().manual_seed(seed))
    seeds = torch.cat([torch.stack([users, pos]), torch.stack([users, neg])], dim=1)
    label = torch.cat([torch.ones(users.numel()), torch.zeros(users.numel())])
    loader = LinkLoader(view, sampler, edge_label_index=(USER_ITEM, seeds), edge_label=label,
                        transform_sampler_output=KnnClosure(view, views))
    return loader(torch.arange(seeds.size(1)))


def _global_edges(sub, edge_type):
    src_type, _, dst_type = edge_type
    ei = sub[edge_type].edge_index
    src, dst = sub[src_type].n_id[ei[0]], sub[dst_type].n_id[ei[1]]
    return sorted(zip(src.tolist(), dst.tolist()))


def _brute_force(data, fanout_hops, users, items):
    """Breadth-first k-hop with all neighbours: the nodes reached and, per edge type, every
    edge into a node expanded at some hop."""
    ui = data[USER_ITEM].edge_index.tolist()
    pairs = list(zip(ui[0], ui[1]))
    reached = {'user': set(users.tolist()), 'item': set(items.tolist())}
    frontier = {t: set(v) for t, v in reached.items()}
    edges = {USER_ITEM: set(), ITEM_USER: set()}
    for _ in range(fanout_hops):
        new = {'user': set(), 'item': set()}
        for u, i in pairs:
            if i in frontier['item']:
                edges[USER_ITEM].add((u, i))
                new['user'].add(u)
            if u in frontier['user']:
                edges[ITEM_USER].add((i, u))
                new['item'].add(i)
        frontier = {t: new[t] - reached[t] for t in new}
        for t in reached:
            reached[t] |= new[t]
    return reached, edges


@pytest.mark.parametrize('hops', [1, 2, 3])
def test_all_neighbours_equal_brute_force_k_hop(tiny_data, hops):
    users, pos, neg = _seeds(tiny_data)
    sub = _subgraph(tiny_data, [-1] * hops, users, pos, neg)
    reached, edges = _brute_force(tiny_data, hops, users, torch.cat([pos, neg]))
    assert set(sub['user'].n_id.tolist()) == reached['user']
    assert len(sub['user'].n_id) == len(reached['user'])  # no duplicates
    for edge_type in (USER_ITEM, ITEM_USER):
        got = _global_edges(sub, edge_type)
        assert got == sorted(edges[edge_type])
        # edge ids and attributes are the full graph's
        e_id = sub[edge_type].e_id
        assert torch.equal(tiny_data[edge_type].edge_index[:, e_id],
                           torch.stack([sub[edge_type[0]].n_id[sub[edge_type].edge_index[0]],
                                        sub[edge_type[2]].n_id[sub[edge_type].edge_index[1]]]))
        assert torch.equal(sub[edge_type].edge_weight, tiny_data[edge_type].edge_weight[e_id])
    # items: the user-item k-hop items, then their kNN neighbours
    hop_items = sub['item'].n_id[:len(reached['item'])]
    assert set(hop_items.tolist()) == reached['item']


def test_seed_links_in_local_indices(tiny_data):
    users, pos, neg = _seeds(tiny_data)
    sub = _subgraph(tiny_data, [5, 3], users, pos, neg)
    local = sub[USER_ITEM].edge_label_index
    assert torch.equal(sub['user'].n_id[local[0]], torch.cat([users, users]))
    assert torch.equal(sub['item'].n_id[local[1]], torch.cat([pos, neg]))
    assert torch.equal(sub[USER_ITEM].edge_label, torch.tensor([1.0] * 6 + [0.0] * 6))
    # features sliced by n_id (PyG's filter)
    assert torch.equal(sub['item'].x_text, tiny_data['item'].x_text[sub['item'].n_id])


def test_fanout_limits_and_determinism(tiny_data):
    users, pos, neg = _seeds(tiny_data)
    fanout = [2, 1]
    a = _subgraph(tiny_data, fanout, users, pos, neg, seed=3)
    b = _subgraph(tiny_data, fanout, users, pos, neg, seed=3)
    for edge_type in (USER_ITEM, ITEM_USER):
        assert torch.equal(a[edge_type].edge_index, b[edge_type].edge_index)
        assert torch.equal(a[edge_type].e_id, b[edge_type].e_id)
    assert torch.equal(a['item'].n_id, b['item'].n_id)
    seeds_by_hop = {}
    for edge_type in (USER_ITEM, ITEM_USER):
        dst_type = edge_type[2]
        ei = a[edge_type].edge_index
        drawn = torch.bincount(ei[1], minlength=a[dst_type].num_nodes)
        full = torch.bincount(tiny_data[edge_type].edge_index[1],
                              minlength=tiny_data[dst_type].num_nodes)[a[dst_type].n_id]
        seeds = a[dst_type].num_sampled_nodes[0]
        # seeds are expanded with fan-out 2, the next hop's nodes with 1, the last hop's not
        assert torch.equal(drawn[:seeds], full[:seeds].clamp(max=2))
        hop1 = a[dst_type].num_sampled_nodes[1]
        assert torch.equal(drawn[seeds:seeds + hop1], full[seeds:seeds + hop1].clamp(max=1))
        assert int(drawn[seeds + hop1:].sum()) == 0
        # no edge twice
        assert len(set(a[edge_type].e_id.tolist())) == a[edge_type].e_id.numel()
        seeds_by_hop[edge_type] = seeds
    runs = {tuple(_subgraph(tiny_data, fanout, users, pos, neg, seed=s)[USER_ITEM].e_id.tolist())
            for s in range(8)}
    assert len(runs) > 1  # the seed matters


def _brute_force_closure(data, users, pos, neg, needs):
    """The kNN edges (global (source, target) pairs) of one view's closure by levels, from
    python sets over the whole graph: level 0 = the batch's items whose view is read (the
    users' items: all their training items, fan-out -1), then ``hops`` levels of incoming
    edges."""
    edge_type = knn_edge_type(needs[0])
    needs = needs[1]
    ui = data[USER_ITEM].edge_index.tolist()
    level = set()
    if needs.positives:
        level |= set(pos.tolist())
    if needs.negatives:
        level |= set(neg.tolist())
    if needs.users:
        level |= {i for u, i in zip(*ui) if u in set(users.tolist())}
    knn = list(zip(*data[edge_type].edge_index.tolist()))
    closed, levels = set(level), []
    for _ in range(needs.hops):
        edges = sorted((j, i) for j, i in knn if i in level)
        levels.append(edges)
        level = {j for j, _ in edges} - closed
        closed |= level
    return levels


@pytest.mark.parametrize('views', [
    {'mm': SampledView(1), 'text': SampledView(2, users=False),
     'image': SampledView(1, users=False, negatives=False)},
    {'mm': SampledView(3, positives=False, negatives=False)},
])
def test_knn_closure_holds_each_views_levels_and_nothing_else(sparse_knn_data, views):
    data = sparse_knn_data
    users, pos, neg = _seeds(data, n=3)
    sub = _subgraph(data, [-1, 2], users, pos, neg, views=views)
    assert sub['item'].num_nodes < data['item'].num_nodes
    for edge_type in knn_edge_types(data):
        modality = next((m for m in views if knn_edge_type(m) == edge_type), None)
        if modality is None:
            assert sub[edge_type].edge_index.size(1) == 0
            continue
        levels = _brute_force_closure(data, users, pos, neg, (modality, views[modality]))
        assert _global_edges(sub, edge_type) == sorted(e for level in levels for e in level)
        assert list(sub[edge_type].num_sampled_edges) == [len(level) for level in levels]
        assert torch.equal(sub[edge_type].edge_weight,
                           data[edge_type].edge_weight[sub[edge_type].e_id])
        # level 0: the edges into the items whose view the batch reads
        first = sub[edge_type].num_sampled_edges[0]
        level0 = sub[edge_type].edge_index[:, :first]
        glob = sorted(zip(sub['item'].n_id[level0[0]].tolist(),
                          sub['item'].n_id[level0[1]].tolist()))
        assert glob == levels[0]
    # the closures add only their edges' sources to the user-item hops' items
    hop_items = set(sub['item'].n_id[:sum(sub['item'].num_sampled_nodes[:-1])].tolist())
    sources = {int(sub['item'].n_id[j]) for et in knn_edge_types(data)
               for j in sub[et].edge_index[0]}
    assert set(sub['item'].n_id.tolist()) == hop_items | sources
    assert sub['item'].n_id.numel() == len(hop_items | sources)


def test_knn_closure_refuses_a_view_without_its_graph(tiny_data):
    view = sampling_view(tiny_data)
    del view[knn_edge_type('text')]
    with pytest.raises(ValueError, match='similar_text'):
        KnnClosure(view, {'text': SampledView(1)})


def test_rescaled_weights(tiny_data):
    users, pos, neg = _seeds(tiny_data)
    view = sampling_view(tiny_data)
    sub = _subgraph(tiny_data, [2, 1], users, pos, neg)
    original = {et: sub[et].edge_weight.clone() for et in (USER_ITEM, ITEM_USER)}
    RescaledWeights(view)(sub)
    for edge_type in (USER_ITEM, ITEM_USER):
        dst_type = edge_type[2]
        dst = sub[edge_type].edge_index[1]
        full = torch.bincount(tiny_data[edge_type].edge_index[1],
                              minlength=tiny_data[dst_type].num_nodes)[sub[dst_type].n_id]
        drawn = torch.bincount(dst, minlength=sub[dst_type].num_nodes)
        for k in range(dst.numel()):
            d = int(dst[k])
            expected = float(original[edge_type][k]) * int(full[d]) / int(drawn[d])
            assert float(sub[edge_type].edge_weight[k]) == pytest.approx(expected, rel=1e-6)


def test_sampled_batches_shards_and_local_rows(tiny_data):
    ui = tiny_data[USER_ITEM].edge_index
    triplets = TripletSampler(ui, tiny_data['item'].num_nodes, batch_size=32)
    whole = SampledBatches(tiny_data, triplets, [-1, -1], seed=1)
    halves = [SampledBatches(tiny_data, triplets, [-1, -1], seed=1, shard=Shard(r, 2))
              for r in range(2)]
    g = [torch.Generator().manual_seed(5) for _ in range(3)]
    for (sub, u, p, n), *parts in zip(whole.epoch(g[0], 1), halves[0].epoch(g[1], 1),
                                      halves[1].epoch(g[2], 1)):
        glob = [sub['user'].n_id[u], sub['item'].n_id[p], sub['item'].n_id[n]]
        shards = [[part[0]['user'].n_id[part[1]], part[0]['item'].n_id[part[2]],
                   part[0]['item'].n_id[part[3]]] for part in parts]
        for k in range(3):
            assert torch.equal(glob[k], torch.cat([shards[0][k], shards[1][k]]))
        assert bool(triplets.is_training_pair(glob[0], glob[1]).all())
        assert not bool(triplets.is_training_pair(glob[0], glob[2]).any())


def _fit(data, mode, fanout, epochs=2, sparse_updates=False):
    torch.manual_seed(0)
    model = LightGCN(data, LightGCN.Config(n_layers=2))
    train = TrainConfig(epochs=epochs, batch_size=64, device='cpu', mode=mode, fanout=fanout,
                        sparse_updates=sparse_updates)
    return model, Trainer(model, data, train, EvalConfig(ks=[20]), seed=3).fit()


def test_sampled_with_all_neighbours_trains_as_full(tiny_data):
    """With as many hops as layers and every neighbour, the seeds' embeddings on the
    subgraph are the full graph's: with dense Adam, the same losses, metrics and weights as
    train.mode=full (row-sparse updates are lazy Adam, tests/test_sparse_updates.py)."""
    full_model, full = _fit(tiny_data, 'full', [20, 10])
    sampled_model, sampled = _fit(tiny_data, 'sampled', [-1, -1], sparse_updates=False)
    for a, b in zip(full.history, sampled.history):
        assert b['loss'] == pytest.approx(a['loss'], rel=1e-5)
    assert sampled.valid['recall@20'] == pytest.approx(full.valid['recall@20'], abs=1e-6)
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(sampled_model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_sampled_with_small_fanout_trains_differently(tiny_data):
    _, full = _fit(tiny_data, 'full', [20, 10], epochs=1)
    _, sampled = _fit(tiny_data, 'sampled', [1, 1], epochs=1)
    assert sampled.history[0]['loss'] != pytest.approx(full.history[0]['loss'], rel=1e-5)


def test_gradients_only_on_subgraph_rows(tiny_data):
    torch.manual_seed(0)
    model = LightGCN(tiny_data, LightGCN.Config(n_layers=2))
    ui = tiny_data[USER_ITEM].edge_index
    triplets = TripletSampler(ui, tiny_data['item'].num_nodes, batch_size=4)
    batches = SampledBatches(tiny_data, triplets, [1, 1], seed=0)
    sub, users, pos, neg = next(batches.epoch(torch.Generator().manual_seed(0), 1))
    out = model(sub)
    total, _ = model.loss(sub, out, users, pos, neg, batch_size=4)
    total.backward()
    for node_type, table in (('user', model.user_embedding), ('item', model.item_embedding)):
        touched = (table.weight.grad != 0).any(dim=1).nonzero().view(-1)
        assert set(touched.tolist()) <= set(sub[node_type].n_id.tolist())
        assert touched.numel() > 0


@pytest.mark.parametrize('fanout', [[], [0, 10], [20, -2]])
def test_fanout_validation(fanout):
    with pytest.raises(ConfigError, match=r'^train\.fanout must list one fan-out per hop'):
        TrainConfig(mode='sampled', fanout=fanout)


def test_cli_bad_fanout_is_one_line(capsys):
    from anchorrec_pyg.cli import main
    assert main(['train', '--set', 'train.mode=sampled', '--set', 'train.fanout=[10,0]']) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'train.fanout' in lines[0]


@pytest.mark.parametrize('model_name, config, fanout, message', [
    ('anchorrec', {}, [20, 10, 5], r'has 3 hop\(s\) but AnchorRec propagates 2 user-item '
                                   r'layer\(s\) \(model\.n_ui_layers=2\)'),
    ('lightgcn', {'n_layers': 3}, [20, 10], r'has 2 hop\(s\) but LightGCN propagates 3 '
                                            r'user-item layer\(s\) \(model\.n_layers=3\)'),
])
def test_fanout_length_must_match_the_models_layers(tiny_data, model_name, config, fanout,
                                                    message):
    from anchorrec_pyg.models import get_model_class
    cls = get_model_class(model_name)
    model = cls(tiny_data, cls.Config(**config))
    with pytest.raises(ConfigError, match=r'^train\.fanout ' + message):
        Trainer(model, tiny_data, TrainConfig(mode='sampled', fanout=fanout, device='cpu'),
                EvalConfig(ks=[20]), seed=0)


def test_a_model_without_user_item_propagation_takes_any_fanout(tiny_data):
    from anchorrec_pyg.models import VBPR
    model = VBPR(tiny_data)
    assert model.sampled_hops is None
    Trainer(model, tiny_data, TrainConfig(mode='sampled', fanout=[5], device='cpu', epochs=1),
            EvalConfig(ks=[20]), seed=0).fit()


def test_cli_fanout_of_the_wrong_length_is_one_line(capsys, tmp_path):
    from anchorrec_pyg.cli import main
    out = tmp_path / 'run'
    assert main(['train', '--set', 'data.name=tiny', '--set', 'train.mode=sampled',
                 '--set', 'train.fanout=[10]', '--device', 'cpu', '--quiet',
                 '--out', str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ['anchorrec-pyg: error: train.fanout has 1 hop(s) but AnchorRec propagates '
                     '2 user-item layer(s) (model.n_ui_layers=2): give one fan-out per layer']
    assert not out.exists() or not any(out.iterdir())


def test_refusing_model_names_its_reason(tiny_data):
    from anchorrec_pyg.models import FREEDOM
    model = FREEDOM(tiny_data)
    with pytest.raises(ConfigError, match='train.mode=sampled: FREEDOM cannot train on sampled'):
        Trainer(model, tiny_data, TrainConfig(mode='sampled', device='cpu'),
                EvalConfig(ks=[20]), seed=0)
