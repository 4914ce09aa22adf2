"""AlignRec (SPEC §7) against an independent dense re-implementation on a tiny graph."""

import pytest
import torch
from test_anchorrec import (
    BATCH,
    NUM_USERS,
    dense_collaborative_view,
    dense_knn,
    dense_r,
    loss_history,
    tiny_data,
)

from anchorrec_pyg.errors import ConfigError, DataError
from anchorrec_pyg.models import AlignRec, RecOutput, get_model_class
from anchorrec_pyg.nn import LightGCNEncoder, ModalityConv


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    data = tiny_data(modalities=('mm', ))
    return AlignRec(data, AlignRec.Config(embedding_dim=4, **kwargs)).double(), data


def dense_reference(model, data):
    """SPEC §7's forward pass with dense matrices, from the model's parameters only."""
    cfg = model.config
    r = dense_r()
    c = dense_collaborative_view(model, cfg.n_ui_layers)
    gate = model.modality_conv.gated
    f = model.features
    if cfg.feature_layernorm:
        f = torch.nn.functional.layer_norm(f, f.shape[1:], gate.norm.weight, gate.norm.bias)
    p = f @ gate.proj.weight.t() + gate.proj.bias
    x = model.item_embedding.weight * torch.sigmoid(p @ gate.gate.weight.t() + gate.gate.bias)
    h = torch.linalg.matrix_power(dense_knn(data['item'].x_mm.double()), cfg.n_layers) @ x
    hu = r @ h
    return c[:NUM_USERS] + hu, c[NUM_USERS:] + h, c, h, hu


def reference_loss(model, data, users, pos, neg, batch_size):
    """SPEC §7's loss written out term by term."""
    cfg = model.config
    zu, zi, c, h, hu = dense_reference(model, data)
    u, p, n = zu[users], zi[pos], zi[neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / batch_size
    cos = (u * p).sum(1) / (u.norm(dim=1) * p.norm(dim=1))
    uia = 1 - cos.mean()

    def info_nce(a, b, tau=0.2):
        a = a / a.norm(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True)
        e = torch.exp(a @ b.t() / tau)
        return (-torch.log(e.diag() / e.sum(1))).mean()

    cca = (info_nce(h[pos], c[NUM_USERS:][pos]) + info_nce(hu[users], c[:NUM_USERS][users]))
    raw = data['item'].x_mm.double()[pos]
    raw = raw / raw.norm(dim=1, keepdim=True)
    hp = h[pos]
    sim = torch.sqrt(((hp @ hp.t() - raw @ raw.t())**2).sum()) / len(pos)
    return {
        'bpr': bpr,
        'reg': cfg.reg_weight * reg,
        'uia': cfg.uia_weight * uia,
        'cca': cfg.cl_weight * cca,
        'sim': cfg.sim_weight * sim,
    }


@pytest.mark.parametrize('propagation', ['pyg', 'torch_csr'])
@pytest.mark.parametrize('n_layers', [1, 2])
@pytest.mark.parametrize('layernorm', [False, True])
def test_forward_matches_dense_spec(propagation, n_layers, layernorm):
    model, data = make_model(n_layers=n_layers, propagation=propagation,
                             feature_layernorm=layernorm)
    out = model(data)
    assert isinstance(out, RecOutput)
    zu, zi, c, h, hu = dense_reference(model, data)
    torch.testing.assert_close(out.user, zu)
    torch.testing.assert_close(out.item, zi)
    torch.testing.assert_close(out.views['C'], c)
    torch.testing.assert_close(out.views['H_mm'], h)
    torch.testing.assert_close(out.views['H_mm_user'], hu)


def test_loss_matches_hand_computation_term_by_term_and_gradients():
    model, data = make_model(reg_weight=0.01, cl_weight=0.3, sim_weight=0.4)
    out = model(data)
    users, pos, neg = BATCH  # item 2 appears twice among the positives: kept as duplicates
    total, terms = model.loss(data, out, users, pos, neg, batch_size=2048)
    expected = reference_loss(model, data, users, pos, neg, 2048)
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value.detach(), msg=key)
        assert not terms[key].requires_grad
    ref_total = sum(expected.values())
    torch.testing.assert_close(total, ref_total)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    ref_grads = torch.autograd.grad(ref_total, params, allow_unused=True)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg)


