"""The training-step speed-ups give the numbers of the plain step: fused Adam equals PyTorch's
per-tensor loop, the sorted AMP gathers equal the batch-order formula of SPEC §4."""
import copy

import torch

from anchorrec_pyg.config import EvalConfig, TrainConfig
from anchorrec_pyg.losses import AMPLoss, cosine_similarity_matrix
from anchorrec_pyg.models import AnchorRec
from anchorrec_pyg.train.trainer import Trainer


def batch(data, size=24, seed=5):
    gen = torch.Generator().manual_seed(seed)
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    pos = torch.randint(num_items, (size, ), generator=gen)
    pos[:4] = pos[4]  # duplicates are kept by AMP (SPEC §4)
    return (torch.randint(num_users, (size, ), generator=gen), pos,
            torch.randint(num_items, (size, ), generator=gen))


def test_fused_adam_steps_equal_the_per_tensor_loop(tiny_data):
    torch.manual_seed(0)
    model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8, aal_weight=0.1,
                                                  amp_weight=0.1))
    initial = copy.deepcopy(model.state_dict())
    models = {'loop': model, 'fused': copy.deepcopy(model)}
    optimizers = {
        'loop': torch.optim.Adam(models['loop'].parameters(), lr=0.01, foreach=False),
        'fused': torch.optim.Adam(models['fused'].parameters(), lr=0.01, fused=True),
    }
    for step in range(4):
        users, pos, neg = batch(tiny_data, seed=step)
        for key, m in models.items():
            optimizers[key].zero_grad(set_to_none=True)
            total, _ = m.loss(tiny_data, m(tiny_data), users, pos, neg, batch_size=32)
            total.backward()
            optimizers[key].step()
    loop, fused = models['loop'].state_dict(), models['fused'].state_dict()
    for key in loop:
        torch.testing.assert_close(fused[key], loop[key], rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(loop[key], initial[key]) for key in loop)  # every tensor moved


def test_trainer_uses_fused_adam_on_cpu(tiny_data):
    model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8))
    trainer = Trainer(model, tiny_data, TrainConfig(epochs=1, device='cpu'), EvalConfig(),
                      seed=0)
    assert trainer.optimizer.dense.defaults['fused'] is True


def test_amp_term_equals_the_batch_order_formula(tiny_data):
    """The model sorts the positives before gathering; SPEC's sim on the batch order is the
    same number (a common permutation of E's rows and S's rows and columns)."""
    torch.manual_seed(0)
    for cache_mb in (256.0, 0.0):  # gathered from the cached I x I matrix, or blockwise
        model = AnchorRec(tiny_data, AnchorRec.Config(embedding_dim=8, amp_weight=0.5,
                                                      similarity_cache_mb=cache_mb)).double()
        users, pos, neg = batch(tiny_data)
        out = model(tiny_data)
        _, terms = model.loss(tiny_data, out, users, pos, neg)
        weights = {'mm': 1.0, 'text': 0.03, 'image': 0.01}
        embeddings = {m: out.views[f'H_{m}'][pos] for m in weights}
        targets = {m: cosine_similarity_matrix(tiny_data['item'][f'x_{m}'].double()[pos])
                   for m in weights}
        expected = 0.5 * AMPLoss(weights)(embeddings, targets)
        torch.testing.assert_close(terms['amp'], expected.detach())
