"""Contract 1 on sampled subgraphs, for every registered model: it trains a step on a sampled
HeteroData (its per-node tables get gradient only on the subgraph's rows), or train.mode=sampled
is refused with the model's one-line reason; with row-sparse updates its node tables get sparse
gradients on the subgraph's rows."""
import pytest
import torch

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.models import row_sparse_gradients
from anchorrec_pyg.models.registry import MODELS
from anchorrec_pyg.train import Trainer
from anchorrec_pyg.train.batches import SampledBatches
from anchorrec_pyg.train.optim import RunOptimizer
from anchorrec_pyg.train.sampler import TripletSampler


@pytest.mark.parametrize('name', sorted(MODELS))
def test_model_trains_on_a_sampled_subgraph_or_refuses(tiny_data, name):
    cls = MODELS[name]
    torch.manual_seed(0)
    model = cls(tiny_data, cls.Config())
    refusal = cls.sampled_refusal
    if refusal:
        assert '\n' not in refusal
        with pytest.raises(ConfigError, match='train.mode=sampled') as info:
            Trainer(model, tiny_data, TrainConfig(mode='sampled', device='cpu'),
                    EvalConfig(ks=[20]), seed=0)
        assert refusal in str(info.value)
        return

    num = {'user': int(tiny_data['user'].num_nodes), 'item': int(tiny_data['item'].num_nodes)}
    triplets = TripletSampler(tiny_data['user', 'interacts', 'item'].edge_index, num['item'],
                              batch_size=4,
                              with_negatives=model.needs_negatives)
    batches = SampledBatches(tiny_data, triplets, [2, 1], seed=0, views=model.sampled_views,
                             features=model.sampled_features)
    sub, users, pos, neg = next(batches.epoch(torch.Generator().manual_seed(0), 1))
    assert sub['item'].num_nodes < num['item'] or sub['user'].num_nodes < num['user']
    model.on_epoch_start(tiny_data, 1, torch.Generator().manual_seed(0))
    model.train()
    out = model(sub)
    assert out.user.size(0) == sub['user'].num_nodes
    assert out.item.size(0) == sub['item'].num_nodes
    total, terms = model.loss(sub, out, users, pos, neg, batch_size=4)
    assert bool(torch.isfinite(total))
    total.backward()

    tables = 0
    for param_name, param in model.named_parameters():
        if param.grad is None or param.dim() < 2:
            continue
        for node_type in ('user', 'item'):
            if param.size(0) != num[node_type]:
                continue
            tables += 1
            touched = (param.grad != 0).any(dim=1).nonzero().view(-1)
            outside = set(touched.tolist()) - set(sub[node_type].n_id.tolist())
            assert not outside, f'{param_name}: gradient on rows outside the subgraph'
    assert tables >= 1  # at least the ID tables were checked

    # the optimizer step the trainer takes with dense updates
    torch.optim.Adam(model.parameters(), lr=0.01).step()

    # with row-sparse updates (the sampled default): the node tables' gradients are sparse,
    # on the subgraph's rows, and the step updates nothing else of them
    model.zero_grad(set_to_none=True)
    node_tables = model.node_tables()
    assert {'user_embedding.weight', 'item_embedding.weight'} <= set(node_tables)
    with row_sparse_gradients(node_tables.values()):
        total, _ = model.loss(sub, model(sub), users, pos, neg, batch_size=4)
    total.backward()
    before = {name: table.detach().clone() for name, table in node_tables.items()}
    for name, table in node_tables.items():
        if table.grad is not None:
            assert table.grad.is_sparse, name
            node_type = 'user' if table.size(0) == num['user'] else 'item'
            assert set(table.grad.coalesce().indices()[0].tolist()) <= \
                set(sub[node_type].n_id.tolist()), name
    RunOptimizer(model, 0.01, 1.0, 50.0, torch.device('cpu'), node_tables).step()
    for name, table in node_tables.items():
        changed = (table != before[name]).any(dim=1).nonzero().view(-1)
        node_type = 'user' if table.size(0) == num['user'] else 'item'
        assert set(changed.tolist()) <= set(sub[node_type].n_id.tolist()), name