@pytest.mark.parametrize('raw_from_files', [False, True])
def test_similarity_target_reads_the_trained_copy_or_with_the_switch_the_file_rows(
        raw_from_files, similarity_builds):
    """SPEC §7 (as §4): published, the sim target reads the trainable copy's current values
    (shared storage); ``raw_from_files`` reads the file's rows. Only file rows are cached."""
    built = similarity_builds
    model, data = make_model(cl_weight=0.0, uia_weight=0.0, reg_weight=0.0,
                             raw_from_files=raw_from_files)
    with torch.no_grad():
        model.features.mul_(-3.0).add_(1.0)  # the copy drifts, as training moves it
    out = model(data)
    hp = out.views['H_mm'][BATCH[1]]
    source = data['item'].x_mm.double() if raw_from_files else model.features
    raw = torch.nn.functional.normalize(source.detach()[BATCH[1]], dim=1)
    expected = model.config.sim_weight * torch.linalg.matrix_norm(
        hp @ hp.t() - raw @ raw.t()) / len(BATCH[1])
    total, terms = model.loss(data, out, *BATCH)
    torch.testing.assert_close(terms['sim'], expected.detach())
    assert len(built) == (1 if raw_from_files else 0)
    # no gradient flows into the copy through the target: only through H (P's input)
    users, pos, neg = BATCH
    u, p, n = out.user[users], out.item[pos], out.item[neg]
    bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    grad, = torch.autograd.grad(total, model.features, retain_graph=True)
    ref_grad, = torch.autograd.grad(bpr + expected, model.features)
    torch.testing.assert_close(grad, ref_grad)
    # the cache (file rows) and the per-batch rows give the same target
    uncached, _ = make_model(cl_weight=0.0, uia_weight=0.0, reg_weight=0.0,
                             raw_from_files=raw_from_files, similarity_cache_mb=0.0)
    with torch.no_grad():
        uncached.features.mul_(-3.0).add_(1.0)
    torch.testing.assert_close(uncached.loss(data, uncached(data), *BATCH)[1]['sim'],
                               terms['sim'])


def test_only_the_id_tables_are_xavier_and_p_g_keep_the_default_init(xavier_inits):
    """SPEC §7: P and G keep PyTorch's default Linear initialisation, as published."""
    model, _ = make_model()
    xavier_inits.clear()
    model.reset_parameters()
    assert {id(t) for t in xavier_inits} == {id(model.user_embedding.weight),
                                             id(model.item_embedding.weight)}
    for linear in (model.modality_conv.gated.proj, model.modality_conv.gated.gate):
        bound = 1.0 / linear.in_features**0.5
        assert linear.weight.abs().max() <= bound and linear.bias.abs().max() <= bound


def test_the_trained_copy_moves_and_the_next_target_reads_it():
    model, data = make_model(cl_weight=0.0, uia_weight=0.0, reg_weight=0.0, sim_weight=1.0)
    before = model.features.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    total, _ = model.loss(data, model(data), *BATCH)
    total.backward()
    assert model.features.grad.abs().sum() > 0  # the copy is trained (through P)
    optimizer.step()
    assert not torch.equal(model.features.detach(), before)
    out = model(data)
    hp = out.views['H_mm'][BATCH[1]]
    raw = torch.nn.functional.normalize(model.features.detach()[BATCH[1]], dim=1)
    expected = torch.linalg.matrix_norm(hp @ hp.t() - raw @ raw.t()) / len(BATCH[1])
    torch.testing.assert_close(model.loss(data, out, *BATCH)[1]['sim'], expected.detach())


def test_alignrec_is_a_composition_of_the_shared_modules():
    model, _ = make_model()
    assert isinstance(model.encoder, LightGCNEncoder)
    assert isinstance(model.modality_conv, ModalityConv)
    assert model.info_nce.tau == 0.2


def test_zero_weights_skip_terms():
    model, data = make_model(uia_weight=0.0, cl_weight=0.0, sim_weight=0.0)
    total, terms = model.loss(data, model(data), *BATCH)
    for key in ('uia', 'cca', 'sim'):
        assert terms[key].item() == 0.0
    torch.testing.assert_close(total, terms['bpr'] + terms['reg'])


def test_freeze_features():
    for freeze in (False, True):
        model, data = make_model(freeze_features=freeze)
        total, _ = model.loss(data, model(data), *BATCH)
        total.backward()
        assert (model.features.grad is None) is freeze


def test_defaults_registry_and_modalities():
    cfg = AlignRec.Config()
    assert (cfg.embedding_dim, cfg.n_ui_layers, cfg.n_layers) == (64, 2, 1)
    assert (cfg.reg_weight, cfg.uia_weight, cfg.tau) == (1e-4, 0.1, 0.2)
    assert get_model_class('AlignRec') is AlignRec
    assert AlignRec.required_modalities(cfg) == ('mm', )


def test_missing_fused_features_names_the_file():
    data = tiny_data(modalities=('text', 'image'))
    with pytest.raises(DataError) as info:
        AlignRec(data)
    assert str(info.value) == ("AlignRec needs item features 'x_mm' "
                               "(<name>_beit3/image_feat.npy); the dataset has: x_text, x_image")


def test_missing_knn_edges_is_a_data_error():
    data = tiny_data(modalities=('mm', ))
    del data['item', 'similar_mm', 'item']
    with pytest.raises(DataError, match='similar_mm'):
        AlignRec(data)


@pytest.mark.parametrize('kwargs,key', [
    (dict(tau=0.0), 'model.tau must be > 0'),
    (dict(n_layers=0), 'model.n_layers must be >= 1'),
    (dict(cl_weight=-1.0), 'model.cl_weight must be >= 0'),
    (dict(propagation='x'), 'model.propagation must be one of'),
])
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        AlignRec.Config(**kwargs)


def test_training_lowers_the_loss_deterministically():
    data = tiny_data(modalities=('mm', ))

    def build(data):
        return AlignRec(data, AlignRec.Config(embedding_dim=8, cl_weight=0.1, sim_weight=0.1))

    first, second = loss_history(build, data), loss_history(build, data)
    assert first == second
    assert first[-1] < first[0]
