"""LGMRec (SPEC §10) against a dense re-implementation on the hand-built graph: forward at
evaluation and in training (Gumbel noise and dropout from the seeded RNG), the loss and its
gradients, the summed NCE, the evaluation-noise switch, determinism, and real training."""
import pytest
import torch
import torch.nn.functional as F
from test_anchorrec import BATCH, NUM_ITEMS, NUM_USERS, UI, dense_r, loss_history, tiny_data
from test_baselines import bpr, dense_a_hat, dense_lightgcn, frob

from anchorrec_pyg.compare import CONFIGS_DIR, published_config_path
from anchorrec_pyg.config import EvalConfig, TrainConfig, load_config
from anchorrec_pyg.data import popularity_recall
from anchorrec_pyg.errors import ConfigError
from anchorrec_pyg.losses import CandidateNCE
from anchorrec_pyg.models import get_model_class
from anchorrec_pyg.models.lgmrec import LGMRec
from anchorrec_pyg.train.trainer import Trainer

MODALITIES = ('image', 'text')


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    data = tiny_data(modalities=MODALITIES)
    return LGMRec(data, LGMRec.Config(embedding_dim=4, **kwargs)).double(), data


def dense_reference(model, data, seed=None):
    """SPEC §10 LGMRec with dense matrices. With ``seed`` (training), the Gumbel noise and the
    dropout masks are drawn with torch's own functions, in the model's order, after seeding."""
    cfg = model.config
    r01 = torch.zeros(NUM_USERS, NUM_ITEMS, dtype=torch.float64)
    r01[UI[0], UI[1]] = 1.0
    rmean = r01 / (r01.sum(1, keepdim=True) + 1e-7)
    a_hat = dense_a_hat(dense_r())
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    c = dense_lightgcn(a_hat, e0, cfg.n_ui_layers)
    if seed is not None:
        torch.manual_seed(seed)
    member = {}
    for m in MODALITIES:
        li = data['item'][f'x_{m}'].double() @ model.hyper_maps[m]
        if seed is None:
            member[m] = [torch.softmax(li / 0.2, 1), torch.softmax(r01 @ li / 0.2, 1)]
        else:
            member[m] = [F.gumbel_softmax(li, tau=0.2), F.gumbel_softmax(r01 @ li, tau=0.2)]
    y = {}
    for m in MODALITIES:
        x = data['item'][f'x_{m}'].double() @ model.feature_maps[m]
        y[m] = torch.linalg.matrix_power(a_hat, cfg.n_mm_layers) @ torch.cat([rmean @ x, x])
    hyper = {}
    for m in MODALITIES:
        hi, hu = member[m]
        if seed is not None:
            hi, hu = F.dropout(hi, 1 - cfg.keep_rate), F.dropout(hu, 1 - cfg.keep_rate)
        ei = c[NUM_USERS:]
        for _ in range(cfg.n_hyper_layers):
            zh = hi.t() @ ei
            ei = hi @ zh
        hyper[m] = (hu @ zh, ei)
    g = sum(torch.cat(hyper[m]) for m in MODALITIES)
    z = c + F.normalize(y['image']) + F.normalize(y['text']) + cfg.alpha * F.normalize(g)
    return z, c, y, g, hyper


def dense_nce(anchors, table, target, tau=0.2):
    """-log of the softmax over ALL rows of ``table``, summed over the anchors."""
    total = 0.0
    for a, t in zip(anchors, target):
        cos = (table @ a) / (table.norm(dim=1) * a.norm())
        total = total - torch.log(torch.exp(cos[t] / tau) / torch.exp(cos / tau).sum())
    return total


def dense_loss(model, z, hyper, users, pos, neg):
    cfg = model.config
    u, p, n = z[:NUM_USERS][users], z[NUM_USERS:][pos], z[NUM_USERS:][neg]
    cl = cfg.cl_weight * (dense_nce(hyper['image'][0][users], hyper['text'][0], users)
                          + dense_nce(hyper['image'][1][pos], hyper['text'][1], pos))
    reg = cfg.reg_weight * (frob(u) + frob(p) + frob(n)) / len(users)
    return bpr(u, p, n), cl, reg


@pytest.mark.parametrize('propagation', ['pyg', 'fast'])
@pytest.mark.parametrize('n_mm_layers,n_hyper_layers', [(2, 1), (1, 2)])
def test_forward_at_evaluation_matches_dense_spec(propagation, n_mm_layers, n_hyper_layers):
    model, data = make_model(propagation=propagation, n_mm_layers=n_mm_layers,
                             n_hyper_layers=n_hyper_layers, hyper_num=3, alpha=0.6)
    model.eval()
    out = model(data)
    z, c, y, g, hyper = dense_reference(model, data)
    torch.testing.assert_close(out.user, z[:NUM_USERS])
    torch.testing.assert_close(out.item, z[NUM_USERS:])
    torch.testing.assert_close(out.views['C'], c)
    torch.testing.assert_close(out.views['Y_image'], y['image'])
    torch.testing.assert_close(out.views['G'], g)
    torch.testing.assert_close(out.views['hyper_user_text'], hyper['text'][0])


def test_training_forward_draws_gumbel_noise_and_dropout_from_the_seeded_rng():
    model, data = make_model(keep_rate=0.6)
    torch.manual_seed(5)
    out = model(data)
    z, _, _, g, _ = dense_reference(model, data, seed=5)
    torch.testing.assert_close(out.views['G'], g)
    torch.testing.assert_close(out.user, z[:NUM_USERS])
    torch.testing.assert_close(out.item, z[NUM_USERS:])
    torch.manual_seed(5)
    assert torch.equal(model(data).item, out.item)  # same seed, same bits
    assert not torch.allclose(model(data).item, out.item)  # fresh noise every forward


def test_loss_matches_dense_spec_values_and_gradients():
    model, data = make_model(cl_weight=0.3, reg_weight=0.2)
    model.eval()
    users, pos, neg = BATCH
    total, terms = model.loss(data, model(data), users, pos, neg, batch_size=2048)
    z, _, _, _, hyper = dense_reference(model, data)
    ref_bpr, ref_cl, ref_reg = dense_loss(model, z, hyper, users, pos, neg)
    torch.testing.assert_close(terms['bpr'], ref_bpr.detach())
    torch.testing.assert_close(terms['cl'], ref_cl.detach())
    torch.testing.assert_close(terms['reg'], ref_reg.detach())
    ref = ref_bpr + ref_cl + ref_reg
    torch.testing.assert_close(total, ref)
    params = [p for p in model.parameters() if p.requires_grad]
    for got, want in zip(torch.autograd.grad(total, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(got, want)


def test_nce_is_summed_over_the_batch_rows_over_all_candidates():
    model, data = make_model(cl_weight=1.0)
    model.eval()
    out = model(data)
    users, pos, neg = BATCH
    _, once = model.loss(data, out, users, pos, neg)
    _, twice = model.loss(data, out, users.repeat(2), pos.repeat(2), neg.repeat(2))
    torch.testing.assert_close(twice['cl'], 2 * once['cl'])  # summed, not averaged
    anchors = torch.randn(3, 4, dtype=torch.float64)
    table = torch.randn(6, 4, dtype=torch.float64)
    target = torch.tensor([5, 0, 5])
    torch.testing.assert_close(CandidateNCE(0.2)(anchors, table, target),
                               dense_nce(anchors, table, target))


def test_evaluation_is_deterministic_unless_gumbel_noise_at_eval():
    model, data = make_model()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(data).item, model(data).item)
    noisy, data = make_model(gumbel_noise_at_eval=True)
    noisy.eval()
    with torch.no_grad():
        assert not torch.allclose(noisy(data).item, noisy(data).item)


def test_features_stay_fixed_and_only_the_maps_train():
    model, data = make_model()
    names = {name for name, _ in model.named_parameters()}
    assert names == {'user_embedding.weight', 'item_embedding.weight', 'feature_maps.image',
                     'feature_maps.text', 'hyper_maps.image', 'hyper_maps.text'}
    assert model.feature_maps['image'].shape == (7, 4)
    assert model.hyper_maps['text'].shape == (5, 4)


def test_same_seed_gives_the_same_loss_history_and_training_lowers_it():
    data = tiny_data(modalities=MODALITIES)

    def build(data):
        return LGMRec(data, LGMRec.Config(embedding_dim=8, cl_weight=0.01))

    first, second = loss_history(build, data), loss_history(build, data)
    assert first == second
    assert first[-1] < first[0]


def test_trains_on_the_tiny_preset_and_beats_popularity(tiny_data):
    torch.manual_seed(0)
    model = LGMRec(tiny_data, LGMRec.Config(embedding_dim=16))
    train = TrainConfig(epochs=3, batch_size=64, lr=0.01, device='cpu', patience=None)
    result = Trainer(model, tiny_data, train, EvalConfig(ks=[10, 20]), seed=0).fit()
    assert result.valid['recall@20'] > popularity_recall(tiny_data, k=20, split='valid')


def test_sampled_training_is_refused_with_the_reason(tiny_data):
    model = LGMRec(tiny_data, LGMRec.Config(embedding_dim=8))
    train = TrainConfig(epochs=1, batch_size=64, device='cpu', mode='sampled')
    with pytest.raises(ConfigError, match='LGMRec cannot train on sampled subgraphs') as info:
        Trainer(model, tiny_data, train, EvalConfig(ks=[20]), seed=0)
    assert 'every user and every item as negatives' in str(info.value)


def test_registry_and_published_defaults():
    assert get_model_class('lgmrec') is LGMRec
    cfg = LGMRec.Config()
    assert (cfg.n_ui_layers, cfg.n_mm_layers, cfg.n_hyper_layers, cfg.hyper_num) == (2, 2, 1, 4)
    assert (cfg.keep_rate, cfg.alpha, cfg.cl_weight, cfg.reg_weight) == (0.5, 0.3, 1e-4, 1e-6)
    assert (cfg.gumbel_tau, cfg.cl_tau, cfg.gumbel_noise_at_eval) == (0.2, 0.2, False)
    assert LGMRec.required_modalities(cfg) == ('image', 'text')


@pytest.mark.parametrize('kwargs,key', [
    (dict(keep_rate=0.0), r'model.keep_rate must be in \(0, 1\]'),
    (dict(hyper_num=0), 'model.hyper_num must be >= 1'),
    (dict(gumbel_tau=0.0), 'model.gumbel_tau must be > 0'),
    (dict(gumbel_noise_at_eval=1), 'model.gumbel_noise_at_eval must be of type bool'),
])
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LGMRec.Config(**kwargs)


def test_published_configs_baby_everywhere_but_sports():
    baby = load_config(published_config_path('lgmrec', 'baby'))
    sports = load_config(published_config_path('lgmrec', 'sports'))
    assert published_config_path('lgmrec', 'office') == CONFIGS_DIR / 'baselines' / 'lgmrec.yaml'
    assert published_config_path('lgmrec', 'sports') == CONFIGS_DIR / 'lgmrec' / 'sports.yaml'
    assert (baby.model.keep_rate, baby.model.alpha) == (0.5, 0.3)
    assert (sports.model.keep_rate, sports.model.alpha) == (0.4, 0.6)
    for config in (baby, sports):
        assert config.grid == {} and config.train.lr == 0.001 and config.train.lr_decay == 1.0
        assert config.model.gumbel_noise_at_eval is False
